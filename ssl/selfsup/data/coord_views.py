"""PixPro's coordinate-aware views: two augmented views of each image, each with its crop box in the original."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from selfsup.data.batch_augment import (
    colour_jitter,
    gaussian_blur,
    hflip_where,
    random_crop_boxes,
    random_grayscale,
    random_solarize,
    resized_crops,
)
from selfsup.data.colour import ColourAugment
from selfsup.data.crops import CropSpec
from selfsup.data.views import IMAGENET_MEAN, IMAGENET_STD, ViewRecipe, _blur_kernel
from selfsup.errors import ConfigError


def normalized_boxes(boxes: torch.Tensor, height: int | torch.Tensor, width: int | torch.Tensor,
                     flipped: torch.Tensor) -> torch.Tensor:
    """Pixel crop boxes (B, 4) as x0, y0, x1, y1 (end exclusive) -> PixPro's coordinates in the original image,
    ``[x0/(W-1), y0/(H-1), (x1-1)/(W-1), (y1-1)/(H-1)]`` (first and last pixel centres, in [0, 1]); where the
    view was mirrored (``flipped``, (B,) bool) x0 and x1 are swapped, so the bin width turns negative. The
    image size is one for all or one per image ((B,) tensors)."""
    w, h = (torch.as_tensor(v, dtype=boxes.dtype, device=boxes.device) - 1 for v in (width, height))
    scale = torch.stack(torch.broadcast_tensors(w, h, w, h), dim=-1).clamp(min=1)
    coords = (boxes - boxes.new_tensor([0, 0, 1, 1])) / scale
    swapped = coords[:, [2, 1, 0, 3]]
    return torch.where(flipped[:, None], swapped, coords)


class CoordViews(ViewRecipe):
    """PixPro's two views, each with its crop box in the original image (docs/methods/pixpro.md).

    Each view: random resized crop (area ``scale``, aspect ``ratio``) and flip that both track coordinates,
    colour jitter (brightness, contrast, saturation, hue) = ``jitter`` with p ``jitter_p``, grayscale p
    ``grayscale_p``; then the asymmetric part: Gaussian blur (sigma U(0.1, 2), kernel 10% of the side) with p
    ``blur_p[i]`` (1.0 / 0.1) and solarize with p ``solarize_p[i]`` (0 / 0.2) for view i; then ``mean``/``std``
    (None: none; evaluation images get the same). Output ``{"views": [v1, v2], "boxes": [b1, b2]}`` with
    b_i (B, 4) = ``normalized_boxes``: [x0, y0, x1, y1] in [0, 1], x0 and x1 swapped where the view is mirrored.
    """

    kind = "coord"

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: tuple[float, float] = (1.0, 0.1),
        solarize_p: tuple[float, float] = (0.0, 0.2),
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        if len(blur_p) != 2 or len(solarize_p) != 2 or len(jitter) != 4:
            raise ConfigError(f"CoordViews needs two blur_p and two solarize_p (one per view) and four jitter "
                              f"strengths; got blur_p={list(blur_p)}, solarize_p={list(solarize_p)}, "
                              f"jitter={list(jitter)}")
        self._set_normalization(mean, std)
        self.size, self.scale, self.ratio, self.flip_p = size, tuple(scale), tuple(ratio), flip_p
        self.jitter, self.jitter_p, self.grayscale_p = tuple(jitter), jitter_p, grayscale_p
        self.blur_p, self.solarize_p = tuple(blur_p), tuple(solarize_p)
        strengths = self.jitter if jitter_p > 0 else (0.0,) * 4
        self._colour = [ColourAugment(strengths, jitter_p, grayscale_p, _blur_kernel(size) if blur_p[i] > 0 else 0,
                                      blur_p[i], solarize_p=solarize_p[i]) for i in range(2)]

    @property
    def crop_specs(self) -> list[CropSpec]:
        return [CropSpec(self.size, self.scale, self.ratio, self.flip_p)] * 2

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        h, w = crops["sizes"].unbind(1)
        return {
            "views": [c.views(v, on_device, self.normalization) for c, v in zip(self._colour, crops["views"])],
            "boxes": [normalized_boxes(crops["boxes"][:, i], h, w, crops["flips"][:, i]) for i in range(2)],
        }

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        out = self.batch(image[None])
        return {key: [t[0] for t in value] for key, value in out.items()}

    def batch(self, images: torch.Tensor) -> dict[str, Any]:
        views, boxes = zip(*(self.view_batch(images, i) for i in range(2)))
        return {"views": list(views), "boxes": list(boxes)}

    def view_batch(self, images: torch.Tensor, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """View ``index`` (0 or 1) of each uint8 image of a batch (B, C, H, W) and its normalised box (B, 4)."""
        b, _, h, w = images.shape
        pixels = random_crop_boxes(b, h, w, self.scale, self.ratio)
        x = resized_crops(images.float().div_(255), pixels, self.size).clamp_(0, 1)
        flipped = torch.rand(b) < self.flip_p
        x = hflip_where(x, flipped)
        if self.jitter_p > 0 and any(self.jitter):
            x = colour_jitter(x, torch.tensor(self.jitter[:3]), self.jitter_p, self.jitter[3])
        x = random_grayscale(x, self.grayscale_p)
        if self.blur_p[index] > 0:
            x = gaussian_blur(x, _blur_kernel(self.size), (0.1, 2.0), self.blur_p[index])
        x = random_solarize(x, self.solarize_p[index])
        return self._normalize(x), normalized_boxes(pixels, h, w, flipped)


class AsymmetricViews(CoordViews):
    """Two views that differ in blur and solarize: BYOL's recipe, which MoCo v3, Barlow Twins and VICReg use too.
    ``CoordViews``' augmentations and options (blur p 1.0 / 0.1, solarize p 0 / 0.2, jitter (0.4, 0.4, 0.2, 0.1)
    with p 0.8, grayscale 0.2, ImageNet normalisation) without the crop boxes: ``{"views": [v1, v2]}``, made in
    loader workers or, with ``augment_on: device``, on the device."""

    kind = "pair"

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        return {"views": super().from_crops(crops, on_device)["views"]}

    def batch(self, images: torch.Tensor) -> dict[str, Any]:
        return {"views": super().batch(images)["views"]}
