"""Checkpoints that survive clusters: saved atomically beside their target, the final step always in ``last.ckpt``,
resume from the newest intact one, and only into the model that wrote it."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from selfsup.errors import ConfigError
from selfsup.eval.checkpoint import REMOTE, BackboneSpec, backbone_spec, check_same_architecture, load_checkpoint
from selfsup.training.atomic import atomic_save
from selfsup.trust import trusted

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint IO with :func:`atomic_save` for local paths (URLs keep Lightning's own save), and
    every load through selfsup's gate (``load_checkpoint``: a local regular file, weights-only whatever the caller
    or ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` asks), also the ``hpc`` checkpoint Lightning finds itself on SLURM."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if REMOTE.match(str(path)):
            return super().save_checkpoint(checkpoint, path, storage_options)
        atomic_save(checkpoint, Path(path))
        return None

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path)


class RunCheckpoint(ModelCheckpoint):
    """ModelCheckpoint whose ``last.ckpt`` does not wait for validation: it is also saved at the end of every
    training epoch, at least every ``every_minutes`` of training (at a step boundary; 0: no clock), and at the end
    of a finished run when its last save was at an earlier step (with ``every_n_train_steps`` the final steps would
    otherwise be in no checkpoint).

    Args:
        every_minutes: the longest stretch of training, in minutes, without a new ``last.ckpt`` (0: only at epoch
            ends and validation).
    """

    def __init__(self, *args: Any, every_minutes: float = 30.0, **kwargs: Any) -> None:
        if every_minutes < 0:
            raise ConfigError(f"--checkpoint.every_minutes {every_minutes}: give minutes >= 0 (0 turns the clock off)")
        super().__init__(*args, **kwargs)
        self.every_minutes = every_minutes
        self._last_save_time = time.monotonic()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._last_save_time = time.monotonic()

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        super().on_train_batch_end(trainer, *args, **kwargs)
        if self.every_minutes and self._unsaved(trainer) and not trainer.fit_loop.epoch_loop._should_accumulate():
            due = time.monotonic() - self._last_save_time >= self.every_minutes * 60
            if trainer.strategy.broadcast(due):  # rank 0's clock decides, so that every rank saves together
                self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._unsaved(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._unsaved(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
        else:
            super().on_train_end(trainer, pl_module)

    def _save_last_checkpoint(self, trainer: pl.Trainer, monitor_candidates: dict[str, Any]) -> None:
        super()._save_last_checkpoint(trainer, monitor_candidates)
        self._last_save_time = time.monotonic()

    def _unsaved(self, trainer: pl.Trainer) -> bool:
        """Whether ``last.ckpt`` is behind the current step (and this run saves it)."""
        return bool(self.save_last and trainer.global_step > self._last_global_step_saved and not trainer.fast_dev_run
                    and not trainer.sanity_checking)


def newest_intact(candidates: list[Path]) -> tuple[Path, dict[str, Any]] | None:
    """The newest (by modification time) of ``candidates`` that loads weights-only, and its contents; each damaged
    one skipped is named in a warning."""
    damaged: list[str] = []
    for path in sorted(set(candidates), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            ckpt = load_checkpoint(path)
        except ConfigError as err:
            damaged.append(str(err))
            continue
        for reason in damaged:
            log.warning("skipping a damaged checkpoint: %s", reason)
        return path, ckpt
    if damaged:
        raise ConfigError(f"no intact checkpoint to resume from ({damaged[0]}); delete the damaged files to "
                          "start over, or give --ckpt_path")
    return None


def check_resumable(ckpt: dict[str, Any], model: pl.LightningModule, path: str | Path) -> None:
    """Refuse a checkpoint written by another method or another backbone than the configured ``model``, naming
    both; a checkpoint may only name selfsup's classes (and trusted ones), and none of them is imported."""
    hp = ckpt.get("hyper_parameters") or {}
    written_by = str(hp.get("_class_path") or "")
    if written_by:
        if not written_by.startswith("selfsup.") and not any(
                written_by == t or written_by.startswith(f"{t}.") for t in trusted()):
            raise ConfigError(f"checkpoint {path} names the class {written_by}, which is not selfsup's; give a "
                              "checkpoint written by `selfsup fit`")
        if written_by.rsplit(".", 1)[-1] != type(model).__name__:
            raise ConfigError(f"checkpoint {path} was written by {written_by.rsplit('.', 1)[-1]}, but the config "
                              f"trains {type(model).__name__}; give a {type(model).__name__} checkpoint, or that "
                              "run's config (-c RUN/config.yaml)")
    mine = model.hparams
    if "backbone" in hp and "backbone" in mine:
        expected = BackboneSpec(mine["backbone"], dict(mine.get("backbone_args") or {}),
                                int(mine.get("in_channels", 3)))
        check_same_architecture(backbone_spec(ckpt, path), expected, path)
    check_method = getattr(model, "check_checkpoint", None)  # a method's own conditions (DINO: norm_last_layer)
    if check_method is not None:
        check_method(hp, str(path))
