"""DataHealth: counts the samples the readers skipped, logs them, and stops a run when too many are bad."""

from __future__ import annotations

from collections import Counter
from typing import Any

import lightning as L
import torch

from selfsup.errors import DataError


class DataHealth(L.Callback):
    """Sums the ``"health"`` counts that each training batch carries (see `ShardStream`) over ranks, logs
    ``data/skipped`` (unusable samples) and ``data/refused`` (members never read, e.g. pickles), and raises a
    DataError naming the worst parts once more than ``max_bad_fraction`` of the samples are unusable. The
    fraction is of the samples read so far, but at least one epoch's worth, so a few early bad samples do not
    stop a run. Every rank sees the same totals, so all ranks stop together.

    Counting is local and free; summing over ranks is a collective and a host sync, so it runs every
    ``check_every_n_steps`` steps (default: the trainer's ``log_every_n_steps``, when the loggers sync anyway)
    and at the end of every epoch: a run stops at most that many steps after crossing the limit.
    """

    def __init__(self, max_bad_fraction: float = 0.01, check_every_n_steps: int | None = None) -> None:
        if not 0 <= max_bad_fraction <= 1:
            raise DataError(f"data_health.max_bad_fraction must be within 0..1, got {max_bad_fraction}")
        if check_every_n_steps is not None and check_every_n_steps < 1:
            raise DataError(f"data_health.check_every_n_steps must be at least 1, got {check_every_n_steps}")
        self.max_bad_fraction, self.check_every_n_steps = max_bad_fraction, check_every_n_steps
        self.seen, self.skipped, self.refused = 0, Counter(), Counter()
        self._batch_images = 0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        counts = batch.get("health") if isinstance(batch, dict) else None
        if counts is None:
            return
        self.seen += counts["seen"]
        self.skipped.update(counts["skipped"])
        self.refused.update(counts["refused"])
        self._batch_images = len(batch["label"])
        every = self.check_every_n_steps or trainer.log_every_n_steps or 1
        if (batch_idx + 1) % every == 0:
            self._check(trainer, pl_module, log=True)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._batch_images:  # a batch carried counts this run (every rank, so the collective matches)
            self._check(trainer, pl_module, log=False)

    def _check(self, trainer: L.Trainer, pl_module: L.LightningModule, log: bool) -> None:
        """Sum the counts over ranks (one collective; none on one device), log them, and stop the run if the
        limit is crossed."""
        local = torch.tensor([self.seen, self.skipped.total(), self.refused.total()], dtype=torch.float64)
        if trainer.world_size > 1:
            local = trainer.strategy.reduce(local.to(pl_module.device), reduce_op="sum")
        seen, skipped, refused = local.tolist()
        if log:
            pl_module.log_dict({"data/skipped": skipped, "data/refused": refused}, on_step=True, on_epoch=False,
                               batch_size=1)
        epoch = trainer.num_training_batches * self._batch_images * trainer.world_size
        if skipped > self.max_bad_fraction * max(seen, epoch):
            worst = ", ".join(f"{name} ({n})" for name, n in self.skipped.most_common(3))
            raise DataError(
                f"{int(skipped)} of {int(seen)} samples read so far were unusable (more than "
                f"data_health.max_bad_fraction {self.max_bad_fraction:g}); worst on this rank: {worst}. Check them "
                "with `selfsup shards inspect`, re-write or remove them, or raise --data_health.max_bad_fraction"
            )

    def state_dict(self) -> dict[str, Any]:
        return {"seen": self.seen, "skipped": dict(self.skipped), "refused": dict(self.refused)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seen, self.skipped, self.refused = state["seen"], Counter(state["skipped"]), Counter(state["refused"])
