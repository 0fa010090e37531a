"""``selfsup fit/validate/test/predict``: LightningCLI over every method, probe and data module (the ``selfsup``
command itself, with the other subcommands, is ``selfsup.console``)."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

import selfsup.eval  # noqa: F401  (KNNMonitor, LinearProbe and friends resolve by short name in configs)
import selfsup.methods  # noqa: F401  (SimCLR, RotNet, ... resolve by short name)
from selfsup.cli_checks import check_accelerator, check_ranges, check_writable
from selfsup.data import SSLDataModule
from selfsup.data.health import DataHealth
from selfsup.eval import FeatureWriter
from selfsup.eval.checkpoint import load_checkpoint
from selfsup.eval.transform import RecordEvalTransform
from selfsup.fresh_folders import FreshFolders
from selfsup.gate import existing_checkpoint
from selfsup.quiet import quiet_libraries, selfsup_warnings_as_lines
from selfsup.training.checkpointing import AtomicCheckpointIO, RunCheckpoint, check_resumable, newest_intact
from selfsup.training.collapse import CollapseMonitor
from selfsup.training.nonfinite import NonFiniteGuard
from selfsup.training.precision import accept_auto, resolve_precision
from selfsup.training.progress import ProgressLines, results_line, say
from selfsup.training.resume import resolve_last
from selfsup.training.runlock import lock_run_folder
from selfsup.training.runs import eval_folder, run_folder_of
from selfsup.training.slurm import SlurmRequeue, resume_candidates, use_run_dir

log = logging.getLogger(__name__)

# Values the data decides and the model needs: (data attribute, model argument, when).
LINKED_FROM_DATA = (
    ("data.num_classes", "model.init_args.num_classes", "instantiate"),
    ("data.num_channels", "model.init_args.in_channels", "instantiate"),
    ("data.view_size", "model.init_args.image_size", "instantiate"),
    ("data.init_args.batch_size", "model.init_args.batch_size", "parse"),
)


# Trainer arguments where an int counts batches and a float is a fraction. Lightning's signature lists float
# first, so jsonargparse reads `limit_val_batches: 1` as 1.0 (100%); we make int win for whole numbers.
INT_OR_FRACTION = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                   "overfit_batches", "val_check_interval")

# A config without loggers logs here, its run named METHOD-DATA (see run_name).
DEFAULT_NAME = "default"
DEFAULT_LOGGERS = [
    {"class_path": "selfsup.training.loggers.ResumableCSVLogger",
     "init_args": {"save_dir": "runs", "name": DEFAULT_NAME}},
    {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
     "init_args": {"save_dir": "runs", "name": DEFAULT_NAME}},
]

# Evaluation subcommands: they write into RUN/eval/STAGE-TIME/, never into the run itself.
EVAL_STAGES = ("validate", "test", "predict")

# Options of one subcommand only; left out of a saved config.yaml so that it works with every subcommand.
SUBCOMMAND_ONLY = ("ckpt_path", "verbose", "return_predictions")


class PortableConfig(SaveConfigCallback):
    """Saves the run's config.yaml without the options of one subcommand (``verbose``, ``return_predictions``,
    ``ckpt_path``), so ``fit``, ``validate``, ``test`` and ``predict`` all take it, and without the loggers'
    ``version_N``, so ``fit -c RUN/config.yaml`` starts a new version (``--ckpt_path last`` continues this one)."""

    def __init__(self, parser: LightningArgumentParser, config: Any, *args: Any, **kwargs: Any) -> None:
        config = config.clone()
        for key in SUBCOMMAND_ONLY:
            if key in config:
                del config[key]
        for logger in config.trainer.logger if isinstance(config.trainer.logger, list) else []:
            if getattr(logger, "init_args", None) is not None and "version" in logger.init_args:
                logger.init_args.version = None
        super().__init__(parser, config, *args, **kwargs)


class SelfsupCLI(LightningCLI):
    """LightningCLI with selfsup's links, checkpointing and logging defaults. ``fresh``: where it notes the run
    folders it makes (that `run_lightning` removes again if the start fails)."""

    def __init__(self, *args: Any, fresh: FreshFolders | None = None, **kwargs: Any) -> None:
        self.fresh = fresh or FreshFolders()
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target, when in LINKED_FROM_DATA:
            parser.link_arguments(source, target, apply_on=when)
        for name in INT_OR_FRACTION:
            action = parser._option_string_actions.get(f"--trainer.{name}")
            if action is not None and hasattr(action, "_typehint"):
                action._typehint = int | float | None
        accept_auto(parser)  # trainer.precision: auto
        parser.add_lightning_class_args(RunCheckpoint, "checkpoint")
        parser.add_lightning_class_args(FeatureWriter, "predict_writer")  # acts only in `selfsup predict`
        parser.add_lightning_class_args(DataHealth, "data_health")
        parser.add_lightning_class_args(NonFiniteGuard, "nonfinite")
        parser.add_lightning_class_args(CollapseMonitor, "collapse")  # logs health/*, warns once on collapse
        parser.add_lightning_class_args(SlurmRequeue, "slurm_requeue")  # acts only under srun (SLURM)
        parser.add_argument("--name", type=str | None, default=None,
                            help="Name of the run (folder runs/NAME/version_N of every logger and the checkpoints; "
                                 "default: the config's, or METHOD-DATA)")
        parser.add_argument("--run_dir", type=str | None, default=None,
                            help="One folder for everything the run writes (loggers, checkpoints, requeue "
                                 "checkpoints); fit resumes from the newest checkpoint in it. The SLURM templates "
                                 "set it to runs/slurm/JOBNAME-JOBID.")
        parser.add_argument("--threads", type=int | None, default=None,
                            help="torch threads of the training process (default: torch's, one per core). On a "
                                 "CPU, give it the cores the loader workers leave free: they compete for the same "
                                 "cores (docs/cli.md)")
        parser.set_defaults({
            "data": {"class_path": "selfsup.data.SSLDataModule"},
            "checkpoint.save_last": True,
            "checkpoint.filename": "{epoch}-{step}",
            "trainer.logger": DEFAULT_LOGGERS,
            "trainer.log_every_n_steps": 10,
        })

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand == "fit":  # validate, test and predict have Lightning's own --verbose (their results table)
            parser.add_argument("--verbose", action="store_true",
                                help="also show Lightning's info lines and tips, the libraries' warnings and the model "
                                     "summary table (by default the console shows selfsup's own lines only)")
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args``: the command line after selfsup rewrote it (recipe names to configs), so without
        Lightning's warning that ``args`` and ``sys.argv`` were both given, which every run printed first. Then
        quiet the libraries unless ``fit --verbose``."""
        self.config = parser.parse_args(args)
        selfsup_warnings_as_lines()
        if not (self.config.get("subcommand") == "fit" and self.config.fit.get("verbose")):
            quiet_libraries()

    def _parse_ckpt_path(self) -> None:
        """Refuse a ``ckpt_path`` or ``model.init_from`` that is not a local regular file (or ``last``) before anything
        is fetched or built, and read checkpoints only weights-only. Unlike LightningCLI, do not merge the
        checkpoint's hyper-parameters into the config: the command line and config decide the model (checked against
        the checkpoint after instantiation), and nothing a checkpoint names is imported."""
        config = self.config.get(self.config.get("subcommand") or "", {})
        if not config:
            return
        init_from = config.get("model.init_args.init_from") if "model.init_args" in config else None
        for path in (config.get("ckpt_path"), init_from):
            if path is not None and path != "last":
                existing_checkpoint(path)
        if "weights_only" in config:
            config.weights_only = True

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        check_accelerator(config.trainer.get("accelerator"))
        config.trainer.precision = resolve_precision(config.trainer.get("precision"), config.trainer.get("accelerator"))
        name_run(config)
        run_dir = config.get("run_dir")
        last = None  # the checkpoint `--ckpt_path last` found (refused when there is none)
        if config.get("ckpt_path") == "last":
            last = resolve_last([Path(run_dir)] if run_dir else resume_folders(config))
            config.ckpt_path = str(last)
        continued = run_folder_of(last) if last is not None else None  # the run folder fit then continues in
        if run_dir:
            use_run_dir(config, Path(run_dir))
        version = continued.name if continued is not None and self.subcommand == "fit" else None
        share_logger_version(config.trainer.logger, resume=bool(run_dir), version=version)
        check_ranges(config)
        if config.get("threads"):
            torch.set_num_threads(config.threads)
        evaluation = write_beside_the_run(config, self.subcommand) if self.subcommand in EVAL_STAGES else None
        if evaluation is not None:
            check_writable([evaluation.parent], fix="an evaluation writes into the checkpoint's run folder: copy the "
                           "run (or its checkpoints/ folder) somewhere writable")
        if not sys.stdout.isatty():  # a log file (CI, SLURM): plain lines only, no progress-bar fragments
            config.trainer.enable_progress_bar = False
        if config.trainer.get("enable_model_summary") is None:  # the summary line gives the parameter count
            config.trainer.enable_model_summary = bool(config.get("verbose")) and self.subcommand == "fit"
        self._resume: tuple[Path, dict] | None = None
        if self.subcommand == "fit" and not config.trainer.get("fast_dev_run"):
            folders = output_folders(config)
            for folder in [Path(run_dir), *folders] if run_dir else folders:  # each locked before it is written
                missing = self.fresh.missing(folder)
                check_writable([folder])
                if is_first_process():
                    lock_run_folder(folder)
                    self.fresh.own(missing)
            self._resume = resume_checkpoint(config, last)

    def after_instantiate_classes(self) -> None:
        super().after_instantiate_classes()
        self.fresh.trainer = self.trainer
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        path = config.get("ckpt_path")
        if path:  # through the gate again: `last` and --run_dir resolved to a file only now
            ckpt = self._resume[1] if self._resume and str(self._resume[0]) == path else load_checkpoint(path)
            check_resumable(ckpt, self.model, path)
        if type(self.trainer.strategy.checkpoint_io) is TorchCheckpointIO:
            self.trainer.strategy.checkpoint_io = AtomicCheckpointIO()  # unless the config chose another

    def _instantiate_trainer(self, config: dict[str, Any], callbacks: list[Callback]) -> L.Trainer:
        return super()._instantiate_trainer(config, [*callbacks, ProgressLines(), RecordEvalTransform()])

    def after_fit(self) -> None:
        """Evaluate a probe or fine-tune on val if its last epoch did not, then print the results and where the
        run is (a shortened run never ends without its result)."""
        trainer, module = self.trainer, self.model
        if trainer.interrupted:
            return
        lines = next((c for c in trainer.callbacks if isinstance(c, ProgressLines)), None)
        validated = lines is None or lines.validated_at == trainer.global_step
        if getattr(module, "evaluate_at_end", False) and not validated:
            trainer.validate(module, datamodule=self.datamodule, verbose=False)
        line = results_line(module, trainer.callback_metrics)
        if line:
            say(trainer, line)
        last = trainer.checkpoint_callback.last_model_path if trainer.checkpoint_callback else ""
        say(trainer, f"done: run folder {trainer.log_dir}" + (f", checkpoint {last}" if last else ""))

    def _evaluated(self) -> None:
        say(self.trainer, f"{self.subcommand} results written to {self.trainer.log_dir}")

    after_validate = after_test = after_predict = _evaluated


