"""View recipes: what one decoded image (uint8, C x H x W) becomes for a method.

Each recipe has a ``kind`` naming what it produces; each method names the kinds it accepts, so a method
paired with the wrong recipe fails at start-up with a message naming both.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch.utils.data import default_collate
from torchvision.transforms import v2

from selfsup.data.batch_augment import (
    colour_jitter,
    gaussian_blur,
    normalize,
    random_crop_boxes,
    random_grayscale,
    random_hflip,
    resized_crops,
)
from selfsup.data.colour import ColourAugment
from selfsup.data.crops import CropSpec
from selfsup.errors import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ViewRecipe:
    """Base class: ``recipe(image) -> dict`` of tensors for one sample."""

    kind: ClassVar[str]
    media: ClassVar[str] = "image"  # what the recipe is made from: "image" or "video" (a whole decoded clip)
    mean: tuple[float, ...] | None = None  # per-channel normalisation of the views (None: [0, 1] floats)
    std: tuple[float, ...] | None = None

    def _set_normalization(self, mean: Sequence[float] | None, std: Sequence[float] | None) -> None:
        """Keep ``mean``/``std`` (both or neither) for ``_normalize`` and ``normalization``."""
        if (mean is None) != (std is None):
            raise ConfigError(f"{type(self).__name__}: set both mean and std, or neither")
        self.mean, self.std = (tuple(mean), tuple(std)) if mean is not None else (None, None)

    def _normalize(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` normalised with the recipe's mean/std, or unchanged without them."""
        return normalize(x, self.mean, self.std) if self.mean is not None else x

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        """(mean, std) the views are normalised with, which evaluation images then get too; None: [0, 1]."""
        return (self.mean, self.std) if self.mean is not None else None

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def batch(self, images: torch.Tensor) -> dict[str, Any]:
        """The views of a batch of same-sized uint8 images (B, C, H, W), collated. Recipes override this
        with batched tensor operations where those are faster."""
        return default_collate([self(image) for image in images])

    @property
    def crop_specs(self) -> list[CropSpec] | None:
        """The crop of each view, cut while decoding (`selfsup.data.crops`); None: views are made from whole
        decoded images (``__call__``/``batch``)."""
        return None

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        """The views of a batch from its fused decode + crop (`selfsup.data.crops.collate_crops`): the colour
        part with OpenCV in loader workers, or with torch on the crops' device (``on_device``)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items() if k[0] != '_')})"


def _blur_kernel(size: int) -> int:
    """SimCLR's blur kernel: odd, about 10% of the image side."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


