"""The masks of masked-image methods, at model-patch resolution: SimMIM's random mask patches
(docs/methods/simmim.md), MAE's per-sample random choice of the patches an encoder keeps (docs/methods/mae.md) and
iBOT's blockwise masks (docs/methods/ibot.md)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any

import torch

from selfsup.data.dino_views import DINOViews
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
class BlockMaskGenerator:
    """iBOT's blockwise masks (BEiT's blocks) of an (h, w) patch grid, 1 = masked.

    Each mask draws its ratio r uniformly from the choices ``ratio[i] +- ratio_var[i]`` (a choice with var 0 is
    exactly ``ratio[i]``); the default, iBOT's recipe (ratio 0 0.3, var 0 0.2), leaves half the images unmasked
    and masks the other half at U(0.1, 0.5). Rectangles are then added until r x h x w patches are masked: area
    U(min_area, remaining), aspect log-uniform in ``aspect``, random position, kept when it masks between 1 and
    ``remaining`` new patches; up to 10 tries per rectangle, stopping when none is kept. ``min_area`` None:
    (min(h, w) // 3)^2, 16 on ViT-S/16's 14 x 14 grid.
    """

    tries = 10

    def __init__(self, grid: int | Sequence[int], ratio: Sequence[float] = (0.0, 0.3),
                 ratio_var: Sequence[float] = (0.0, 0.2), aspect: Sequence[float] = (0.3, 1 / 0.3),
                 min_area: int | None = None) -> None:
        self.grid = (grid, grid) if isinstance(grid, int) else tuple(grid)
        self.ratio, self.ratio_var, self.aspect = list(ratio), list(ratio_var), tuple(aspect)
        if len(self.ratio) != len(self.ratio_var) or not self.ratio:
            raise ConfigError(f"give one mask ratio_var per mask ratio, got ratio={self.ratio}, "
                              f"ratio_var={self.ratio_var}")
        if any(not 0 <= m - v <= m + v < 1 for m, v in zip(self.ratio, self.ratio_var)):
            raise ConfigError(f"each mask ratio +- its ratio_var must lie in [0, 1), got ratio={self.ratio}, "
                              f"ratio_var={self.ratio_var}")
        if not 0 < self.aspect[0] <= self.aspect[1]:
            raise ConfigError(f"mask aspect must be a range (low, high) with 0 < low <= high, got {list(self.aspect)}")
        self.min_area = (min(self.grid) // 3) ** 2 if min_area is None else min_area

    def draw_ratio(self, rng: random.Random) -> float:
        """One mask's ratio: a uniform choice among ``ratio[i] +- ratio_var[i]``."""
        ratios = [rng.uniform(m - v, m + v) if v > 0 else m for m, v in zip(self.ratio, self.ratio_var)]
        return rng.choice(ratios)

    def block_mask(self, ratio: float, rng: random.Random) -> torch.Tensor:
        """One (h, w) bool mask of rectangles covering at most ``ratio`` x h x w patches."""
        h, w = self.grid
        mask = torch.zeros(h, w, dtype=torch.bool)
        target, count = ratio * h * w, 0
        log_aspect = (math.log(self.aspect[0]), math.log(self.aspect[1]))
        while count < target:
            remaining, added = target - count, 0
            for _ in range(self.tries):
                area, aspect = rng.uniform(self.min_area, remaining), math.exp(rng.uniform(*log_aspect))
                bh, bw = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
                if bh >= h or bw >= w:
                    continue
                top, left = rng.randint(0, h - bh), rng.randint(0, w - bw)
                block = mask[top : top + bh, left : left + bw]
                new = bh * bw - int(block.sum())
                if 0 < new <= remaining:
                    block.fill_(True)
                    added = new
                    break
            if not added:
                break
            count += added
        return mask

    def batch(self, batch: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, h, w) uint8 masks, each with its own ratio; reproducible from ``generator`` (None: torch's
        global generator, seeded per loader worker)."""
        rng = random.Random(int(torch.randint(2**62, (1,), generator=generator)))
        return torch.stack([self.block_mask(self.draw_ratio(rng), rng) for _ in range(batch)]).to(torch.uint8)

    def __repr__(self) -> str:
        return (f"BlockMaskGenerator(grid={self.grid}, ratio={self.ratio}, ratio_var={self.ratio_var}, "
                f"aspect={list(self.aspect)}, min_area={self.min_area})")


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


class iBOTViews(DINOViews):
    """DINO's multi-crop views (``DINOViews``) with a blockwise mask (``BlockMaskGenerator``) of each global crop
    for the student: ``{"views": [g1, g2, l1, ..., ln], "masks": [(B, h, w), (B, h, w)]}`` uint8, 1 = masked,
    (h, w) = the global crops' patch grid (``global_size / model_patch_size``; the backbone's patch size).
    Masks are drawn with the views, in the loader workers or on the device. ``mask_ratio``/``mask_ratio_var``
    (iBOT's pred_ratio, pred_ratio_var): each mask's ratio is a uniform choice among ``mask_ratio[i] +-
    mask_ratio_var[i]``; the default leaves half the images unmasked. ``mask_aspect``: the blocks' height/width
    range. The rest: ``DINOViews``'s options.
    """

    kind = "masked_multicrop"

    def __init__(self, model_patch_size: int = 16, mask_ratio: Sequence[float] = (0.0, 0.3),
                 mask_ratio_var: Sequence[float] = (0.0, 0.2), mask_aspect: Sequence[float] = (0.3, 1 / 0.3),
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.global_size % model_patch_size:
            raise ConfigError(f"iBOTViews: global crops of {self.global_size} px do not split into whole "
                              f"{model_patch_size} px patches; make global_size a multiple of model_patch_size")
        self.model_patch_size = model_patch_size
        self.masks = BlockMaskGenerator(self.global_size // model_patch_size, mask_ratio, mask_ratio_var,
                                        mask_aspect)

    def with_masks(self, views: dict[str, Any]) -> dict[str, Any]:
        """``views`` with a mask of each global crop (on the crops' device)."""
        first = views["views"][0]
        return {**views, "masks": [self.masks.batch(len(first)).to(first.device) for _ in range(2)]}

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        return {key: [v[0] for v in values] for key, values in self.batch(image[None]).items()}

    def batch(self, images: torch.Tensor) -> dict[str, Any]:
        return self.with_masks(super().batch(images))

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        return self.with_masks(super().from_crops(crops, on_device))
