"""A callback for tests that signals its own process, as SLURM's --signal would."""

from __future__ import annotations

import os
import signal

from lightning.pytorch.callbacks import Callback


class SignalAt(Callback):
    """Send ``signum`` (default SIGUSR1) to this process when the batch of global step ``step`` starts."""

    def __init__(self, step: int = 3, signum: int = int(signal.SIGUSR1)) -> None:
        self.step = step
        self.signum = signum

    def on_train_batch_start(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