class SimCLRViews(ViewRecipe):
    """Two independently augmented views of each image (SimCLR; CVRL's image analogue).

    Defaults are SimCLR's ImageNet recipe. For MNIST digits use ``flip_p: 0`` (a flipped digit is another
    symbol) and no blur (see experiments/simclr/mnist5k.yaml). ``batched`` (default) cuts each view's crop while
    decoding (`selfsup.data.crops`) and does the rest on the batch of fixed-size crops (`selfsup.data.colour`),
    whatever the sizes of the source images; off, every view goes through torchvision's per-image transforms.
    """

    kind = "pair"

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_strength: float = 1.0,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        batched: bool = True,
    ) -> None:
        self.batched = batched
        self.size, self.scale, self.ratio, self.flip_p = size, tuple(scale), tuple(ratio), flip_p
        self.jitter_strength, self.jitter_p = jitter_strength, jitter_p
        self.grayscale_p, self.blur_p = grayscale_p, blur_p
        self._augment = self._per_image_pipeline()
        s = jitter_strength if jitter_p > 0 else 0.0
        self._colour = ColourAugment((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), jitter_p, grayscale_p,
                                     _blur_kernel(size) if blur_p > 0 else 0, blur_p)

    @property
    def crop_spec(self) -> CropSpec:
        """The crop of one view."""
        return CropSpec(self.size, self.scale, self.ratio, self.flip_p)

    @property
    def crop_specs(self) -> list[CropSpec] | None:
        return [self.crop_spec] * 2 if self.batched else None

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        return {"views": [self._colour.views(v, on_device, None) for v in crops["views"]]}

    def _per_image_pipeline(self) -> v2.Compose:
        """SimCLR's augmentation of one view with torchvision (docs/methods/simclr.md), float in [0, 1].

        Crop (bicubic) -> flip -> colour jitter (random order, strength s: brightness/contrast/saturation 0.8s,
        hue 0.2s) with p=jitter_p -> grayscale -> Gaussian blur (sigma U(0.1, 2), kernel 10% of the side).
        On 1-channel images saturation, hue and grayscale have no effect.
        """
        s = self.jitter_strength
        steps: list[v2.Transform] = [
            v2.RandomResizedCrop(self.size, scale=self.scale, ratio=self.ratio,
                                 interpolation=v2.InterpolationMode.BICUBIC, antialias=True),
            v2.ToDtype(torch.float32, scale=True),
        ]
        if self.flip_p > 0:
            steps.append(v2.RandomHorizontalFlip(self.flip_p))
        if self.jitter_p > 0 and s > 0:
            steps.append(v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=self.jitter_p))
        if self.grayscale_p > 0:
            steps.append(v2.RandomGrayscale(self.grayscale_p))
        if self.blur_p > 0:
            steps.append(v2.RandomApply([v2.GaussianBlur(_blur_kernel(self.size), sigma=(0.1, 2.0))],
                                        p=self.blur_p))
        return v2.Compose(steps)

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        return {"views": [self.view(image), self.view(image)]}

    def batch(self, images: torch.Tensor) -> dict[str, Any]:
        return {"views": [self.view_batch(images), self.view_batch(images)]}

    def view(self, image: torch.Tensor) -> torch.Tensor:
        """One augmented view of one uint8 image (C, H, W), float in [0, 1], with torchvision."""
        return self._augment(image)

    def view_batch(self, images: torch.Tensor) -> torch.Tensor:
        """One augmented view of each uint8 image of a batch (B, C, H, W): batched ops, or image by image
        when ``batched`` is off."""
        if not self.batched:
            return torch.stack([self._augment(image) for image in images])
        b, _, h, w = images.shape
        boxes = random_crop_boxes(b, h, w, self.scale, self.ratio, device=images.device)
        x = resized_crops(images.float().div_(255), boxes, self.size)
        x = random_hflip(x, self.flip_p)
        s = self.jitter_strength
        if self.jitter_p > 0 and s > 0:
            x = colour_jitter(x, torch.tensor([0.8 * s] * 3), self.jitter_p, 0.2 * s)
        x = random_grayscale(x, self.grayscale_p)
        if self.blur_p > 0:
            x = gaussian_blur(x, _blur_kernel(self.size), (0.1, 2.0), self.blur_p)
        return x


SWAV_MEAN, SWAV_STD = (0.485, 0.456, 0.406), (0.228, 0.224, 0.225)


