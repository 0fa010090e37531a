"""SLURM: requeue on the warning signal at a step boundary, and resume a job in its own run folder."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback

log = logging.getLogger(__name__)


class SlurmRequeue(Callback):
    """Lightning's SLURM auto-requeue, with the checkpoint taken at a step boundary.

    Under ``srun`` Lightning's ``SLURMEnvironment(auto_requeue=True)`` saves ``hpc_ckpt_N.ckpt`` and runs
    ``scontrol requeue`` from inside the SIGUSR1 handler. With DDP that handler runs wherever each rank happens to
    be (one rank in forward, another blocked in a gradient all-reduce), and its save starts a barrier the other
    rank's pending all-reduce can be matched against: a hang, or a checkpoint of half a step. Here the handler only
    notes the signal (installed before Lightning's, which then leaves SIGUSR1 alone); after the current optimizer
    step all ranks agree that a signal came, every rank saves the same ``hpc_ckpt_N.ckpt`` in
    ``trainer.default_root_dir`` (Lightning's name, so Lightning's own hpc resume finds it too), and rank 0
    requeues the job. SLURM then stops the tasks (SIGTERM) and the job starts again with the same id.

    Inactive outside SLURM, outside ``fit``, and when the trainer's SLURM environment has ``auto_requeue=False``.
    Costs one tiny all-reduce per training step while active."""

    def __init__(self) -> None:
        self._signum: int | None = None
        self._previous: Any = None
        self._requested = False
        self.requeued = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        self._signum = int(environment.requeue_signal or signal.SIGUSR1)
        self._previous = signal.signal(self._signum, self._note)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._signum is not None:
            signal.signal(self._signum, self._previous if self._previous is not None else signal.SIG_DFL)
            self._signum = None

    def _note(self, signum: int, frame: Any) -> None:
        self._requested = True

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if self._signum is None or self.requeued:
            return
        if not trainer.strategy.reduce_boolean_decision(self._requested, all=False):
            return
        self.requeued = True
        for logger in trainer.loggers:
            logger.save()
        path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
        trainer.save_checkpoint(path)  # every rank takes part; rank 0 writes
        if trainer.is_global_zero:
            log.warning("requeue signal: saved %s at step %d; requeuing", path, trainer.global_step)
            requeue()


def job_id() -> str:
    """This job's id as ``scontrol requeue`` wants it (``ARRAYJOB_TASK`` for an array task)."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]
    if not re.fullmatch(r"[0-9_]+", job):
        raise ValueError(f"unexpected SLURM job id {job!r}")
    return job


def requeue() -> bool:
    """``scontrol requeue`` this job; False (and a warning) when SLURM refuses."""
    job = job_id()
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        log.warning("scontrol requeue %s failed (%d): %s", job, result.returncode, result.stderr.strip())
        return False
    return True


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The newest (by modification time) of the requeue checkpoints ``hpc_ckpt_N.ckpt`` in ``run_dir`` and the
    ``last.ckpt`` files under it: a job stopped by the requeue signal continues from its requeue checkpoint, one
    killed without a signal (node failure, out of memory, SIGKILL) from its last periodic checkpoint."""
    found = [*run_dir.glob("hpc_ckpt_*.ckpt"), *run_dir.glob("**/checkpoints/last.ckpt")]
    return max(found, key=lambda p: p.stat().st_mtime, default=None)


def use_run_dir(config: Any, run_dir: Path, subcommand: str | None) -> None:
    """Point everything a run writes into ``run_dir`` (each logger's ``save_dir``, ``trainer.default_root_dir``,
    where Lightning saves requeue checkpoints) and, for ``fit`` without an explicit ``--ckpt_path``, resume from
    the newest checkpoint there, so a (re)started job continues in place."""
    config.trainer.default_root_dir = str(run_dir)
    loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else []
    for logger in loggers:
        args = getattr(logger, "init_args", None)
        if args is not None and "save_dir" in args:
            args.save_dir = str(run_dir)
    if subcommand == "fit" and config.get("ckpt_path") in (None, "last"):
        newest = newest_checkpoint(run_dir)
        config.ckpt_path = str(newest) if newest is not None else None
        if newest is not None:
            log.warning("resuming from %s", newest)
