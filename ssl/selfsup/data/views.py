"""View recipes: what one decoded image (uint8, C x H x W) becomes for a method.

Each recipe has a ``kind`` naming what it produces; each method names the kinds it accepts, so a method
paired with the wrong recipe fails at start-up with a message naming both.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torchvision.transforms import v2


class ViewRecipe:
    """Base class: ``recipe(image) -> dict`` of tensors for one sample."""

    kind: ClassVar[str]

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in vars(self).items() if k[0] != '_')})"


def simclr_augment(
    size: int,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip_p: float = 0.5,
    jitter_strength: float = 1.0,
    jitter_p: float = 0.8,
    grayscale_p: float = 0.2,
    blur_p: float = 0.5,
) -> v2.Compose:
    """SimCLR's augmentation of one view (METHODS.md section 1), output float in [0, 1].

    Crop (bicubic) -> flip -> colour jitter (random order, strength s: brightness/contrast/saturation 0.8s,
    hue 0.2s) with p=jitter_p -> grayscale -> Gaussian blur (sigma U(0.1, 2), kernel 10% of the side).
    On 1-channel images saturation, hue and grayscale have no effect.
    """
    s = jitter_strength
    kernel = max(3, int(0.1 * size) // 2 * 2 + 1)  # odd, about 10% of the side
    steps: list[v2.Transform] = [
        v2.RandomResizedCrop(size, scale=scale, ratio=ratio, interpolation=v2.InterpolationMode.BICUBIC,
                             antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ]
    if flip_p > 0:
        steps.append(v2.RandomHorizontalFlip(flip_p))
    if jitter_p > 0 and s > 0:
        steps.append(v2.RandomApply([v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=jitter_p))
    if grayscale_p > 0:
        steps.append(v2.RandomGrayscale(grayscale_p))
    if blur_p > 0:
        steps.append(v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=blur_p))
    return v2.Compose(steps)


class SimCLRViews(ViewRecipe):
    """Two independently augmented views of each image (SimCLR; CVRL's image analogue).

    Defaults are SimCLR's ImageNet recipe. For MNIST digits use ``flip_p: 0`` (a flipped digit is another
    symbol), a milder crop scale and no blur (see experiments/simclr/mnist5k.yaml).
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
    ) -> None:
        self.size, self.scale, self.ratio, self.flip_p = size, tuple(scale), tuple(ratio), flip_p
        self.jitter_strength, self.jitter_p, self.grayscale_p, self.blur_p = jitter_strength, jitter_p, grayscale_p, blur_p
        self._augment = simclr_augment(size, self.scale, self.ratio, flip_p, jitter_strength, jitter_p,
                                       grayscale_p, blur_p)

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        return {"views": [self._augment(image), self._augment(image)]}


class EvalView(ViewRecipe):
    """The un-augmented view used by evaluation: resize the short side, centre-crop to ``size``, [0, 1] floats.

    ``resize`` defaults to ``size`` (no margin); ImageNet evaluation uses ``resize = size / 0.875``.
    """

    kind = "image"

    def __init__(self, size: int = 224, resize: int | None = None) -> None:
        self.size, self.resize = size, resize or size
        self._transform = v2.Compose([
            v2.Resize(self.resize, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
        ])

    def __call__(self, image: torch.Tensor) -> dict[str, Any]:
        if image.shape[-1] == image.shape[-2] == self.size == self.resize:
            return {"image": image.to(torch.float32).div_(255)}
        return {"image": self._transform(image)}