def is_first_process() -> bool:
    """Not a further rank or node of a distributed run (those share rank 0's run folder)."""
    return all(os.environ.get(key, "0") == "0" for key in ("RANK", "LOCAL_RANK", "SLURM_PROCID", "NODE_RANK"))


def resume_checkpoint(config: Any, last: Path | None) -> tuple[Path, dict] | None:
    """For a run continued in place (``--run_dir``, or ``--ckpt_path last``, which found ``last``): set
    ``ckpt_path`` to the newest intact checkpoint of the run (damaged ones skipped with a warning) and return it
    with its contents."""
    run_dir = config.get("run_dir")
    if run_dir and (last is not None or config.get("ckpt_path") is None):
        candidates = resume_candidates(Path(run_dir))
    elif last is not None:
        run = run_folder_of(last)
        candidates = resume_candidates(run) if run is not None else [last]
    else:
        return None
    found = newest_intact(candidates)
    config.ckpt_path = str(found[0]) if found else None
    if found:
        log.warning("resuming from %s", found[0])
    return found


def data_name(source: str) -> str:
    """A short name of a data source: ``builtin:mnist5k`` -> mnist5k, ``shards:/data/photos`` -> photos."""
    rest = source.partition(":")[2].rstrip("/")
    path = Path(rest)
    return (path.parent.name if path.suffix == ".tar" else path.name) or "data"


