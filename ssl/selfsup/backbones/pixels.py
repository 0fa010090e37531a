"""``pixels``: the identity backbone, the raw-pixel baseline of every evaluation (kNN, linear probe)."""

from __future__ import annotations

import torch

from selfsup.backbones.base import Backbone, register_backbone
from selfsup.errors import ConfigError


class Pixels(Backbone):
    """The image itself: ``forward_features`` returns the (normalised) input and ``forward`` flattens it to
    ``in_channels * image_size**2`` numbers. No weights; what a representation has to beat."""

    def __init__(self, in_channels: int = 3, image_size: int = 224) -> None:
        super().__init__()
        self.shape = (in_channels, image_size, image_size)
        self.num_features = in_channels * image_size * image_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ConfigError(f"the pixels backbone expects images of shape {self.shape}, got {tuple(x.shape[1:])}; "
                              "set its backbone_args image_size (and the data's channels) to the evaluation's")
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).flatten(1)


@register_backbone("pixels")
def pixels(in_channels: int = 3, image_size: int = 224) -> Pixels:
    """pixels: the image itself, flattened (the raw-pixel baseline of the evaluations; no weights)."""
    return Pixels(in_channels, image_size)
