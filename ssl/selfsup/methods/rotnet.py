"""RotNet (Gidaris et al. 2018), as in docs/methods/rotnet.md."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from selfsup.data.views import RotationViews, ViewRecipe, rotate_batch
from selfsup.heads import MLP, LinearClassifier
from selfsup.methods.base import SSLMethod, StepOutput


class RotNet(SSLMethod):
    """Predict how an image was rotated: each image is shown at 0, 90, 180 and 270 degrees (counter-clockwise)
    and a 4-way classifier on the pooled backbone features names the rotation. The loss is the mean
    cross-entropy over all 4B rotated copies, which go through the backbone in one forward (image-major, as the
    official code). The online probe sees the features of the un-rotated copies.

    Args:
        hidden_dim: width of a hidden layer (Linear -> BN -> ReLU) in the rotation head; None: a linear head.
        **kwargs: the shared options of ``SSLMethod`` (backbone, optimizer, schedule, probe).
    """

    view_kinds = ("rotations",)

    def __init__(self, hidden_dim: int | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        width = self.backbone.num_features
        self.head = MLP([width, hidden_dim, 4], hidden_norm=True) if hidden_dim else LinearClassifier(width, 4)

    def default_views(self, size: int) -> ViewRecipe:
        return RotationViews(size)

    def rotation_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Rotate a batch of square images four ways; returns (features, rotation logits, labels) of the 4B
        copies, image-major."""
        rotated, labels = rotate_batch(images)
        features = self.backbone(rotated)
        return features, self.head(features), labels

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        features, logits, labels = self.rotation_logits(batch["images"])
        loss = F.cross_entropy(logits.float(), labels)
        top1 = (logits.argmax(1) == labels).float().mean()
        return StepOutput(loss=loss, features=features[::4], logs={"train/rotation_top1": top1})

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        super().validation_step(batch, batch_idx)
        _, logits, labels = self.rotation_logits(batch["image"])
        top1 = (logits.argmax(1) == labels).float().mean()
        self.log("val/rotation_top1", top1, on_epoch=True, sync_dist=True, batch_size=len(labels))
