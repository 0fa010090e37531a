"""SLURM and preemption: checkpoint (and requeue) on the warning signal or SIGTERM at a step boundary, and resume a
job in its own run folder."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

log = logging.getLogger(__name__)


class Preempted(Exception):
    """The run stopped on SIGTERM after saving a checkpoint to resume from."""


class SlurmRequeue(Callback):
    """Stop, checkpoint and requeue at a step boundary on SLURM's warning signal and on SIGTERM.

    Under ``srun`` Lightning's ``SLURMEnvironment(auto_requeue=True)`` saves ``hpc_ckpt_N.ckpt`` and runs
    ``scontrol requeue`` from inside the SIGUSR1 handler. With DDP that handler runs wherever each rank happens to
    be (one rank in forward, another blocked in a gradient all-reduce), and its save starts a barrier the other
    rank's pending all-reduce can be matched against: a hang, or a checkpoint of half a step. Here the handler only
    notes the signal (installed before Lightning's, which then leaves SIGUSR1 alone); after the current optimizer
    step all ranks agree that a signal came, every rank saves the same ``hpc_ckpt_N.ckpt`` in
    ``trainer.default_root_dir`` (Lightning's name, so Lightning's own hpc resume finds it too), and rank 0
    requeues the job. SLURM then stops the tasks (SIGTERM) and the job starts again with the same id.

    SIGTERM (what schedulers send on preemption, and SLURM at the end of a job) is handled in every ``fit``, on a
    cluster or not: after the current step or validation batch ``last.ckpt`` is saved (so ``--run_dir`` and
    ``--ckpt_path last`` resume from it), the job is requeued under SLURM if the warning signal did not already do
    so, and the run stops with :class:`Preempted` (the CLI exits 143, as a process killed by SIGTERM would).

    Costs one tiny all-reduce per training step during ``fit``."""

    def __init__(self) -> None:
        self._previous: dict[int, Any] = {}
        self._requested = False
        self._terminate = False
        self._slurm = False
        self.requeued = False

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or threading.current_thread() is not threading.main_thread():
            return
        environment = trainer._accelerator_connector.cluster_environment
        self._slurm = isinstance(environment, SLURMEnvironment) and environment.auto_requeue
        if self._slurm:
            signum = int(environment.requeue_signal or signal.SIGUSR1)
            self._previous[signum] = signal.signal(signum, self._note)
        self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._note_terminate)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def _note(self, signum: int, frame: Any) -> None:
        self._requested = True

    def _note_terminate(self, signum: int, frame: Any) -> None:
        self._requested = self._terminate = True

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        if not self._previous or not trainer.strategy.reduce_boolean_decision(self._requested, all=False):
            return
        self._requested = False
        if trainer.strategy.reduce_boolean_decision(self._terminate, all=False):
            # the run stops inside this hook: log this step's metrics first, which stopping would skip
            trainer._logger_connector.update_train_step_metrics()
            self._save_and_stop(trainer, "SIGTERM")
        if not self.requeued:
            for logger in trainer.loggers:
                logger.save()
            path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
            trainer.save_checkpoint(path)  # every rank takes part; rank 0 writes
            self._requeue(trainer, path, "requeue signal")

    def on_validation_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        """SIGTERM during validation (which may be long: a kNN over the whole train split) saves and stops there:
        ``last.ckpt`` holds the finished training steps, and the resumed run validates again."""
        if self._previous and not trainer.sanity_checking and trainer.strategy.reduce_boolean_decision(
                self._terminate, all=False):
            self._save_and_stop(trainer, "SIGTERM during validation")

    def _save_and_stop(self, trainer: pl.Trainer, why: str) -> None:
        """Save ``last.ckpt``, requeue under SLURM unless the warning signal already did, and stop the run."""
        path = save_last(trainer)
        self._requeue(trainer, path, why)
        raise Preempted(f"stopped by SIGTERM at step {trainer.global_step}; saved {path}: run the same command "
                        "(with --run_dir, or --ckpt_path last) to continue")

    def _requeue(self, trainer: pl.Trainer, path: Path | str, why: str) -> None:
        if self._slurm and not self.requeued and trainer.is_global_zero:
            log.warning("%s: saved %s at step %d; requeuing", why, path, trainer.global_step)
            requeue()
        self.requeued = self.requeued or self._slurm


def save_last(trainer: pl.Trainer) -> Path:
    """Save the checkpoint a restarted run resumes from: ``last.ckpt`` of the checkpoint callback (found by
    ``--run_dir`` and ``--ckpt_path last``), else a requeue checkpoint in ``trainer.default_root_dir``."""
    for logger in trainer.loggers:
        logger.save()
    callback = trainer.checkpoint_callback
    if isinstance(callback, ModelCheckpoint) and callback.save_last and callback.dirpath:
        callback._save_last_checkpoint(trainer, callback._monitor_candidates(trainer))
        return Path(callback.last_model_path)
    path = trainer._checkpoint_connector.hpc_save_path(trainer.default_root_dir)
    trainer.save_checkpoint(path)
    return Path(path)


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


def resume_candidates(run_dir: Path) -> list[Path]:
    """The checkpoints a job in ``run_dir`` may continue from: the requeue checkpoints ``hpc_ckpt_N.ckpt`` and every
    checkpoint in the ``checkpoints`` folders under it (a job stopped by the requeue signal continues from its
    requeue checkpoint, one killed without a signal from its last periodic checkpoint)."""
    return [*run_dir.glob("hpc_ckpt_*.ckpt"), *run_dir.glob("**/checkpoints/*.ckpt")]


def use_run_dir(config: Any, run_dir: Path) -> None:
    """Point everything a run writes into ``run_dir``: each logger's ``save_dir`` and ``trainer.default_root_dir``
    (where Lightning saves requeue checkpoints)."""
    config.trainer.default_root_dir = str(run_dir)
    loggers = config.trainer.logger if isinstance(config.trainer.logger, list) else []
    for logger in loggers:
        args = getattr(logger, "init_args", None)
        if args is not None and "save_dir" in args:
            args.save_dir = str(run_dir)