class MultiCropViews(ViewRecipe):
    """SwAV's multi-crop: ``counts[i]`` crops of side ``sizes[i]`` with area fraction in ``scales[i]``
    (docs/methods/swav.md), each crop flipped, colour-jittered, grayed and blurred as a SimCLR view, then normalised.

    Output ``{"views": [V tensors]}``, crops of one size next to each other in the order of ``sizes`` (so the
    method can send each size through the backbone in one forward); the first group holds the large crops the
    codes are computed on. Defaults: the paper's 2 x 224 (0.14, 1) + 6 x 96 (0.05, 0.14). ``mean``/``std``
    (None: no normalisation) also apply to the evaluation images.
    """

    kind = "multicrop"

    def __init__(
        self,
        sizes: Sequence[int] = (224, 96),
        counts: Sequence[int] = (2, 6),
        scales: Sequence[tuple[float, float]] = ((0.14, 1.0), (0.05, 0.14)),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        jitter_strength: float = 1.0,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: float = 0.5,
        mean: Sequence[float] | None = SWAV_MEAN,
        std: Sequence[float] | None = SWAV_STD,
        batched: bool = True,
    ) -> None:
        if not len(sizes) == len(counts) == len(scales) or min(counts, default=0) < 1 or sum(counts) < 2:
            raise ConfigError(
                f"MultiCropViews needs one count (>= 1) and one scale per size and at least 2 crops; got "
                f"sizes={list(sizes)}, counts={list(counts)}, scales={[list(s) for s in scales]}"
            )
        self._set_normalization(mean, std)
        self.sizes, self.counts, self.scales = list(sizes), list(counts), [tuple(s) for s in scales]
        self._crops = [
            SimCLRViews(size, scale, ratio, flip_p, jitter_strength, jitter_p, grayscale_p, blur_p, batched)
            for size, scale in zip(self.sizes, self.scales)
        ]

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        return {"views": [self._normalize(crop.view(image))
                          for crop, count in zip(self._crops, self.counts) for _ in range(count)]}

    @property
    def crop_specs(self) -> list[CropSpec] | None:
        if not self._crops[0].batched:
            return None
        return [crop.crop_spec for crop, count in zip(self._crops, self.counts) for _ in range(count)]

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        recipes = [crop for crop, count in zip(self._crops, self.counts) for _ in range(count)]
        return {"views": [crop._colour.views(v, on_device, self.normalization)
                          for crop, v in zip(recipes, crops["views"])]}

    def batch(self, images: torch.Tensor) -> dict[str, Any]:
        return {"views": [self._normalize(crop.view_batch(images))
                          for crop, count in zip(self._crops, self.counts) for _ in range(count)]}


