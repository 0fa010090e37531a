"""Fused decode + crop: the crop boxes of all of an image's views are drawn from its header, the image is decoded
once (JPEGs with DCT scaling, at the smallest scale that still covers the largest crop at its output size), and
each view is cropped, resized and flipped in uint8. Views of one output size then stack into a batch, so every
later operation is batched whatever the sizes of the source images.

Boxes follow torchvision's ``RandomResizedCrop`` sampler exactly (area ~ U(scale), log aspect ~ U(log ratio), the
first of 10 draws that fits, else the centre crop with the aspect clamped); the box reported for a view is the
region its pixels come from, in the original image's pixels (PixPro's coordinates).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image

from selfsup.data.limits import Limits
from selfsup.data.members import decode_image, open_image, unreadable

cv2.setNumThreads(1)  # one loader worker = one core; OpenCV's own thread pool would oversubscribe


@dataclass(frozen=True)
class CropSpec:
    """One view's crop: output side ``size``, area fraction ``scale``, aspect ``ratio``, flip probability."""

    size: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_p: float = 0.0


def sample_box(height: int, width: int, scale: Sequence[float], ratio: Sequence[float], rng: random.Random
               ) -> tuple[int, int, int, int]:
    """``RandomResizedCrop.get_params`` with ``rng``: a box (x0, y0, x1, y1) in pixels, end exclusive."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            y0, x0 = rng.randint(0, height - h), rng.randint(0, width - w)
            return x0, y0, x0 + w, y0 + h
    aspect = width / height  # the fallback: the whole image, its aspect clamped to ratio, centred
    if aspect < min(ratio):
        w, h = width, round(width / min(ratio))
    elif aspect > max(ratio):
        w, h = round(height * max(ratio)), height
    else:
        w, h = width, height
    x0, y0 = (width - w) // 2, (height - h) // 2
    return x0, y0, x0 + w, y0 + h


@dataclass
class Cropped:
    """The views of one image: uint8 (size, size, C) arrays, their boxes in the original, flips, and its size."""

    views: list[np.ndarray]
    boxes: list[tuple[int, int, int, int]]
    flips: list[bool]
    height: int
    width: int


def decode_crops(data: bytes, channels: int, specs: Sequence[CropSpec], rng: random.Random,
                 limits: Limits | None = None) -> Cropped:
    """Decode ``data`` once and cut the views ``specs`` from it; BadSample if the image cannot be used or is over
    the pixel cap of ``limits`` (checked from the header, before decoding).

    JPEGs: boxes drawn from the header, then one decode at the scale the crops need. Other formats: decoded in
    full by the one image decoder (`selfsup.data.members.decode_image`), then cropped."""
    if data[:2] != b"\xff\xd8":  # not a JPEG
        pixels = decode_image(data, channels, limits).permute(1, 2, 0).numpy()
        height, width = pixels.shape[:2]
        boxes = [sample_box(height, width, s.scale, s.ratio, rng) for s in specs]
        flips = [rng.random() < s.flip_p for s in specs]
        return _cut(pixels, 1, specs, boxes, flips, height, width)
    with open_image(data, limits) as image:
        width, height = image.size
        boxes = [sample_box(height, width, s.scale, s.ratio, rng) for s in specs]
        flips = [rng.random() < s.flip_p for s in specs]
        try:
            pixels, reduction = _decode_jpeg(data, image, channels, specs, boxes)
        except Exception as err:  # Pillow raises many types for broken files (OSError, SyntaxError, ValueError ...)
            raise unreadable("image", err) from err
    return _cut(pixels, reduction, specs, boxes, flips, height, width)


def _cut(pixels: np.ndarray, reduction: int, specs: Sequence[CropSpec], boxes: Sequence[tuple[int, int, int, int]],
         flips: Sequence[bool], height: int, width: int) -> Cropped:
    """The views of an image decoded at 1/``reduction`` scale, with the boxes they cover in the original: decoded
    pixel i is original pixels i*r .. (i+1)*r."""
    views, actual = [], []
    for spec, box, flip in zip(specs, boxes, flips):
        view, (x0, y0, x1, y1) = crop_resize(pixels, _scaled(box, reduction), spec.size, flip)
        views.append(view)
        actual.append((x0 * reduction, y0 * reduction, min(x1 * reduction, width), min(y1 * reduction, height)))
    return Cropped(views, actual, list(flips), height, width)


def _decode_jpeg(data: bytes, image: Image.Image, channels: int, specs: Sequence[CropSpec],
                 boxes: Sequence[tuple[int, int, int, int]]) -> tuple[np.ndarray, int]:
    """(H, W, C) uint8 pixels of a JPEG decoded at the smallest DCT scale (1, 1/2, 1/4, 1/8) at which every crop
    still has at least its output size in pixels, and the reduction (1, 2, 4 or 8).

    Full-scale decodes of complete files (ending in the EOI marker) use OpenCV's decoder, about 20% faster than
    Pillow's; Pillow decodes the rest, and refuses a truncated file."""
    mode = "L" if channels == 1 else "RGB"
    width, height = image.size
    need = max(s.size / min(x1 - x0, y1 - y0) for s, (x0, y0, x1, y1) in zip(specs, boxes))
    reduction = 1
    if need <= 0.5:  # a smaller scale still covers every crop: let libjpeg skip the fine DCT coefficients
        drafted = image.draft(mode, (math.ceil(width * need), math.ceil(height * need)))
        reduction = round(width / drafted[1][2]) if drafted else 1
    elif data.endswith(b"\xff\xd9") and image.mode in ("L", "RGB"):
        flags = (cv2.IMREAD_GRAYSCALE if channels == 1 else cv2.IMREAD_COLOR_RGB) | cv2.IMREAD_IGNORE_ORIENTATION
        pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
        if pixels is not None and pixels.shape[:2] == (height, width):
            return (pixels[:, :, None] if pixels.ndim == 2 else pixels), 1
    pixels = np.asarray(image.convert(mode) if image.mode != mode else image)
    return (pixels[:, :, None] if pixels.ndim == 2 else pixels), reduction


