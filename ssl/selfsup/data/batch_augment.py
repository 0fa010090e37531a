"""SimCLR's augmentation applied to a whole batch at once (same distributions as `SimCLRViews` per image).

Per-image torchvision transforms cost ~0.35 ms per small image, mostly dispatch overhead; on 28 px digits that
is as much as the backbone step. Here each operation runs once per batch with per-image random parameters.
Differences from the per-image path: the crop is resampled with RoIAlign (bilinear; when shrinking, it averages
ceil(crop/size)^2 samples per output pixel, an antialias) instead of bicubic. Every function works on the
batch's device (random draws there too), so the same code augments in loader workers or on the GPU
(``SSLDataModule(augment_on="device")``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torchvision.ops import roi_align
from torchvision.transforms.v2.functional._color import _hsv_to_rgb, _rgb_to_hsv  # batched; pinned torchvision


def random_crop_boxes(
    batch: int, height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
    tries: int = 10, device: torch.device | str = "cpu",
) -> torch.Tensor:
    """RandomResizedCrop's box sampling for ``batch`` images: (batch, 4) as x0, y0, x1, y1 in pixels.

    Area fraction ~ U(scale), log aspect ~ U(log ratio); the first of ``tries`` draws that fits is used,
    else the centre crop with the aspect clamped to ``ratio`` (torchvision's fallback). Drawn on ``device``.
    """
    area = height * width
    target = area * torch.empty(batch, tries, device=device).uniform_(*scale)
    aspect = torch.exp(torch.empty(batch, tries, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1])))
    w = torch.sqrt(target * aspect).round()
    h = torch.sqrt(target / aspect).round()
    fits = (w > 0) & (h > 0) & (w <= width) & (h <= height)
    first = fits.float().argmax(dim=1)
    w, h = w.gather(1, first[:, None])[:, 0], h.gather(1, first[:, None])[:, 0]
    fallback = ~fits.any(dim=1)  # selected without reading it on the host: no sync on a GPU
    fallback_w, fallback_h = _fallback_size(height, width, ratio)
    w, h = torch.where(fallback, fallback_w, w), torch.where(fallback, fallback_h, h)
    y0 = torch.floor(torch.rand(batch, device=device) * (height - h + 1))
    x0 = torch.floor(torch.rand(batch, device=device) * (width - w + 1))
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def _fallback_size(height: int, width: int, ratio: tuple[float, float]) -> tuple[float, float]:
    """The whole image, its aspect clamped to ``ratio`` (torchvision's RandomResizedCrop fallback)."""
    aspect = width / height
    if aspect < ratio[0]:
        return float(width), float(round(width / ratio[0]))
    if aspect > ratio[1]:
        return float(round(height * ratio[1])), float(height)
    return float(width), float(height)


def resized_crops(images: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
    """Crop each image to its box and resize to ``size`` x ``size`` (float in, float out)."""
    boxes = boxes.to(device=images.device, dtype=images.dtype)
    rois = torch.cat([torch.arange(len(images), dtype=boxes.dtype, device=images.device)[:, None], boxes], dim=1)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)


def random_hflip(x: torch.Tensor, p: float) -> torch.Tensor:
    """Mirror each image of a (B, C, H, W) batch left-right with probability ``p``."""
    if p <= 0:
        return x
    return hflip_where(x, torch.rand(len(x), device=x.device) < p)


def hflip_where(x: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Mirror left-right the images of a (B, C, H, W) batch where the boolean ``flip`` (B,) is set."""
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def random_solarize(x: torch.Tensor, p: float, threshold: float = 0.5) -> torch.Tensor:
    """Solarize each image of a batch in [0, 1] with probability ``p``: values >= ``threshold`` become 1 - value
    (PIL's ``ImageOps.solarize`` at 128 of 255)."""
    if p <= 0:
        return x
    return solarize_where(x, torch.rand(len(x), device=x.device) < p, threshold)


def solarize_where(x: torch.Tensor, apply: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Solarize the images of a batch where the boolean ``apply`` (B,) is set."""
    return torch.where(apply[:, None, None, None] & (x >= threshold), 1 - x, x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """Luma (B, 1, H, W) of an RGB batch with torchvision's weights; a 1-channel batch as it is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (0.2989 * r + 0.587 * g + 0.114 * b).unsqueeze(1)


def random_grayscale(x: torch.Tensor, p: float) -> torch.Tensor:
    """Turn each RGB image of a batch gray (luma in all 3 channels) with probability ``p``; 1-channel: as is."""
    if p <= 0 or x.shape[1] != 3:
        return x
    return grayscale_where(x, torch.rand(len(x), device=x.device) < p)


def grayscale_where(x: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Turn the RGB images of a batch gray where the boolean ``apply`` (B,) is set; 1-channel: as is."""
    if x.shape[1] != 3:
        return x
    return torch.where(apply[:, None, None, None], _gray(x).expand_as(x), x)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    return (factor * x + (1 - factor) * other).clamp_(0, 1)


def _brightness(x: torch.Tensor, f: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    return (x * f).clamp_(0, 1)


def _brightness_added(x: torch.Tensor, f: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """BYOL's brightness: ``f - 1`` (the same U[-s, s] draw) added to every channel."""
    return (x + (f - 1)).clamp_(0, 1)


def _contrast(x: torch.Tensor, f: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), f)


def _saturation(x: torch.Tensor, f: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    return _blend(x, _gray(x), f)


def _hue(x: torch.Tensor, f: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """torchvision's adjust_hue (HSV round trip) with one hue shift per image."""
    h, s, v = _rgb_to_hsv(x).unbind(1)
    return _hsv_to_rgb(torch.stack([(h + hue).remainder_(1.0), s, v], dim=1))


_JITTER = (_brightness, _contrast, _saturation, _hue)  # factor column: 0, 1, 2, (2: unused)


def colour_jitter(x: torch.Tensor, strength: torch.Tensor, p: float, hue: float, subset: bool | None = None,
                  additive_brightness: bool = False) -> torch.Tensor:
    """ColorJitter with per-image factors and a per-image random order, applied with probability ``p``.

    ``strength`` holds the (brightness, contrast, saturation) spreads: factors ~ U[1-s, 1+s]; hue ~ U[-hue, hue].
    Saturation and hue need RGB. ``subset``, ``additive_brightness``: see ``colour_jitter_with``.
    """
    return colour_jitter_with(x, *jitter_params(len(x), strength, p, hue, x.device), subset=subset,
                              additive_brightness=additive_brightness)


def jitter_params(b: int, strength: torch.Tensor, p: float, hue: float, device: torch.device | None = None
                  ) -> tuple[torch.Tensor, ...]:
    """Random parameters of ``colour_jitter`` for ``b`` images, drawn on ``device``: (apply (b,), factors (b, 3),
    hues (b,), order (b, 4))."""
    apply = torch.rand(b, device=device) < p
    factors = 1 + (torch.rand(b, 3, device=device) * 2 - 1) * strength.to(device)
    hues = (torch.rand(b, device=device) * 2 - 1) * hue
    order = torch.argsort(torch.rand(b, 4, device=device), dim=1)
    return apply, factors, hues, order


def colour_jitter_with(x: torch.Tensor, apply: torch.Tensor, factors: torch.Tensor, hues: torch.Tensor,
                       order: torch.Tensor, subset: bool | None = None, additive_brightness: bool = False
                       ) -> torch.Tensor:
    """Colour jitter with given per-image parameters (see ``jitter_params``); each operation clips to [0, 1].
    ``additive_brightness``: brightness adds ``factor - 1`` (BYOL's) instead of multiplying by the factor.

    ``subset`` (default: on the CPU) runs each operation once per slot on just the images that drew it there;
    otherwise on every image, then a select, which is what a GPU wants (finding the subset reads the device on
    the host). Both give the same images.
    """
    subset = x.device.type == "cpu" if subset is None else subset
    x = x.clone()
    ops = (_brightness_added, *_JITTER[1:]) if additive_brightness else _JITTER
    for slot in range(4):
        for op, adjust in enumerate(ops):
            if op >= 2 and x.shape[1] != 3:
                continue
            chosen = apply & (order[:, slot] == op)
            f = factors[:, min(op, 2), None, None, None]
            if not subset:
                x = torch.where(chosen[:, None, None, None], adjust(x, f, hues[:, None, None]), x)
                continue
            idx = chosen.nonzero()[:, 0]
            if len(idx):
                x[idx] = adjust(x[idx], f[idx], hues[idx, None, None])
    return x


def gaussian_blur(x: torch.Tensor, kernel: int, sigma: tuple[float, float], p: float) -> torch.Tensor:
    """Per-image Gaussian blur (sigma ~ U(sigma)) with probability ``p``; reflect padding as torchvision."""
    apply = torch.rand(len(x), device=x.device) < p
    if x.device.type == "cpu" and not apply.any():  # the shortcut reads the device: CPU only
        return x
    return gaussian_blur_with(x, kernel, torch.empty(len(x), device=x.device).uniform_(*sigma), apply)


def gaussian_blur_with(x: torch.Tensor, kernel: int, sig: torch.Tensor, apply: torch.Tensor) -> torch.Tensor:
    """Gaussian blur of width ``sig`` (B,) where the boolean ``apply`` (B,) is set; reflect padding."""
    b, c, h, w = x.shape
    t = torch.arange(kernel, dtype=x.dtype, device=x.device) - (kernel - 1) / 2
    k = torch.exp(-0.5 * (t[None] / sig[:, None]) ** 2)
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (b*c, kernel)
    flat = F.pad(x.reshape(1, b * c, h, w), [kernel // 2] * 4, mode="reflect")
    flat = F.conv2d(flat, k[:, None, None, :], groups=b * c)
    flat = F.conv2d(flat, k[:, None, :, None], groups=b * c)
    return torch.where(apply[:, None, None, None], flat.reshape(b, c, h, w), x)


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of an image (C, H, W) or a batch (B, C, H, W).

    Statistics of 3 channels on a 1-channel image: their averages (e.g. ImageNet's for grayscale digits).
    """
    channels = x.shape[-3]
    m, s = torch.tensor(mean, dtype=x.dtype, device=x.device), torch.tensor(std, dtype=x.dtype, device=x.device)
    if len(m) != channels:
        if channels != 1:
            raise ValueError(f"{len(m)} normalisation means for {channels}-channel images")
        m, s = m.mean(0, keepdim=True), s.mean(0, keepdim=True)
    return (x - m[:, None, None]) / s[:, None, None]
