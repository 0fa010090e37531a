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
    """

    def __init__(self, max_bad_fraction: float = 0.01) -> None:
        if not 0 <= max_bad_fraction <= 1:
            raise DataError(f"data_health.max_bad_fraction must be within 0..1, got {max_bad_fraction}")
        self.max_bad_fraction = max_bad_fraction
        self.seen, self.skipped, self.refused = 0, Counter(), Counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        counts = batch.get("health") if isinstance(batch, dict) else None
        if counts is None:
            return
        self.seen += counts["seen"]
        self.skipped.update(counts["skipped"])
        self.refused.update(counts["refused"])
        local = torch.tensor([self.seen, self.skipped.total(), self.refused.total()], dtype=torch.float64)
        seen, skipped, refused = trainer.strategy.reduce(local.to(pl_module.device), reduce_op="sum").tolist()
        pl_module.log_dict({"data/skipped": skipped, "data/refused": refused}, on_step=True, on_epoch=False,
                           batch_size=1)
        epoch = trainer.num_training_batches * len(batch["label"]) * trainer.world_size
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
