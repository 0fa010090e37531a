"""The ``selfsup`` command: LightningCLI (fit/validate/test/predict) over every method, probe and data module,
plus ``bench``, ``knn``, ``export``, ``plot`` and ``reconstruct``."""

from __future__ import annotations

import importlib
import logging
import os
import re
import signal
import sys
from argparse import ArgumentError
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import SIGTERMException

import selfsup.eval  # noqa: F401  (KNNMonitor, LinearProbe and friends resolve by short name in configs)
import selfsup.methods  # noqa: F401  (SimCLR, RotNet, ... resolve by short name)
from selfsup.checkpointing import AtomicCheckpointIO, RunCheckpoint, check_resumable, newest_intact
from selfsup.cli_checks import (
    check_ranges,
    check_writable,
    reject_linked_overrides,
    reject_unknown_method,
    summarize_parse_error,
    user_error,
)
from selfsup.data import SSLDataModule
from selfsup.data.health import DataHealth
from selfsup.eval import FeatureWriter
from selfsup.eval.checkpoint import load_checkpoint
from selfsup.eval.commands import COMMANDS as EVAL_COMMANDS
from selfsup.nonfinite import NonFiniteGuard
from selfsup.runlock import lock_run_folder
from selfsup.slurm import Preempted, SlurmRequeue, resume_candidates, use_run_dir
from selfsup.trust import check_local_checkpoint, enforce_import_policy, import_refusal

log = logging.getLogger(__name__)


def _tool(module: str) -> Callable[[list[str]], int | None]:
    """A subcommand whose module is imported only when it runs."""
    return lambda argv: importlib.import_module(module).main(argv)


# Subcommands of our own (the rest go to LightningCLI): name -> main(argv) -> exit status (None: 0).
TOOLS = {"bench": _tool("selfsup.bench"), "shards": _tool("selfsup.shards_cli"),
         "reconstruct": _tool("selfsup.eval.reconstruction"), **EVAL_COMMANDS}

# Values the data decides and the model needs: (data attribute, model argument, when).
LINKED_FROM_DATA = (
    ("data.num_classes", "model.init_args.num_classes", "instantiate"),
    ("data.num_channels", "model.init_args.in_channels", "instantiate"),
    ("data.init_args.batch_size", "model.init_args.batch_size", "parse"),
)


# Trainer arguments where an int counts batches and a float is a fraction. Lightning's signature lists float
# first, so jsonargparse reads `limit_val_batches: 1` as 1.0 (100%); we make int win for whole numbers.
INT_OR_FRACTION = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                   "overfit_batches", "val_check_interval")

DEFAULT_LOGGERS = [
    {"class_path": "selfsup.loggers.ResumableCSVLogger", "init_args": {"save_dir": "runs", "name": "default"}},
    {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
     "init_args": {"save_dir": "runs", "name": "default"}},
]


