"""Checks of the command line that LightningCLI does not make, and turning its errors into one line."""

from __future__ import annotations

import math
import os
import pickle
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError
from selfsup.moved import renamed
from selfsup.signatures import nearest, parameters, subclasses

# Model arguments the CLI links from the data, and where their value comes from.
LINK_ORIGIN = {"num_classes": "the data's classes", "in_channels": "the data's image channels",
               "batch_size": "data.batch_size", "image_size": "the side of the data's training views"}


def check_command_line(args: list[str]) -> None:
    """What can be checked of a LightningCLI command line without importing torch: the config files exist, no
    linked value is set by hand, the method and the options of the model, data, views and trainer exist."""
    check_config_files(args)
    reject_linked_overrides(args)
    reject_unknown_method(args)
    check_option_names(args)


def check_config_files(args: list[str]) -> None:
    """Each ``-c``/``--config`` naming a YAML file names one that exists (said before Lightning loads)."""
    for flag, value in zip(args, [*args[1:], ""]):
        flag, joined, after = flag.partition("=")
        if flag in ("-c", "--config"):
            value = after if joined else value
            if value.endswith((".yaml", ".yml")) and not Path(value).is_file():
                raise ConfigError(f"config {value} does not exist{nearest_recipe(value)}; give a YAML file (the "
                                  "recipes that ship with selfsup are found from any folder, e.g. "
                                  "experiments/simclr/mnist5k.yaml)")


def nearest_recipe(path: str) -> str:
    """`` (did you mean experiments/...?)`` naming the shipped recipes nearest to ``path``, or ''."""
    from selfsup.recipes import PACKAGED

    recipes = [f"experiments/{p.relative_to(PACKAGED).as_posix()}" for p in PACKAGED.rglob("*.yaml")]
    tail = "experiments/" + path.partition("experiments/")[2] if "experiments/" in path else path
    return nearest(tail, recipes)


def reject_linked_overrides(args: list[str]) -> None:
    """Refuse a hand-set value for a linked model argument: LightningCLI would drop it silently."""
    for i, token in enumerate(args):
        key = token.split("=", 1)[0]
        for name, origin in LINK_ORIGIN.items():
            if key in (f"--model.{name}", f"--model.init_args.{name}"):
                raise ConfigError(f"model.{name} is set from {origin}; remove {key} (change the data instead)")
        if token in ("-c", "--config") and i + 1 < len(args) and Path(args[i + 1]).is_file():
            model = (read_yaml(Path(args[i + 1])) or {}).get("model")
            given = {**model, **(model.get("init_args") or {})} if isinstance(model, dict) else {}
            for name, origin in LINK_ORIGIN.items():
                if name in given:
                    raise ConfigError(
                        f"{args[i + 1]}: model.{name} is set from {origin}; remove it from the config"
                    )


def read_yaml(path: Path) -> object:
    """The YAML file at ``path``; a syntax error is a ConfigError naming its line."""
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path} is not valid YAML{where} ({problem}); fix the syntax there") from None


# Config values that must lie in a range: (key, test, what the value must be).
RANGES = (
    ("model.init_args.lr", lambda v: v > 0, "a positive number"),
    ("model.init_args.weight_decay", lambda v: v >= 0, "zero or more"),
    ("data.init_args.batch_size", lambda v: v >= 1, "at least 1"),
    ("data.init_args.num_workers", lambda v: v >= 0, "zero or more (0 loads in the main process)"),
    ("threads", lambda v: v >= 1, "at least 1"),
)


def check_ranges(config: Any) -> None:
    """Refuse a config value outside its range (a negative lr, batch size or worker count), a backbone or image
    size over its cap, or more threads than the machine has cores, naming it."""
    for key, ok, what in RANGES:
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and not (math.isfinite(value) and ok(value)):
            raise ConfigError(f"{key.replace('.init_args', '')} must be {what}, got {value}; fix it in the config or "
                              "on the command line")
    from selfsup.data.limits import check_sizes

    args = config.get("model.init_args.backbone_args")
    check_sizes(dict(args) if args else {}, "model.backbone_args")
    check_sizes({"image_size": config.get("data.init_args.image_size")}, "data.image_size")
    threads, cores = config.get("threads"), os.cpu_count() or 1
    if isinstance(threads, int) and threads > 4 * cores:
        raise ConfigError(f"--threads {threads} is more than 4x this machine's {cores} cores; give at most the "
                          "cores the loader workers leave free")


ABSTRACT_MODELS = ("SSLMethod", "FrozenProbe")  # bases of the models, not models


def method_names() -> list[str]:
    """Short names of every model `selfsup fit` takes: the methods (subclasses of SSLMethod), the probes and
    FineTune (read from the source: nothing is imported)."""
    return [name for name in subclasses("SSLMethod", "FrozenProbe", "FineTune") if name not in ABSTRACT_MODELS]


def reject_unknown_method(args: list[str]) -> None:
    """``--model NAME`` must name a method (or a dotted class path or a config file)."""
    for flag, value in zip(args, args[1:]):
        if flag == "--model" and "." not in value and not Path(value).exists() and value not in method_names():
            raise ConfigError(f"unknown method {value!r}{nearest(value, method_names())}; choose one of: "
                              f"{', '.join(method_names())}")


# The groups of options whose class selfsup can read without importing it, and the class each has by default.
CLASS_GROUPS = {("model",): None, ("data",): "SSLDataModule", ("data", "views"): None, ("trainer",): "Trainer"}


def _key_path(key: str) -> tuple[str, ...]:
    """``--data.init_args.views.init_args.size`` -> (data, views, size)."""
    return tuple(part for part in key.lstrip("-").rstrip("+").split(".") if part != "init_args")