def name_run(config: Any) -> None:
    """``--name`` for every logger (and so for the checkpoints, which go into the first logger's folder); without
    it a logger left at the default name is named METHOD-DATA (e.g. simclr-photos)."""
    loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else []
    for logger in loggers:
        args = getattr(logger, "init_args", None)
        if args is None or "name" not in args:
            continue
        if config.get("name"):
            args.name = config.name
        elif args.name == DEFAULT_NAME:
            method = str(config.model.get("class_path", "run")).rsplit(".", 1)[-1].lower()
            source = config.data.get("init_args", {}).get("source") or "data"
            args.name = f"{method}-{data_name(str(source))}"


def logger_folders(config: Any) -> list[Path]:
    """Each logger's ``save_dir/name``: the folder of its ``version_N`` runs."""
    loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else []
    return [Path(lg.init_args.save_dir) / (lg.init_args.get("name") or "") for lg in loggers
            if getattr(lg, "init_args", None) is not None and "save_dir" in lg.init_args]


def resume_folders(config: Any) -> list[Path]:
    """Where ``--ckpt_path last`` looks: the loggers' run folders and a set checkpoint folder, else the trainer's
    ``default_root_dir`` (where Lightning checkpoints without a logger)."""
    folders = logger_folders(config)
    if config.get("checkpoint") and config.checkpoint.get("dirpath"):
        folders.append(Path(config.checkpoint.dirpath))
    return folders or [Path(config.trainer.get("default_root_dir") or ".")]


