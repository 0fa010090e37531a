"""An image backbone applied to each frame of a clip: the single-frame baseline of video evaluation."""

from __future__ import annotations

from typing import Any

import torch

from selfsup.backbones.base import Backbone, build_backbone, register_backbone
from selfsup.errors import ConfigError


@register_backbone("frames")
class Frames(Backbone):
    """The 2-D backbone ``image`` (built with ``image_args``) run on every frame of clips (B, C, T, H, W), its
    features averaged over the frames: it sees each frame alone, so no motion. Its weights are the image
    backbone's under ``image.``, so an image checkpoint loads into it (``selfsup knn --frames``, a probe's
    ``model.backbone: frames``)."""

    media = "video"

    def __init__(self, image: str = "resnet18", image_args: dict[str, Any] | None = None, in_channels: int = 3):
        super().__init__()
        self.image = build_backbone(image, in_channels=in_channels, **(image_args or {}))
        if self.image.media != "image":
            raise ConfigError(f"backbone frames applies an image backbone to each frame, but {image!r} reads "
                              f"{self.image.media}s; give an image backbone (a checkpoint of an image method)")
        self.num_features = self.image.num_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Each frame's dense map, stacked over time: (B, D, T, h, w)."""
        maps = self.image.forward_features(x.transpose(1, 2).flatten(0, 1))
        return maps.unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The mean over the frames of the image backbone's pooled features: (B, D)."""
        return self.image(x.transpose(1, 2).flatten(0, 1)).unflatten(0, (x.shape[0], x.shape[2])).mean(dim=1)
