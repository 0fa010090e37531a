"""A callback for tests that signals its own process, as SLURM's --signal would."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """Send ``signum`` (default SIGUSR1) to this process when the batch of global step ``step`` starts, or with
    ``during="validation"`` when a validation batch starts after ``step`` training steps (not in the sanity check)."""

    def __init__(self, step: int = 3, signum: int = int(signal.SIGUSR1), during: str = "training") -> None:
        self.step = step
        self.signum = signum
        self.during = during

    def on_train_batch_start(self, trainer, *args) -> None:
        if self.during == "training" and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)

    def on_validation_batch_start(self, trainer, *args) -> None:
        if self.during == "validation" and not trainer.sanity_checking and trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
