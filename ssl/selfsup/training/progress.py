"""Console lines a person reads during ``fit``: the run folder and what trains, a plain line every N steps (as
timm's training script prints), the results at the end. In a log file (stdout not a terminal) these lines are
all there is: the CLI turns the progress bar off there."""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from selfsup.training.precision import precision_note


def say(trainer: L.Trainer, line: str) -> None:
    """Print ``line`` on rank 0, above the progress bar when there is one, flushed (a log file shows it now)."""
    if not trainer.is_global_zero:
        return
    bar = trainer.progress_bar_callback
    if bar is not None and bar.is_enabled:
        bar.print(line)
    else:
        print(line, flush=True)


def duration(seconds: float) -> str:
    """``h:mm:ss``."""
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _metric(metrics: dict[str, Any], *names: str) -> float | None:
    """The first of ``names`` present in ``metrics``, as a float."""
    for name in names:
        if name in metrics:
            return float(metrics[name])
    return None


def total_steps(trainer: L.Trainer) -> int | None:
    """The optimizer steps ``fit`` will take (None: unknown, e.g. an endless loader without max_steps)."""
    total = trainer.estimated_stepping_batches
    return int(total) if math.isfinite(total) else None


def summary(trainer: L.Trainer, module: L.LightningModule) -> str:
    """One line: method, backbone and parameters, data (with its view and evaluation sizes), steps and batch (and
    on a CPU, torch's threads), precision (and on a CPU, whether it has native bf16)."""
    hp = getattr(module, "hparams", {})
    backbone = getattr(module, "backbone", None)
    params = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    args = ", ".join(f"{k}={v}" for k, v in sorted((hp.get("backbone_args") or {}).items()))
    arch = f"{hp.get('backbone', type(backbone).__name__)}({args})" if backbone else "-"
    data = trainer.datamodule
    source = getattr(getattr(data, "source", None), "spec", type(data).__name__ if data else "-")
    source += f" ({data.sizes()})" if hasattr(data, "sizes") and getattr(data, "views", None) is not None else ""
    batch = getattr(data, "batch_size", None)
    batch = f", batch {batch} x {trainer.world_size} device(s)" if batch else ""
    device = trainer.strategy.root_device.type
    threads = f", {torch.get_num_threads()} CPU thread(s)" if device == "cpu" else ""
    weights = f"{params / 1e6:.2f}M params" + (f" ({trainable / 1e6:.2f}M trained)" if trainable != params else "")
    return (f"{type(module).__name__} | backbone {arch}, {weights} | data {source} | "
            f"{total_steps(trainer) or '?'} steps, {trainer.max_epochs} epoch(s){batch}{threads} | "
            f"{precision_note(trainer.precision, device)}")


class ProgressLines(Callback):
    """At the start of training the run folder and a summary; every ``every_n_steps`` optimizer steps (default:
    ``trainer.log_every_n_steps``) ``epoch E step S/TOTAL loss lr images/s [data_wait] ETA``. Notes the step
    of the last validation during fit (``validated_at``)."""

    def __init__(self, every_n_steps: int | None = None) -> None:
        self.every_n_steps = every_n_steps
        self._start = self._last_time = 0.0
        self._start_step = self._last_step = 0
        self._images = 0
        self._paused = self._paused_since = 0.0
        self.validated_at: int | None = None

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paused_since = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._paused += time.perf_counter() - self._paused_since  # images/s counts training time only
        if not trainer.sanity_checking:
            self.validated_at = trainer.global_step

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        say(trainer, f"run folder: {trainer.log_dir}")
        say(trainer, summary(trainer, pl_module))
        self._start = self._last_time = time.perf_counter()
        self._start_step = self._last_step = trainer.global_step
        self._images, self._paused = 0, 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        labels = batch.get("label") if isinstance(batch, dict) else None
        self._images += (len(labels) if labels is not None else 0) * trainer.world_size
        step, total = trainer.global_step, total_steps(trainer)
        every = self.every_n_steps or trainer.log_every_n_steps or 50
        if step == self._last_step or (step % every and step != total):
            return
        now = time.perf_counter()
        metrics = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch}", f"step {step}/{total or '?'}"]
        loss = _metric(metrics, "train/loss_step", "train/loss")
        lr = _metric(metrics, "train/lr")
        wait = _metric(metrics, "train/data_wait_step", "train/data_wait")
        parts += [f"loss {loss:.4f}"] if loss is not None else []
        parts += [f"lr {lr:.3g}"] if lr is not None else []
        parts.append(f"{self._images / max(now - self._last_time - self._paused, 1e-9):.0f} images/s")
        parts += [f"data_wait {wait:.0%}"] if wait is not None else []  # the share of the step spent waiting
        if total:
            done = step - self._start_step
            parts.append(f"ETA {duration((now - self._start) / max(done, 1) * (total - step))}")
        say(trainer, "  ".join(parts))
        self._last_time, self._last_step, self._images, self._paused = now, step, 0, 0.0


def results_line(module: L.LightningModule, metrics: dict[str, Any], prefix: str = "val/") -> str | None:
    """``NAME on val: top1 0.9123  top5 0.9987`` from ``metrics``; None when there is none."""
    found = {k.removeprefix(prefix): float(v) for k, v in metrics.items() if k.startswith(prefix)}
    if not found:
        return None
    return f"{type(module).__name__} on {prefix.rstrip('/')}: " + "  ".join(
        f"{k} {v:.4f}" for k, v in sorted(found.items()))
