"""NonFiniteGuard: a NaN or Inf loss or gradient stops the run (or skips the step) before it reaches the weights."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch

from selfsup.errors import ConfigError


class NonFiniteError(ConfigError):
    """Training produced a non-finite loss or gradient."""


class NonFiniteGuard(L.Callback):
    """Checks each step's loss and gradients before the optimizer step.

    ``action="stop"`` raises one message naming the step, the loss terms and the last good checkpoint (which is
    not overwritten: nothing is saved after the bad step). ``action="skip"`` drops the step's gradients, so the
    optimizer leaves every weight (and its momentum) as it was, counts ``train/skipped_steps`` and goes on.
    Under 16-bit mixed precision the gradient scaler already skips overflowing steps; only the loss is checked.
    Gradients are checked after DDP has averaged them, so every rank takes the same decision.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop") -> None:
        self.action = action
        self.skipped = 0
        self._loss: torch.Tensor | None = None

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        bad_loss = self._loss is not None and not torch.isfinite(self._loss).all()
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        bad_grads = not scaled and bool(params) and not torch.isfinite(
            torch.stack([p.grad.detach().float().abs().sum() for p in params])).all()
        if not (bad_loss or bad_grads):
            return
        if self.action == "skip":
            for p in params:
                p.grad = None
            self.skipped += 1
            pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)
            return
        what = "loss" if bad_loss else "gradient"
        terms = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/") and "step" in k}
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
        raise NonFiniteError(
            f"non-finite {what} at step {trainer.global_step} (epoch {trainer.current_epoch}): loss "
            f"{float(self._loss):g}, logged terms {terms}; the last good checkpoint is {last}. Lower the lr "
            "or check the data, then resume with --ckpt_path last; or set --nonfinite.action skip"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = state["skipped"]