class SelfsupCLI(LightningCLI):
    """LightningCLI with selfsup's links, checkpointing and logging defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target, when in LINKED_FROM_DATA:
            parser.link_arguments(source, target, apply_on=when)
        for name in INT_OR_FRACTION:
            action = parser._option_string_actions.get(f"--trainer.{name}")
            if action is not None and hasattr(action, "_typehint"):
                action._typehint = int | float | None
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(FeatureWriter, "predict_writer")  # acts only in `selfsup predict`
        parser.add_lightning_class_args(DataHealth, "data_health")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(SlurmRequeue, "slurm_requeue")  # acts only under srun (SLURM)
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="One folder for everything the run writes (loggers, checkpoints, requeue "
                                 "checkpoints); fit resumes from the newest checkpoint in it. The SLURM templates "
                                 "set it to runs/slurm/JOBNAME-JOBID.")
        parser.set_defaults({
            "data": {"class_path": "selfsup.data.SSLDataModule"},
            "checkpoint.save_last": True,
            "checkpoint.filename": "{epoch}-{step}",
            "trainer.logger": DEFAULT_LOGGERS,
            "trainer.log_every_n_steps": 10,
        })

    def _parse_ckpt_path(self) -> None:
        """Refuse a remote ``ckpt_path``. Unlike LightningCLI, do not merge the checkpoint's hyper-parameters into
        the config: the command line and config decide the model (checked against the checkpoint after
        instantiation), and nothing a checkpoint names is imported."""
        config = self.config.get(self.config.get("subcommand") or "", {})
        check_local_checkpoint(config.get("ckpt_path") if config else None)

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        run_dir = config.get("run_dir")
        resume = config.get("ckpt_path") == "last" or bool(run_dir)  # a run folder is always continued in place
        if run_dir:
            use_run_dir(config, Path(run_dir))
        share_logger_version(config.trainer.logger, resume=resume)
        check_ranges(config)
        self._resume: tuple[Path, dict] | None = None
        if self.subcommand == "fit" and not config.trainer.get("fast_dev_run"):
            folders = output_folders(config)
            folder = Path(run_dir) if run_dir else (folders or [None])[0]  # the run's own folder, locked first
            if folder is not None and is_first_process():
                check_writable([folder])
                lock_run_folder(folder)
            check_writable(folders)
            self._resume = resume_checkpoint(config)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        path = config.get("ckpt_path")
        if path and Path(path).is_file():
            ckpt = self._resume[1] if self._resume and str(self._resume[0]) == path else load_checkpoint(path)
            check_resumable(ckpt, self.model, path)
        if self.subcommand == "fit" and type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # unless the config chose another


def is_first_process() -> bool:
    """Not a further rank or node of a distributed run (those share rank 0's run folder)."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def resume_checkpoint(config: Any) -> tuple[Path, dict] | None:
    """For a run continued in place (``--run_dir``, or ``--ckpt_path last``): set ``ckpt_path`` to the newest
    intact checkpoint of the run (damaged ones skipped with a warning) and return it with its contents."""
    if config.get("run_dir") and config.get("ckpt_path") in (None, "last"):
        candidates = resume_candidates(Path(config.run_dir))
    elif config.get("ckpt_path") == "last":
        candidates = list(checkpoint_folder(config).glob("*.ckpt"))
    else:
        return None
    found = newest_intact(candidates)
    config.ckpt_path = str(found[0]) if found else None
    if found:
        log.warning("resuming from %s", found[0])
    return found


def checkpoint_folder(config: Any) -> Path:
    """Where ModelCheckpoint saves: ``checkpoint.dirpath``, else ``checkpoints`` in the first logger's version
    folder, else in ``trainer.default_root_dir``."""
    if config.get("checkpoint") and config.checkpoint.get("dirpath"):
        return Path(config.checkpoint.dirpath)
    loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else []
    for logger in loggers:
        args = getattr(logger, "init_args", None)
        if args is not None and "save_dir" in args:
            return Path(args.save_dir) / (args.get("name") or "") / str(args.get("version") or "") / "checkpoints"
    return Path(config.trainer.get("default_root_dir") or ".") / "checkpoints"


def share_logger_version(loggers: object, resume: bool = False) -> None:
    """Give loggers that write under the same ``save_dir/name`` one version, so CSV and TensorBoard files of a
    run share one folder (each would otherwise take the next free ``version_N`` after the other's).

    ``resume`` (``--ckpt_path last``): the newest existing version instead of a new one, so the run continues
    in its own folder and Lightning finds its ``checkpoints/last.ckpt`` there."""
    if not isinstance(loggers, list):
        return
    chosen: dict[Path, str] = {}
    for logger in loggers:
        args = getattr(logger, "init_args", None)
        if args is None or getattr(args, "version", "unset") is not None or "save_dir" not in args:
            continue
        folder = Path(args.save_dir) / (args.get("name") or "")
        if folder not in chosen:
            found = (re.fullmatch(r"version_(\d+)", p.name) for p in folder.glob("version_*"))
            taken = [int(m.group(1)) for m in found if m]
            newest = max(taken, default=-1)
            chosen[folder] = f"version_{newest if resume and newest >= 0 else newest + 1}"
        args.version = chosen[folder]


def output_folders(config: Any) -> list[Path]:
    """Where a run will write: each logger's ``save_dir/name/version`` and the checkpoint folder if set."""
    loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else []
    folders = [Path(lg.init_args.save_dir) / (lg.init_args.get("name") or "") / str(lg.init_args.get("version") or "")
               for lg in loggers if getattr(lg, "init_args", None) is not None and "save_dir" in lg.init_args]
    if config.get("checkpoint") and config.checkpoint.get("dirpath"):
        folders.append(Path(config.checkpoint.dirpath))
    return folders


def run_lightning(args: list[str] | None) -> None:
    """Run LightningCLI on ``args`` (``fit -c CONFIG ...``; None: the command line)."""
    given = sys.argv[1:] if args is None else args
    reject_unknown_method(given)
    reject_linked_overrides(given)
    SelfsupCLI(
        L.LightningModule,  # a method (SSLMethod) or a probe (FrozenProbe)
        SSLDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": False},
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``selfsup`` console script."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        enforce_import_policy()
        if args[:1] and args[0] in TOOLS:
            status = TOOLS[args[0]](args[1:])
            if status:
                sys.exit(status)
            return None
        run_lightning(argv)
    except ArgumentError as err:
        refused = import_refusal(str(err))
        problem = refused or f"{summarize_parse_error(str(err))} (see selfsup fit --help)"
        print(f"selfsup: error: {problem}", file=sys.stderr)
        sys.exit(2)
    except (Preempted, SIGTERMException) as err:
        print(f"selfsup: {err or 'stopped by SIGTERM'}", file=sys.stderr)
        sys.exit(128 + signal.SIGTERM)
    except Exception as err:
        problem = user_error(err) or import_refusal(str(err))
        if problem is None:
            raise
        print(f"selfsup: error: {problem}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
