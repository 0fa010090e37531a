"""docs/cli.md's reference section: every subcommand and option, written from the parsers themselves."""

from __future__ import annotations

import argparse
import inspect
import re
import types
import typing

from selfsup.docgen.parsers import lightning_parsers, tool_parsers

# Classes of selfsup.methods and selfsup.eval that are no `model:` of their own (bases, callbacks).
NOT_MODELS = ("SSLMethod", "StepOutput", "FeatureWriter", "KNNMonitor", "EmbeddingPlot", "DensePlot",
              "ReconstructionGrid")
# The groups of the LightningCLI parser that selfsup adds (its callbacks), listed option by option.
SELFSUP_GROUPS = ("checkpoint", "nonfinite", "collapse", "data_health", "predict_writer", "slurm_requeue")


def one_line(text: str | None, limit: int = 220) -> str:
    """A help text as one table cell: its first paragraph, RST literals as Markdown ones, cut after a sentence
    when long."""
    paragraph = re.split(r"\n\s*\n", (text or "").strip())[0]
    line = " ".join(paragraph.split()).replace("``", "`").replace("|", "\\|")
    if len(line) > limit:
        sentence = re.match(r"(.+?[.;:])(\s|$)", line)
        short = sentence is not None and len(sentence.group(1)) <= limit
        line = sentence.group(1) if short else line[:limit].rsplit(" ", 1)[0] + " …"
    return line


def _help(action: argparse.Action, prog: str) -> str:
    if not action.help or action.help == argparse.SUPPRESS:
        return ""
    return action.help % {**vars(action), "prog": prog} if "%" in action.help else action.help


def _type_name(hint: object) -> str:
    """A type hint as a reader writes it: ``str | Path`` for ``Union[str, pathlib.Path, NoneType]``."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(hint) if a is not type(None))
    return hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")


def _value(action: argparse.Action) -> str:
    """What the option takes: its metavar, its choices, or its type."""
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        shown = action.metavar
    elif action.choices is not None and not isinstance(action.choices, dict):
        shown = "{" + ",".join(str(c) for c in action.choices) + "}"
    elif getattr(action, "_typehint", None) is not None:
        shown = _type_name(action._typehint)
    elif action.type in (int, float):
        shown = action.type.__name__
    else:
        shown = action.dest if not action.option_strings else action.dest.rsplit(".", 1)[-1].upper()
    return f"{shown} …" if action.nargs in ("+", "*") else str(shown)


def _default(action: argparse.Action, value: object, cell: str) -> str:
    """The default as the page shows it: nothing for none, for a flag, or when the help's cell already says it."""
    if action.nargs == 0 or value is None or value is False or value == argparse.SUPPRESS or "default" in cell.lower():
        return "required" if getattr(action, "required", False) and action.option_strings else ""
    if isinstance(value, (list, tuple)):
        value = " ".join(map(str, value))
    return f"`{value}`"


def option_rows(actions: list[argparse.Action], prog: str, defaults: dict | None = None) -> list[str]:
    """One table row per option (or positional argument), help and subparser actions left out. ``defaults``:
    dest -> default where the parser keeps them apart from its actions (jsonargparse)."""
    rows = []
    for action in actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        names = ", ".join(f"`{o}`" for o in action.option_strings) or f"`{action.dest}` (positional)"
        cell = one_line(_help(action, prog))
        default = defaults.get(action.dest, action.default) if defaults is not None else action.default
        rows.append(f"| {names} | {_value(action).replace('|', chr(92) + '|')} | {_default(action, default, cell)} "
                    f"| {cell} |")
    return rows


def table(rows: list[str]) -> list[str]:
    return ["| option | takes | default | what |", "|---|---|---|---|", *rows] if rows else ["(no options)"]


def tool_section(name: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"### selfsup {name}", ""]
    if parser.description:
        lines += [one_line(parser.description, limit=400), ""]
    sub = next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)
    if sub is not None:
        lines += [f"Subcommands: {', '.join(f'`{name} {c}`' for c in sub.choices)} (below).", ""]
    return lines + table(option_rows(parser._actions, parser.prog)) + [""]


def _group(parser: argparse.ArgumentParser, dest: str | None = None, title: str | None = None):
    return next(g for g in parser._action_groups
                if (dest is not None and getattr(g, "dest", None) == dest) or (title is not None and g.title == title))


