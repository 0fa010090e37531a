"""Features of an inner block of a frozen backbone, for probes: RotNet's features are judged at a middle block,
where they are least specific to the rotation task (docs/methods/rotnet.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from selfsup.errors import ConfigError


class BlockFeatures(nn.Module):
    """The map of block ``block`` of a backbone with ``stages()`` (a ResNet: 0 the stem, 1-4 its stages),
    average-pooled to ``grid`` x ``grid`` and flattened: (B, channels x grid^2) features.

    The backbone's stages are held, not registered: the wrapper adds nothing to a state dict (the probe
    already holds the backbone)."""

    def __init__(self, backbone: nn.Module, block: int, grid: int = 4) -> None:
        super().__init__()
        if not hasattr(backbone, "stages"):
            raise ConfigError(f"model.block needs a ResNet backbone (its stem and stages), not "
                              f"{type(backbone).__name__}; unset model.block to probe the pooled features")
        stages = backbone.stages()
        if not 0 <= block < len(stages) or grid < 1:
            raise ConfigError(f"model.block must be 0 (the stem) to {len(stages) - 1} and model.block_grid at "
                              f"least 1, got block {block}, grid {grid}")
        self._stages, self.grid = stages[: block + 1], grid
        channels = [m.num_features for m in self._stages[-1].modules() if isinstance(m, nn.BatchNorm2d)][-1]
        self.num_features = channels * grid * grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self._stages:
            x = stage(x)
        return F.adaptive_avg_pool2d(x, self.grid).flatten(1)