def rotate_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All four rotations of a batch of square images (B, C, S, S), for RotNet.

    Returns ``(x4, labels)``: x4 is (4B, C, S, S) in image-major order ``[x0 rotated 0, 90, 180, 270, x1 rotated
    0, ...]`` (counter-clockwise, ``torch.rot90(x, k, dims=(-2, -1))``) and labels are ``[0, 1, 2, 3, 0, ...]``,
    the rotation k of each row. Four batched ``rot90`` calls, no loop over images; on x's device.
    """
    if x.shape[-1] != x.shape[-2]:
        raise ValueError(f"rotating by 90 degrees needs square images, got {x.shape[-2]}x{x.shape[-1]}")
    x4 = torch.stack([torch.rot90(x, k, dims=(-2, -1)) for k in range(4)], dim=1)  # (B, 4, C, S, S)
    labels = torch.arange(4, device=x.device).repeat(len(x))
    return x4.flatten(0, 1), labels


def crop_flip(images: torch.Tensor, size: int, scale: tuple[float, float], ratio: tuple[float, float],
              flip_p: float) -> torch.Tensor:
    """A random resized crop (area fraction ``scale``, aspect ``ratio``) and flip of each uint8 image (B, C, H, W),
    as float (B, C, size, size) in [0, 1]."""
    b, _, h, w = images.shape
    boxes = random_crop_boxes(b, h, w, scale, ratio, device=images.device)
    return random_hflip(resized_crops(images.float().div_(255), boxes, size).clamp_(0, 1), flip_p)


class CropViews(ViewRecipe):
    """One random resized crop and flip of each image, ``{"image": float (C, size, size)}``: the augmented
    training view of supervised heads (the linear probe's ImageNet recipe: SimCLR's crop + flip; fine-tuning).
    ``mean``/``std`` (None: [0, 1] pixels) normalise the crops, and the evaluation images too."""

    kind = "image"
    key: ClassVar[str] = "image"  # the name of the output

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        self._set_normalization(mean, std)
        self.size, self.scale, self.ratio, self.flip_p = size, tuple(scale), tuple(ratio), flip_p

    def crops(self, images: torch.Tensor) -> torch.Tensor:
        """The cropped, flipped (and normalised) float batch of uint8 images (B, C, H, W)."""
        return self._normalize(crop_flip(images, self.size, self.scale, self.ratio, self.flip_p))

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        return {k: v[0] for k, v in self.batch(image[None]).items()}

    def batch(self, images: torch.Tensor) -> dict[str, Any]:
        return {self.key: self.crops(images)}

    @property
    def crop_specs(self) -> list[CropSpec] | None:
        return [CropSpec(self.size, self.scale, self.ratio, self.flip_p)]

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        return {self.key: ColourAugment().views(crops["views"][0], on_device, self.normalization)}


class RotationViews(CropViews):
    """One random crop (and flip) of each image, for RotNet; the method makes the four rotations on the device.

    Output ``{"images": float (B, C, size, size) in [0, 1]}``: the data carries each image once, and
    ``rotate_batch`` turns it into 4B rotated copies next to the model. ``scale`` is the crop's area fraction,
    ``ratio`` its aspect range. For MNIST digits use ``flip_p: 0`` (a mirrored digit is another symbol).
    """

    kind = "rotations"
    key = "images"

    def __init__(
        self,
        size: int = 224,
        scale: tuple[float, float] = (0.6, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
    ) -> None:
        super().__init__(size, scale, ratio, flip_p)


class DecodedImages(ViewRecipe):
    """The decoded uint8 images as they are, ``{"decoded": (B, C, H, W)}``: what loader workers send when the
    method's views are made on the device (``SSLDataModule(augment_on="device")``), so decoding is their only
    work and the copy to the GPU carries uint8 images instead of float views."""

    kind = "decoded"

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        raise ConfigError(
            "data.augment_on: device needs decoded images of one size in every batch, and these differ; write "
            "shards of one image size, or set data.augment_on: workers"
        )

    def batch(self, images: torch.Tensor) -> dict[str, Any]:
        return {"decoded": images}


class WorkerCrops(ViewRecipe):
    """The uint8 crops of another recipe's views, cut and flipped while decoding, ``{"crops": ...}``: what loader
    workers send when the views are finished on the device (``SSLDataModule(augment_on="device")``), whatever
    the sizes of the source images; ``views.from_crops(crops, on_device=True)`` finishes them there."""

    kind = "crops"

    def __init__(self, views: ViewRecipe) -> None:
        self.views = views

    @property
    def crop_specs(self) -> list[CropSpec] | None:
        return self.views.crop_specs

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        return {"crops": crops}


class EvalView(ViewRecipe):
    """The un-augmented view used by evaluation: resize the short side, centre-crop to ``size``, [0, 1] floats.

    ``resize`` defaults to ``size`` (no margin); ImageNet evaluation uses ``resize = size / 0.875``.
    ``normalization``: (mean, std) of the training views, applied last (None: none).
    """

    kind = "image"

    def __init__(self, size: int = 224, resize: int | None = None,
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        self.size, self.resize = size, resize or size
        self._set_normalization(*(normalization or (None, None)))
        self._transform = v2.Compose([
            v2.Resize(self.resize, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
        ])

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        if image.shape[-1] == image.shape[-2] == self.size == self.resize:
            x = image.to(torch.float32).div_(255)
        else:
            x = self._transform(image)
        return {"image": self._normalize(x)}

    def mask(self, mask: torch.Tensor) -> torch.Tensor:
        """A segmentation mask (H, W) resized (nearest) and centre-cropped as its image is."""
        if mask.shape[-1] == mask.shape[-2] == self.size == self.resize:
            return mask
        mask = v2.functional.resize(mask[None], self.resize, interpolation=v2.InterpolationMode.NEAREST_EXACT)
        return v2.functional.center_crop(mask, self.size)[0]