def _options_of(actions: list[argparse.Action], prefix: str) -> list[argparse.Action]:
    """The options under ``prefix``, jsonargparse's ``.help`` entries left out."""
    names = [(a, a.option_strings[0] if a.option_strings else "") for a in actions]
    return [a for a, name in names if name.startswith(prefix) and not name.endswith(".help")]


def classes_line(module_name: str, exclude: tuple[str, ...] = ()) -> str:
    import importlib

    module = importlib.import_module(module_name)
    names = [n for n in module.__all__ if inspect.isclass(getattr(module, n)) and n not in exclude]
    return ", ".join(f"`{n}`" for n in names)


def _defaults(parser) -> dict:
    """A jsonargparse parser's defaults, its own and those set later (``set_defaults``), by dotted key."""
    found = parser.get_defaults()
    return {key: found.get(key) for key in found.keys()}


def lightning_section() -> list[str]:
    """fit / validate / test / predict: their own options and selfsup's groups in full; the trainer, model and
    data only by name (their keys are many and depend on the class: ``--print_config``, ``--model.help``)."""
    from selfsup.data import SSLDataModule
    from selfsup.methods import SSLMethod

    parsers = lightning_parsers()
    fit = parsers["fit"]
    defaults = _defaults(fit)
    trainer = [a.option_strings[0].removeprefix("--trainer.") for a in _options_of(fit._actions, "--trainer.")]
    lines = ["### selfsup fit, validate, test, predict", "",
             "LightningCLI subcommands, each with the same configuration: `-c CONFIG` (several are merged in order), "
             "dotted overrides, `--print_config` (the whole resolved configuration, every key below with its value) "
             "and `--help` (every key, several hundred lines). A class's own arguments: `selfsup fit --model.help "
             "SimCLR`, `--data.help SSLDataModule`.", "",
             "Options of every one of them:", "",
             *table(option_rows(_group(fit, title="options")._group_actions, "selfsup fit", defaults)), ""]
    for name, parser in parsers.items():
        own = parser._action_groups[-1]._group_actions
        lines += [f"Options of `{name}` alone:", "", *table(option_rows(own, f"selfsup {name}", _defaults(parser))), ""]
    lines += [
        "The configuration's sections:", "",
        f"- `model`: a method ({classes_line('selfsup.methods', NOT_MODELS)}) or an evaluation module "
        f"({classes_line('selfsup.eval', NOT_MODELS)}), by `class_path` or short name. Every method takes the "
        "arguments of `SSLMethod`: " + ", ".join(f"`{p}`" for p in inspect.signature(SSLMethod).parameters) + ".",
        "- `data`: `SSLDataModule`: " + ", ".join(f"`{p}`" for p in inspect.signature(SSLDataModule).parameters)
        + " (`selfsup fit --data.help SSLDataModule`).",
        "- `trainer`: Lightning's Trainer: " + ", ".join(f"`{k}`" for k in trainer) + ".",
        "- `seed_everything`, `name`, `run_dir`, `threads`, and selfsup's callbacks below.", ""]
    for dest in SELFSUP_GROUPS:
        group = _group(fit, dest=dest)
        doc = (inspect.getdoc(group.group_class) or "").split("\nArgs:")[0]  # its options' help is in the table
        doc = re.split(r"\n\s*\n", doc)  # the prose explains the options that have no Args entry
        lines += [f"`--{dest}.*`: `{group.group_class.__name__}`. " + " ".join(one_line(p, 2000) for p in doc), "",
                  *table(option_rows(_options_of(group._group_actions, f"--{dest}."), "selfsup fit", defaults)), ""]
    return lines


def reference() -> str:
    """The generated section of docs/cli.md."""
    from selfsup.console import LIGHTNING, TOOLS

    lines = ["## Every subcommand and option", "",
             "| command | what |", "|---|---|",
             *(f"| `selfsup {name}` | {line} |" for name, line in LIGHTNING.items()),
             *(f"| `selfsup {name}` | {line} |" for name, (_, line) in TOOLS.items()), "",
             "`selfsup --help` lists them, `selfsup COMMAND --help` gives one command's options as below, and "
             "`selfsup --version` prints the versions of selfsup, torch and Lightning.", "",
             *lightning_section()]
    for name, parser in tool_parsers().items():
        lines += tool_section(name, parser)
    return "\n".join(lines).rstrip() + "\n"
