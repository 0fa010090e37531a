"""I-JEPA's multi-block masks (docs/methods/ijepa.md): target blocks to predict, and one context block to predict
them from that leaves the targets out, as patch indices of a ViT's grid."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from selfsup.data.views import IMAGENET_MEAN, IMAGENET_STD, CropViews
from selfsup.errors import ConfigError


class MultiBlockMasks:
    """Blocks of a ``grid`` x ``grid`` patch grid (N patches), drawn per batch.

    A block's size comes from ONE uniform draw u per block type and batch, shared by its scale and its aspect:
    ``s = lo + u (hi - lo)``, ``a = lo + u (hi - lo)``, ``h = round(sqrt(int(s N) a))``, ``w = round(sqrt(int(s N)
    / a))``, each capped below the grid side. Every image gets ``num_targets`` target blocks of that size and one
    context block (aspect 1) at its own random positions (top-left corner in ``[0, grid - h)``); the context
    keeps only the patches outside all the image's targets. A block with ``min_keep`` or fewer patches left is
    drawn again; after ``max_tries`` failures the context stops avoiding the last remaining target (one more
    each time; ``relaxed`` counts these). Context lists are cut to the shortest in the batch (lowest indices kept).
    """

    def __init__(self, grid: int, num_targets: int = 4, target_scale: tuple[float, float] = (0.15, 0.2),
                 target_aspect: tuple[float, float] = (0.75, 1.5), context_scale: tuple[float, float] = (0.85, 1.0),
                 min_keep: int = 10, max_tries: int = 20) -> None:
        self.grid, self.num_targets, self.min_keep, self.max_tries = grid, num_targets, min_keep, max_tries
        self.target_scale, self.target_aspect = tuple(target_scale), tuple(target_aspect)
        self.context_scale = tuple(context_scale)
        self.relaxed = 0
        self._check()

    def _check(self) -> None:
        """ConfigError where blocks of these sizes can never leave ``min_keep`` + 1 patches."""
        n, draws = self.grid**2, torch.linspace(0, 1, 101).tolist()
        targets = [math.prod(self.block_size(u, self.target_scale, self.target_aspect)) for u in draws]
        contexts = [math.prod(self.block_size(u, self.context_scale, (1.0, 1.0))) for u in draws]
        grid = f"the {self.grid}x{self.grid} patch grid"
        if self.num_targets < 1:
            raise ConfigError(f"num_targets must be at least 1, got {self.num_targets}")
        if min(targets) <= self.min_keep:
            raise ConfigError(f"target blocks of {min(targets)} patches (target_scale {list(self.target_scale)} of "
                              f"{grid}) are not above min_keep {self.min_keep}; raise target_scale or lower min_keep")
        if min(contexts) <= self.min_keep:
            raise ConfigError(f"a context block of {min(contexts)} patches (context_scale {list(self.context_scale)} "
                              f"of {grid}) is not above min_keep {self.min_keep}; raise context_scale or lower "
                              "min_keep")
        if n - self.num_targets * max(targets) <= self.min_keep:
            raise ConfigError(f"{self.num_targets} target blocks of up to {max(targets)} patches leave "
                              f"{max(n - self.num_targets * max(targets), 0)} of the {n} patches of {grid} for the "
                              f"context, not above min_keep {self.min_keep}; lower num_targets or target_scale (or "
                              "min_keep), or use more patches")

    def block_size(self, u: float, scale: tuple[float, float], aspect: tuple[float, float]) -> tuple[int, int]:
        """(h, w) of a block from the draw ``u`` in [0, 1], shared by scale and aspect."""
        area = int(self.grid**2 * (scale[0] + u * (scale[1] - scale[0])))
        a = aspect[0] + u * (aspect[1] - aspect[0])
        h, w = round(math.sqrt(area * a)), round(math.sqrt(area / a))
        return min(h, self.grid - 1), min(w, self.grid - 1)

    def place(self, size: tuple[int, int], generator: torch.Generator | None) -> torch.Tensor:
        """A (grid, grid) bool mask with one block of ``size`` at a random position."""
        h, w = size
        top = int(torch.randint(0, self.grid - h, (1,), generator=generator))
        left = int(torch.randint(0, self.grid - w, (1,), generator=generator))
        block = torch.zeros(self.grid, self.grid, dtype=torch.bool)
        block[top:top + h, left:left + w] = True
        return block

    def context(self, size: tuple[int, int], targets: Sequence[torch.Tensor],
                generator: torch.Generator | None) -> torch.Tensor:
        """Indices of a context block of ``size`` outside ``targets``, more than ``min_keep`` of them."""
        fails, avoided = 0, len(targets)
        while True:
            block = self.place(size, generator)
            for target in targets[:avoided]:
                block &= ~target
            kept = block.flatten().nonzero().squeeze(1)
            if len(kept) > self.min_keep:
                return kept
            fails += 1
            if fails == self.max_tries:
                fails, avoided = 0, max(avoided - 1, 0)
                self.relaxed += 1

    def batch(self, batch: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """``{"context": (B, K) long, "targets": (num_targets, B, T) long}``: row-major patch indices."""
        target_size = self.block_size(float(torch.rand(1, generator=generator)), self.target_scale,
                                      self.target_aspect)
        context_size = self.block_size(float(torch.rand(1, generator=generator)), self.context_scale, (1.0, 1.0))
        targets, contexts = [], []
        for _ in range(batch):
            blocks = [self.place(target_size, generator) for _ in range(self.num_targets)]
            targets.append(torch.stack([block.flatten().nonzero().squeeze(1) for block in blocks]))
            contexts.append(self.context(context_size, blocks, generator))
        keep = min(len(c) for c in contexts)
        return {"context": torch.stack([c[:keep] for c in contexts]), "targets": torch.stack(targets, dim=1)}

    def __repr__(self) -> str:
        return (f"MultiBlockMasks(grid={self.grid}, num_targets={self.num_targets}, target_scale="
                f"{self.target_scale}, target_aspect={self.target_aspect}, context_scale={self.context_scale}, "
                f"min_keep={self.min_keep})")


class MultiBlockViews(CropViews):
    """I-JEPA's view: one random resized crop (area ``scale``, aspect 3/4-4/3; no flip, no colour) and
    normalisation of each image, and the batch's ``MultiBlockMasks`` on the model's patch grid.

    Output ``{"images": float (B, C, size, size), "context": long (B, K), "targets": long (num_targets, B, T)}``.
    ``model_patch_size`` must be the backbone's patch size and divide ``size`` (I-JEPA checks).
    """

    kind = "blocks"
    key = "images"

    def __init__(
        self,
        size: int = 224,
        model_patch_size: int = 16,
        num_targets: int = 4,
        target_scale: tuple[float, float] = (0.15, 0.2),
        target_aspect: tuple[float, float] = (0.75, 1.5),
        context_scale: tuple[float, float] = (0.85, 1.0),
        min_keep: int = 10,
        scale: tuple[float, float] = (0.3, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        if size % model_patch_size:
            raise ConfigError(f"the patch size {model_patch_size} does not divide the image size {size}; choose a "
                              "patch size that does")
        super().__init__(size, scale, ratio, 0.0, mean, std)
        self.model_patch_size = model_patch_size
        self.masks = MultiBlockMasks(size // model_patch_size, num_targets, target_scale, target_aspect,
                                     context_scale, min_keep)

    def batch(self, images: torch.Tensor) -> dict[str, Any]:
        return {"images": self.crops(images), **self.masks.batch(len(images))}

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        out = super().from_crops(crops, on_device)
        device = out["images"].device
        return {**out, **{k: v.to(device) for k, v in self.masks.batch(len(out["images"])).items()}}
