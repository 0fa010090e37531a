"""NonFiniteGuard: a NaN or Inf loss or gradient stops the run (or skips the step) before it reaches a checkpoint
(or, skipping, the weights)."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch

from selfsup.errors import ConfigError


class NonFiniteError(ConfigError):
    """Training produced a non-finite loss or gradient."""


class NonFiniteGuard(L.Callback):
    """Checks each step's loss and gradients before the optimizer step.

    ``action="stop"`` raises one message naming the first bad step, its loss and the last good checkpoint, which
    is not overwritten: nothing is saved after the bad step. The check runs on the device every step and is
    read on the host (a sync) only every ``check_every_n_steps`` steps (default: the trainer's
    ``log_every_n_steps``), before every checkpoint is written, and when training ends; the weights in memory
    may turn non-finite in between, but no checkpoint does, and the run stops within that many steps.
    ``action="skip"`` must decide before each optimizer step, so it reads the check every step: it drops the
    step's gradients, so the optimizer leaves every weight (and its momentum) as it was, counts
    ``train/skipped_steps`` and goes on. Under 16-bit mixed precision the gradient scaler already skips
    overflowing steps; only the loss is checked. Gradients are checked after DDP has averaged them, so every
    rank takes the same decision. Checkpoints saved with ``save_weights_only`` skip callbacks and this check.
    """

    def __init__(self, action: Literal["stop", "skip"] = "stop", check_every_n_steps: int | None = None) -> None:
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise ConfigError(f"nonfinite.check_every_n_steps must be at least 1, got {check_every_n_steps}")
        self.action, self.check_every_n_steps = action, check_every_n_steps
        self.skipped = 0
        self._loss: torch.Tensor | None = None
        self._first_bad: torch.Tensor | None = None  # on the device: (step or -1, 1 loss / 2 gradient, loss)

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        self._loss = loss.detach()

    def _bad(self, trainer: L.Trainer, optimizer: Any) -> torch.Tensor:
        """On the device, without a sync: 0 if this step's loss and gradients are finite, 1 for a non-finite
        loss, 2 for a non-finite gradient."""
        grads = [p.grad.detach() for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        loss = self._loss if self._loss is not None else torch.zeros(())
        code = (~torch.isfinite(loss).all()).long()
        scaled = getattr(trainer.precision_plugin, "scaler", None) is not None
        if grads and not scaled:
            grads_ok = torch.isfinite(torch.stack(torch._foreach_norm(grads)).float()).all()
            code = torch.where(code > 0, code, 2 * (~grads_ok).long().to(code.device))
        return code

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        code = self._bad(trainer, optimizer)
        if self.action == "skip":
            if code.item():
                for group in optimizer.param_groups:
                    for p in group["params"]:
                        p.grad = None
                self.skipped += 1
                pl_module.log("train/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)
            return
        loss = (self._loss if self._loss is not None else torch.zeros(())).detach().double().reshape(())
        step = torch.full((), float(trainer.global_step), dtype=torch.float64, device=code.device)  # a fill, no copy
        now = torch.stack([step, code.double(), loss.to(code.device)])
        if self._first_bad is None:
            self._first_bad = torch.full_like(now, -1.0)
        take = (code > 0) & (self._first_bad[0] < 0)
        self._first_bad = torch.where(take, now, self._first_bad)
        every = self.check_every_n_steps or trainer.log_every_n_steps or 1
        if (trainer.global_step + 1) % every == 0:
            self._raise_if_bad(trainer)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        self._raise_if_bad(trainer)  # before the file is written

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._raise_if_bad(trainer)

    def _raise_if_bad(self, trainer: L.Trainer) -> None:
        if self._first_bad is None:
            return
        step, code, loss = self._first_bad.tolist()
        if step < 0:
            return
        what = "loss" if code == 1 else "gradient"
        terms = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/") and "step" in k}
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
        raise NonFiniteError(
            f"non-finite {what} at step {int(step)} (found at step {trainer.global_step}, epoch "
            f"{trainer.current_epoch}): loss {loss:g}, last logged terms {terms}; the last good checkpoint is "
            f"{last}. Lower the lr or check the data, then resume with --ckpt_path last; or set "
            "--nonfinite.action skip"
        )

    def state_dict(self) -> dict[str, Any]:
        return {"skipped": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped = state["skipped"]
