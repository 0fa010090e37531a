"""DINO's multi-crop views: two global crops and N small local crops, each with its own blur and solarize."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from selfsup.data.batch_augment import hflip_where, random_crop_boxes, resized_crops
from selfsup.data.colour import ColourAugment
from selfsup.data.crops import CropSpec
from selfsup.data.views import IMAGENET_MEAN, IMAGENET_STD, ViewRecipe, _blur_kernel
from selfsup.errors import ConfigError


class DINOViews(ViewRecipe):
    """``{"views": [g1, g2, l1, ..., ln]}``: 2 global crops of side ``global_size`` (area ``global_scale``) and
    ``num_local`` local crops of side ``local_size`` (area ``local_scale``), each flipped and colour-jittered
    (``jitter`` with p ``jitter_p``, grayscale p ``grayscale_p``, in random order), then blurred with p
    ``blur_p`` = (first global, second global, locals) = (1.0, 0.1, 0.5) and solarized with p ``solarize_p``
    (0, 0.2, 0), then normalised. Globals come first and each size's crops are next to each other, so a method
    sends each size through its backbone in one forward. Defaults: DINO's ImageNet recipe (224 / 96 px,
    (0.4, 1) / (0.05, 0.4), 8 locals)."""

    kind = "multicrop"

    def __init__(
        self,
        global_size: int = 224,
        local_size: int = 96,
        num_local: int = 8,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1),
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5),
        solarize_p: tuple[float, float, float] = (0.0, 0.2, 0.0),
        mean: Sequence[float] | None = IMAGENET_MEAN,
        std: Sequence[float] | None = IMAGENET_STD,
    ) -> None:
        if len(blur_p) != 3 or len(solarize_p) != 3 or len(jitter) != 4 or num_local < 0:
            raise ConfigError(f"DINOViews needs three blur_p and three solarize_p (first global, second global, "
                              f"locals), four jitter strengths and num_local >= 0; got blur_p={list(blur_p)}, "
                              f"solarize_p={list(solarize_p)}, jitter={list(jitter)}, num_local={num_local}")
        self._set_normalization(mean, std)
        self.global_size, self.local_size, self.num_local = global_size, local_size, num_local
        self.global_scale, self.local_scale, self.ratio = tuple(global_scale), tuple(local_scale), tuple(ratio)
        self.flip_p, self.jitter, self.jitter_p, self.grayscale_p = flip_p, tuple(jitter), jitter_p, grayscale_p
        self.blur_p, self.solarize_p = tuple(blur_p), tuple(solarize_p)
        kinds = [0, 1] + [2] * num_local  # which (first global, second global, local) setting each crop takes
        self._specs = [CropSpec(global_size if k < 2 else local_size, self.global_scale if k < 2 else
                                self.local_scale, self.ratio, flip_p) for k in kinds]
        self._colour = [ColourAugment(self.jitter if jitter_p > 0 else (0.0,) * 4, jitter_p, grayscale_p,
                                      _blur_kernel(spec.size) if blur_p[k] > 0 else 0, blur_p[k],
                                      solarize_p=solarize_p[k]) for k, spec in zip(kinds, self._specs)]

    @property
    def sizes(self) -> list[int]:
        """The side of every crop, in order."""
        return [spec.size for spec in self._specs]

    @property
    def crop_specs(self) -> list[CropSpec]:
        return list(self._specs)

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        return {"views": [colour.views(v, on_device, self.normalization)
                          for colour, v in zip(self._colour, crops["views"])]}

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        return {"views": [v[0] for v in self.batch(image[None])["views"]]}

    def batch(self, images: torch.Tensor) -> dict[str, Any]:
        b, _, h, w = images.shape
        x, views = images.float().div(255), []
        for spec, colour in zip(self._specs, self._colour):
            boxes = random_crop_boxes(b, h, w, spec.scale, spec.ratio, device=images.device)
            crop = hflip_where(resized_crops(x, boxes, spec.size).clamp_(0, 1),
                               torch.rand(b, device=images.device) < spec.flip_p)
            views.append(self._normalize(colour.on_tensors(crop, colour.draw(b, images.device))))
        return {"views": views}
