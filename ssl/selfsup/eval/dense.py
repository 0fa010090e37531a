"""Dense probe: a per-pixel linear classifier (1x1 conv) on a frozen feature map, scored by mIoU.

The segmentation task is built on the fly from labelled digits: a pixel is of its image's class when its
intensity is above ``threshold``, else background. Class 0 is background, class c + 1 is label c.

    selfsup fit -c experiments/eval/dense-mnist5k.yaml --model.init_from runs/.../last.ckpt
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError
from selfsup.eval.probe import FrozenProbe


def digit_masks(images: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """Segmentation targets (B, H, W): ``label + 1`` where the channel-mean intensity of an image in [0, 1] is
    above ``threshold``, else 0 (background)."""
    foreground = images.mean(dim=1) > threshold
    return torch.where(foreground, labels[:, None, None] + 1, torch.zeros_like(labels)[:, None, None])


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (C, C) of pixels with target class i (row) predicted as class j (column)."""
    flat = target.flatten() * num_classes + pred.flatten()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean over classes present (in target or prediction) of intersection / union = TP / (TP + FP + FN)."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    present = union > 0
    return (tp[present] / union[present]).mean().item()


class DenseProbe(FrozenProbe):
    """A 1x1 conv from the frozen ``forward_features`` map to background + the data's classes, logits upsampled
    (bilinear) to the input; per-pixel cross-entropy. Logs ``val/miou`` and ``val/pixel_acc``.

    Args:
        threshold: intensity (0-1) above which a pixel is of its image's class.
        **kwargs: the options of ``FrozenProbe`` (checkpoint, architecture, optimizer).
    """

    def __init__(self, threshold: float = 0.5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.threshold = threshold
        self.num_segments = self.hparams.num_classes + 1
        self.head = nn.Conv2d(self.backbone.num_features, self.num_segments, kernel_size=1)
        self._confusion: torch.Tensor | None = None

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits (B, classes + 1, H, W) at the input's resolution."""
        with torch.no_grad():
            fmap = self.backbone.forward_features(images)
        if fmap.ndim != 4:
            raise ConfigError(f"DenseProbe needs a 2-D feature map (B, C, h, w); this backbone gives {fmap.ndim}-D")
        return F.interpolate(self.head(fmap), size=images.shape[-2:], mode="bilinear", align_corners=False)

    def _logits_and_masks(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = batch["image"], batch["label"]
        keep = labels >= 0
        images, labels = images[keep], labels[keep]
        return self(images), digit_masks(images, labels, self.threshold)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, masks = self._logits_and_masks(batch)
        loss = F.cross_entropy(logits, masks)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(masks))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._confusion = torch.zeros(self.num_segments, self.num_segments, dtype=torch.long, device=self.device)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits, masks = self._logits_and_masks(batch)
        self._confusion += confusion_matrix(logits.argmax(1), masks, self.num_segments)

    def on_validation_epoch_end(self) -> None:
        confusion = self.trainer.strategy.reduce(self._confusion, reduce_op="sum")
        pixel_acc = (confusion.diag().sum() / confusion.sum().clamp(min=1)).item()
        self.log_dict({"val/miou": mean_iou(confusion), "val/pixel_acc": pixel_acc})
