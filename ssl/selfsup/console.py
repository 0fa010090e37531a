"""The ``selfsup`` command: dispatch to a subcommand, ``--help`` and ``--version``, errors as one line.

Imports only the standard library: torch and Lightning load when a subcommand that needs them runs, so
``selfsup --help`` and the help of the tools answer at once.
"""

from __future__ import annotations

import importlib
import signal
import sys
from argparse import ArgumentError
from collections.abc import Callable

# Subcommands of our own (the rest go to LightningCLI): name -> (module with main(argv) -> status, one line).
TOOLS = {
    "pretrain": ("selfsup.pretraining:main", "a folder of photos -> shards, a photo recipe, an exported backbone"),
    "knn": ("selfsup.eval_commands:knn_main", "weighted kNN top-1/top-5 of a checkpoint's backbone (val vs train)"),
    "plot": ("selfsup.eval_commands:plot_main", "t-SNE of a checkpoint's val features, as a PNG"),
    "backbones": ("selfsup.backbones_cli:main", "the backbone names: built-in ones, timm:NAME, torchvision:NAME"),
    "export": ("selfsup.eval_commands:export_main", "a checkpoint's backbone as a plain state dict + backbone.json"),
    "reconstruct": ("selfsup.eval_commands:reconstruct_main", "SimMIM, MAE: original / masked / reconstructed images"),
    "shards": ("selfsup.shards_cli:main", "shards write (a folder or built-in set -> shards), shards inspect"),
    "results": ("selfsup.results:main", "every CPU recipe and its evaluations vs random init and raw pixels"),
    "bench": ("selfsup.bench.cli:main", "speed: bench (each method's step), bench data (pipeline), bench knn (FAISS)"),
}
LIGHTNING = {
    "fit": "train a method, a probe or a fine-tune from a config (-c experiments/...yaml)",
    "validate": "evaluate a checkpoint on the val split (results go to RUN/eval/, the run is left as it was)",
    "test": "evaluate a checkpoint on the test split (results go to RUN/eval/)",
    "predict": "write a checkpoint's features of the predict split (to RUN/eval/)",
}


def usage() -> str:
    """The top-level help: every subcommand with one line."""
    rows = [("training (LightningCLI: -c CONFIG, --print_config, --help)", LIGHTNING),
            ("evaluation, data and speed", {name: line for name, (_, line) in TOOLS.items()})]
    lines = ["usage: selfsup COMMAND [options]   (selfsup COMMAND --help: the options of one command)", "",
             "Self-supervised pretraining for vision; each method's recipes are experiments/METHOD/*.yaml.", ""]
    for title, commands in rows:
        lines.append(f"{title}:")
        lines += [f"  {name:<12} {line}" for name, line in commands.items()]
        lines.append("")
    lines += ["options:", "  -h, --help   this list", "  --version    selfsup's version (and torch's, Lightning's)",
              "", "example: selfsup fit -c experiments/simclr/mnist5k.yaml"]
    return "\n".join(lines)


def installed(*packages: str) -> list[str]:
    """``"name version"`` of each of ``packages`` that is installed."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for package in packages:
        try:
            found.append(f"{package} {version(package)}")
        except PackageNotFoundError:
            pass
    return found


def version() -> str:
    from selfsup import __version__

    return f"selfsup {__version__} ({', '.join(installed('torch', 'lightning'))})"


def tool(name: str) -> Callable[[list[str]], int | None]:
    """The ``main(argv)`` of one of our subcommands, its module imported now."""
    module, function = TOOLS[name][0].split(":")
    return getattr(importlib.import_module(module), function)


def run(args: list[str]) -> int | None:
    """Run the command line ``args``; the exit status (None: 0)."""
    if not args or args[0] in ("-h", "--help"):
        print(usage())
        return None if args else 2
    if args[0] == "--version":
        print(version())
        return None
    from selfsup.recipes import with_recipes
    from selfsup.trust import enforce_import_policy

    enforce_import_policy()  # before anything parses a config: its class paths may only name allowed code
    args = with_recipes(args)
    if args[0] in TOOLS:
        return tool(args[0])(args[1:])
    if args[0] not in LIGHTNING:
        from selfsup.errors import ConfigError
        from selfsup.signatures import nearest

        raise ConfigError(f"unknown command {args[0]!r}{nearest(args[0], [*LIGHTNING, *TOOLS])}; selfsup --help "
                          "lists the commands")
    from selfsup.cli_checks import check_command_line

    check_command_line(args)  # mistakes refused before torch and Lightning load: at once
    from selfsup.cli import run_lightning

    return run_lightning(args)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``selfsup`` console script: a mistake is one line and exit code 2, a run stopped by
    SIGTERM (after saving a checkpoint) exit code 143."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        status = run(args)
    except ArgumentError as err:
        from selfsup.cli_checks import summarize_parse_error
        from selfsup.moved import renamed_option
        from selfsup.trust import import_refusal

        problem = (import_refusal(str(err)) or renamed_option(str(err))
                   or f"{summarize_parse_error(str(err))} (see selfsup fit --help)")
        print(f"selfsup: error: {problem}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        if stopped_by_sigterm(err):
            print(f"selfsup: {err or 'stopped by SIGTERM'}", file=sys.stderr)
            sys.exit(128 + signal.SIGTERM)
        from selfsup.cli_checks import user_error
        from selfsup.trust import import_refusal

        problem = user_error(err) or import_refusal(str(err))
        if problem is None:
            raise
        print(f"selfsup: error: {problem}", file=sys.stderr)
        sys.exit(2)
    if status:
        sys.exit(status)


def stopped_by_sigterm(err: Exception) -> bool:
    """A run that SIGTERM stopped (preemption, scancel) after saving where to resume from."""
    if "lightning" not in sys.modules:  # only a training run can be stopped so
        return False
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from selfsup.training.slurm import Preempted

    return isinstance(err, (Preempted, SIGTERMException))


if __name__ == "__main__":
    main()
