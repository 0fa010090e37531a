"""A method for tests that breaks on purpose: SimCLR whose loss turns NaN at one chosen step."""

from __future__ import annotations

from selfsup.methods import SimCLR
from selfsup.methods.base import StepOutput


class SimCLRNaNAt(SimCLR):
    """SimCLR, except that the loss of step ``nan_at_step`` is NaN (as after an overflow)."""

    def __init__(self, nan_at_step: int = 3, **kwargs) -> None:
        super().__init__(**kwargs)
        self.nan_at_step = nan_at_step

    def ssl_step(self, batch: dict) -> StepOutput:
        out = super().ssl_step(batch)
        if self.global_step == self.nan_at_step:
            out.loss = out.loss * float("nan")
        return out
