"""Patch masks: SimMIM's random mask of whole mask patches at model-patch resolution (docs/methods/simmim.md), and
MAE's per-sample random choice of the patches an encoder keeps (docs/methods/mae.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from selfsup.data.views import IMAGENET_MEAN, IMAGENET_STD, CropViews
from selfsup.errors import ConfigError


class MaskGenerator:
    """Masks of ``input_size`` px images: a grid of ``input_size / mask_patch_size`` cells per side, of which
    ``ceil(cells x mask_ratio)`` chosen at random are masked, each cell repeated ``mask_patch_size /
    model_patch_size`` times along both axes. Output (h, w) = input_size / model_patch_size, 1 = masked.

    ViT 224/32/16 gives 14x14 with 30 of 49 cells masked; Swin 192/32/4 gives 48x48 with 22 of 36.
    """

    def __init__(self, input_size: int = 192, mask_patch_size: int = 32, model_patch_size: int = 4,
                 mask_ratio: float = 0.6) -> None:
        if mask_patch_size % model_patch_size:
            raise ConfigError(f"mask_patch_size {mask_patch_size} is not a multiple of the model's patch size "
                              f"{model_patch_size}; set mask_patch_size to a multiple of {model_patch_size}")
        if input_size % mask_patch_size:
            raise ConfigError(f"mask_patch_size {mask_patch_size} does not divide the image size {input_size}; "
                              f"choose a mask_patch_size that divides {input_size}")
        if not 0 < mask_ratio < 1:
            raise ConfigError(f"mask_ratio must be within (0, 1), got {mask_ratio}")
        self.input_size, self.mask_patch_size = input_size, mask_patch_size
        self.model_patch_size, self.mask_ratio = model_patch_size, mask_ratio
        self.cells = input_size // mask_patch_size  # per side
        self.scale = mask_patch_size // model_patch_size
        self.count = math.ceil(self.cells**2 * mask_ratio)

    @property
    def shape(self) -> tuple[int, int]:
        """(h, w) of a mask: the model's patch grid."""
        side = self.cells * self.scale
        return side, side

    def cell_masks(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, cells, cells) uint8: exactly ``count`` ones per sample at random cells."""
        order = torch.rand(batch, self.cells**2, generator=generator).argsort(dim=1)
        masks = torch.zeros(batch, self.cells**2, dtype=torch.uint8)
        masks.scatter_(1, order[:, : self.count], 1)
        return masks.view(batch, self.cells, self.cells)

    def batch(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, h, w) uint8 masks at model-patch resolution."""
        cells = self.cell_masks(batch, generator)
        return cells.repeat_interleave(self.scale, dim=1).repeat_interleave(self.scale, dim=2)

    def __call__(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """One (h, w) mask."""
        return self.batch(1, generator)[0]

    def __repr__(self) -> str:
        return (f"MaskGenerator(input_size={self.input_size}, mask_patch_size={self.mask_patch_size}, "
                f"model_patch_size={self.model_patch_size}, mask_ratio={self.mask_ratio})")


def random_keep(batch: int, num_patches: int, mask_ratio: float, device: torch.device | str | None = None,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking: ``(keep, restore)``. Each sample's patches are ordered by the argsort of
    uniform noise; ``keep`` (B, K) is the first ``K = floor(num_patches x (1 - mask_ratio))`` of that order (the
    visible patches, exactly K per sample) and ``restore`` (B, num_patches) its inverse permutation, so that
    ``x_shuffled.gather(1, restore)`` puts shuffled tokens back in patch order."""
    if not 0 < mask_ratio < 1:
        raise ConfigError(f"mask_ratio must be within (0, 1), got {mask_ratio}; MAE's is 0.75")
    num_keep = int(num_patches * (1 - mask_ratio))
    if num_keep < 1:
        raise ConfigError(f"mask_ratio {mask_ratio} leaves none of {num_patches} patches visible; lower it")
    noise = torch.rand(batch, num_patches, generator=generator, device=generator.device if generator else device)
    noise = noise.to(device)
    shuffle = noise.argsort(dim=1)
    return shuffle[:, :num_keep], shuffle.argsort(dim=1)


def removed_mask(restore: torch.Tensor, num_keep: int) -> torch.Tensor:
    """(B, num_patches) in patch order, 1 where ``random_keep`` left the patch out (masked), 0 where it kept it."""
    return (restore >= num_keep).to(torch.uint8)


def unshuffle(tokens: torch.Tensor, restore: torch.Tensor) -> torch.Tensor:
    """Tokens (B, L, C) in the shuffled order of ``random_keep`` (kept first) back in patch order."""
    return tokens.gather(1, restore.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))


class MaskedViews(CropViews):
    """SimMIM's view (docs/methods/simmim.md): one random resized crop (area 0.67-1, aspect 3/4-4/3), flip and
    normalisation of each image, and a random mask from ``MaskGenerator``.

    Output ``{"images": float (B, C, size, size), "mask": uint8 (B, h, w)}`` with (h, w) the model's patch grid
    (size / model_patch_size), 1 = masked. ``model_patch_size`` must be the backbone's patch size (SimMIM
    checks); ``mask_patch_size`` is independent of it but a multiple of it. For MNIST digits use ``flip_p: 0``
    and MNIST's mean/std.
    """

    kind = "masked"
    key = "images"

    def __init__(
        self,
        size: int = 192,
        mask_patch_size: int = 32,
        model_patch_size: int = 4,
        mask_ratio: float = 0.6,
        scale: tuple[float, float] = (0.67, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        super().__init__(size, scale, ratio, flip_p, mean, std)
        self.masks = MaskGenerator(size, mask_patch_size, model_patch_size, mask_ratio)

    def batch(self, images: torch.Tensor) -> dict[str, Any]:
        return {"images": self.crops(images), "mask": self.masks.batch(len(images))}

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        out = super().from_crops(crops, on_device)
        return {**out, "mask": self.masks.batch(len(out["images"])).to(out["images"].device)}
