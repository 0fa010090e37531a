"""FeatureWriter: what `selfsup predict` produces, saved as one file of features and labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info


class FeatureWriter(BasePredictionWriter):
    """After ``predict``, save ``{"features": (N, D) float32, "label": (N,)}`` with ``torch.save`` to ``output``
    (default: ``features.pt`` in the run's log folder). Tensors only, so ``torch.load(weights_only=True)`` reads it.
    Each rank writes its own part (``features.rank1.pt``, ...) when there are several.
    """

    def __init__(self, output: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.output = output

    def write_on_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, predictions: Any,
                           batch_indices: Any) -> None:
        batches = predictions[0] if predictions and isinstance(predictions[0], list) else predictions
        if not batches:
            return
        path = Path(self.output) if self.output else Path(trainer.log_dir or ".") / "features.pt"
        if trainer.world_size > 1 and trainer.global_rank > 0:
            path = path.with_suffix(f".rank{trainer.global_rank}.pt")
        path.parent.mkdir(parents=True, exist_ok=True)
        result = {
            "features": torch.cat([b["features"].detach().float().cpu() for b in batches]),
            "label": torch.cat([b["label"].cpu() for b in batches]),
        }
        torch.save(result, path)
        rank_zero_info(f"wrote {len(result['label'])} feature vectors of width {result['features'].shape[1]}: {path}")