def _class_name(value: object) -> str | None:
    """The selfsup class a ``class_path`` value names (None: another's, or not a class name)."""
    text = str(value)
    if not re.fullmatch(r"[\w.]+", text) or (text.count(".") and not text.startswith(("selfsup.", "lightning."))):
        return None
    return text.rsplit(".", 1)[-1]


def _classes_from_yaml(config: object) -> dict[tuple[str, ...], str | None]:
    """The class of each group a config file sets."""
    found: dict[tuple[str, ...], str | None] = {}
    for group in CLASS_GROUPS:
        node = config
        for i, part in enumerate(group):
            node = node.get(part) if isinstance(node, dict) else None
            if i < len(group) - 1 and isinstance(node, dict) and isinstance(node.get("init_args"), dict):
                node = {**node, **node["init_args"]}
        if isinstance(node, dict) and "class_path" in node:
            found[group] = _class_name(node["class_path"])
    return found


def check_option_names(args: list[str]) -> None:
    """Refuse an option of the model, the data, its views or the trainer that their class does not take, naming
    the nearest, before Lightning loads (it would say the same only after the imports). Options of a class the
    source does not settle are left to LightningCLI."""
    classes = dict(CLASS_GROUPS)
    options: list[tuple[str, tuple[str, ...]]] = []
    for token, value in zip(args, [*args[1:], ""]):
        flag, joined, after = token.partition("=")
        value = after if joined else value
        if flag in ("-c", "--config") and Path(value).is_file():
            classes.update(_classes_from_yaml(read_yaml(Path(value))))
        elif flag.startswith("--"):
            path = _key_path(flag)
            if path in CLASS_GROUPS or path[-1:] == ("class_path",):
                classes[path if path in CLASS_GROUPS else path[:-1]] = _class_name(value)
            else:
                options.append((flag, path))
    for flag, path in options:
        group, name = path[:-1], path[-1]
        known = parameters(classes[group]) if classes.get(group) else None
        if known is not None and name not in known and name != "help":  # --model.help SimCLR: jsonargparse's
            if renamed(name):
                raise ConfigError(renamed(name))
            raise ConfigError(f"{flag}: {classes[group]} has no option {name!r}{nearest(name, known)}; "
                              f"selfsup fit -c CONFIG --print_config lists every option")


# Lines of jsonargparse's union-type reports that say nothing to a user.
_NOISE = re.compile(r"Expected a <class 'NoneType'>|^Subtypes:|^Given value|^Errors:$|Does not validate against any")


def summarize_parse_error(message: str) -> str:
    """jsonargparse's multi-line report reduced to the lines that name the problem."""
    lines = [line.strip(" -") for line in message.splitlines()]
    summary = " ".join(line for line in lines if line and not _NOISE.search(line))
    refused = _REFUSED_OPTION.search(summary)
    known = parameters(_class_name(refused.group(1)) or "") if refused else None
    return summary + nearest(refused.group(2), known) if known else summary


# jsonargparse's report of an option a class does not take (in a config file): the class and the option.
_REFUSED_OPTION = re.compile(r"class_path '([\w.]+)': Option '(\w+)' is not accepted(?!.*class_path)")


def user_error(err: BaseException) -> ConfigError | None:
    """The ConfigError behind ``err`` (jsonargparse wraps errors raised while instantiating classes); a
    checkpoint that torch refused to unpickle becomes one too. Imports nothing for a ConfigError (a refusal made
    before torch and Lightning loaded stays quick)."""
    lightning_errors = sys.modules.get("lightning.fabric.utilities.exceptions")  # none raised if not loaded
    misconfiguration = lightning_errors.MisconfigurationException if lightning_errors else ()
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return _unwrapped_from_worker(err)
        if isinstance(err, pickle.UnpicklingError):
            from selfsup.eval.checkpoint import code_refusal

            return code_refusal(err)
        if isinstance(err, misconfiguration):  # Lightning's own one-line check of a trainer argument
            return ConfigError(f"{str(err).strip().splitlines()[0]} (fix it in the config or on the command line)")
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _unwrapped_from_worker(err: ConfigError) -> ConfigError:
    """A ConfigError raised in a DataLoader worker comes back re-raised with the worker's traceback in its message
    ("Caught ConfigError in DataLoader worker process 0. Original Traceback ..."); keep only the original message."""
    text = str(err)
    if "Original Traceback" not in text:
        return err
    raises = list(re.finditer(r"^selfsup\.errors\.\w+: ", text, re.MULTILINE))
    return type(err)(text[raises[-1].end():].strip()) if raises else err


RUN_OUTPUTS_FIX = ("choose a writable folder with --trainer.logger.init_args.save_dir (or the loggers' save_dir in "
                   "the config) and --checkpoint.dirpath")


def check_writable(folders: list[Path], fix: str = RUN_OUTPUTS_FIX) -> None:
    """Each output folder exists or can be made, and takes a file; a ConfigError names the first that does not,
    and ``fix``."""
    for folder in folders:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as err:
            raise ConfigError(f"cannot write run outputs to {folder} ({err.strerror or err}); {fix}") from None


def check_accelerator(accelerator: object) -> None:
    """``trainer.accelerator`` gpu/cuda needs a CUDA device (Lightning's own refusal is a traceback)."""
    import torch

    if str(accelerator).lower() in ("gpu", "cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"trainer.accelerator is {accelerator}, but no CUDA GPU is visible here (torch {torch.__version__}, "
            f"built for CUDA {torch.version.cuda or 'none'}); use --trainer.accelerator auto (or cpu), or run on a "
            "node with a GPU"
        )