def _scaled(box: Sequence[int], reduction: int) -> list[int]:
    """A box in original pixels as the box of the 1/``reduction`` decoded image that covers it."""
    return [box[0] // reduction, box[1] // reduction, -(-box[2] // reduction), -(-box[3] // reduction)]


def crop_resize(pixels: np.ndarray, box: Sequence[int], size: int, flip: bool
                ) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """The ``size`` x ``size`` uint8 view (C channels) of ``box`` (x0, y0, x1, y1) of ``pixels`` (H, W, C),
    mirrored if ``flip``, and the box it covers (at least one pixel, inside the image).

    Bicubic when the crop shrinks by at most 2x (as a JPEG draft decode leaves it) or grows, as torchvision's
    per-image crop and SimCLR's; pixel-area averaging (antialiased) when it shrinks by more."""
    height, width = pixels.shape[:2]
    x0, y0 = min(box[0], width - 1), min(box[1], height - 1)
    x1, y1 = min(max(box[2], x0 + 1), width), min(max(box[3], y0 + 1), height)
    shrink = max(x1 - x0, y1 - y0) / size
    view = cv2.resize(pixels[y0:y1, x0:x1], (size, size),
                      interpolation=cv2.INTER_AREA if shrink > 2 else cv2.INTER_CUBIC)
    if flip:
        view = cv2.flip(view, 1)
    return (view[:, :, None] if view.ndim == 2 else view), (x0, y0, x1, y1)


def collate_crops(images: Sequence[Cropped]) -> dict[str, torch.Tensor | list[torch.Tensor]]:
    """A batch of cropped images as tensors: ``views`` (one uint8 (B, size, size, C) per view), ``boxes``
    (B, V, 4) float pixel boxes in the originals, ``flips`` (B, V) bool, ``sizes`` (B, 2) original (H, W)."""
    return {
        "views": [torch.from_numpy(np.stack(group)) for group in zip(*(image.views for image in images))],
        "boxes": torch.tensor([image.boxes for image in images], dtype=torch.float32),
        "flips": torch.tensor([image.flips for image in images], dtype=torch.bool),
        "sizes": torch.tensor([(image.height, image.width) for image in images], dtype=torch.float32),
    }