def write_beside_the_run(config: Any, stage: str) -> Path | None:
    """Point every logger (and so the saved config.yaml and predict's features) at ``RUN/eval/STAGE-TIME/`` of
    the checkpoint's run, so an evaluation never rewrites the run's config.yaml, metrics.csv or TensorBoard
    files; that folder (None: the checkpoint is in no run)."""
    folder = eval_folder(config.ckpt_path, stage) if config.get("ckpt_path") else None
    for logger in config.trainer.logger if folder and isinstance(config.trainer.logger, list) else []:
        args = getattr(logger, "init_args", None)
        if args is not None and "save_dir" in args:
            args.save_dir, args.name, args.version = str(folder.parent), "", folder.name
    return folder


def share_logger_version(loggers: object, resume: bool = False, version: str | None = None) -> None:
    """Give loggers that write under the same ``save_dir/name`` one version, so CSV and TensorBoard files of a
    run share one folder (each would otherwise take the next free ``version_N`` after the other's).

    ``resume`` (``--ckpt_path last``): the newest existing version instead of a new one, so the run continues
    in its own folder and Lightning finds its ``checkpoints/last.ckpt`` there. ``version``: that folder (the one
    of the checkpoint a run resumes from)."""
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
            chosen[folder] = version or f"version_{newest if resume and newest >= 0 else newest + 1}"
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
    """Run LightningCLI on ``args`` (``fit -c CONFIG ...``; None: the command line), which ``selfsup.console``
    checked first; a start that fails before its first step removes the run folders it made."""
    fresh = FreshFolders()
    try:
        SelfsupCLI(
            L.LightningModule,  # a method (SSLMethod) or a probe (FrozenProbe)
            SSLDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=PortableConfig,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            args=args,
            auto_configure_optimizers=False,
            parser_kwargs={"exit_on_error": False, "allow_abbrev": False},  # no silent --trainer.max_epoch
            fresh=fresh,
        )
    except BaseException:
        fresh.remove_if_unused()
        raise
    leave_process_group()


def leave_process_group() -> None:
    """After a distributed run, every rank waits for the others and then destroys the process group, so the node
    that hosts the rendezvous store does not exit while another still talks to it (under load that crashed the
    other node, or this one with "terminate called without an active exception")."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    """The ``selfsup`` command (``python -m selfsup.cli`` as before): see ``selfsup.console``."""
    from selfsup.console import main as console_main

    console_main(argv)


if __name__ == "__main__":
    main()
