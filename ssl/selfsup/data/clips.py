"""CVRL's clips (docs/methods/cvrl.md): temporal interval sampling and temporally consistent augmentation.

A decoded video is uint8 (T, C, H, W); a clip batch is float (B, C, frames, size, size), the layout of
torchvision's video models.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from selfsup.data.batch_augment import hflip_where, random_crop_boxes, resized_crops
from selfsup.data.colour import ColourAugment
from selfsup.data.views import ViewRecipe, _blur_kernel
from selfsup.errors import ConfigError


@dataclass(frozen=True)
class ClipSpec:
    """One clip: ``frames`` frames every ``stride``, cropped (area ``scale``, aspect ``ratio``) and resized to
    ``size``, flipped with p ``flip_p``; ``threads`` > 1 lets PyAV decode with that many threads."""

    size: int
    frames: int
    stride: int
    scale: tuple[float, float]
    ratio: tuple[float, float]
    flip_p: float = 0.0
    threads: int = 1


def sample_gap(max_start: int, rng: random.Random) -> int:
    """A gap between two clip starts in 0..max_start-1 with density decreasing linearly (CVRL, power 1):
    P(gap <= k) = 2k/M - k^2/M^2 for M = ``max_start``, drawn by inverting that CDF."""
    return min(int(max_start * (1 - math.sqrt(1 - rng.random()))), max_start - 1)


def interval_starts(num_frames: int, frames: int, stride: int, rng: random.Random) -> tuple[int, int]:
    """Start frames of CVRL's two clips of a video of ``num_frames`` frames (clips of ``frames`` frames taken
    every ``stride``): with M = num_frames - (frames - 1) x stride clip starts that fit, gap ~ ``sample_gap(M)``,
    c1 ~ U{0 .. M - gap - 1}, c2 = c1 + gap, randomly swapped. A video too short for one clip (M < 1): two
    independent starts (its frames then loop, see ``clip_indices``)."""
    max_start = num_frames - (frames - 1) * stride
    if max_start < 1:
        return rng.randrange(num_frames), rng.randrange(num_frames)
    gap = sample_gap(max_start, rng)
    first = rng.randrange(max_start - gap)
    starts = (first, first + gap)
    return starts if rng.random() < 0.5 else starts[::-1]


def clip_indices(start: int, frames: int, stride: int, num_frames: int) -> list[int]:
    """Frame indices ``start + stride x t`` for t < ``frames``, looping over the video where they run past it."""
    return [(start + stride * t) % num_frames for t in range(frames)]


def _python_rng() -> random.Random:
    """A Python RNG drawn from torch's, so clip starts follow the worker's seed like every other view."""
    return random.Random(int(torch.randint(0, 2**62, ())))


class ClipViews(ViewRecipe):
    """CVRL's two clips of each video: temporal interval sampling, then the same random spatial parameters for
    every frame of a clip (docs/methods/cvrl.md).

    Per clip: random resized crop (area ``scale``, aspect ``ratio``) to ``size``, flip, colour jitter of
    strength ``jitter_strength`` (SimCLR's: brightness, contrast, saturation 0.8s, hue 0.2s, random order)
    with p ``jitter_p``, grayscale p ``grayscale_p``, Gaussian blur (sigma U(0.1, 2), kernel 10% of the side)
    with p ``blur_p[i]`` and solarize with p ``solarize_p[i]`` for clip i. ``mean``/``std``: None keeps [0, 1]
    (as CVRL). Output ``{"views": [clip1, clip2]}``, each float (B, C, frames, size, size).

    ``seek`` (default): loader workers decode only the frames of the two clips, seeking to the keyframe before
    each (`selfsup.data.seek`), and crop, resize and flip each frame as it is decoded, so clips of videos of any
    size and length batch together and a worker never holds a whole video; the colour part then runs on the
    batch of clips (OpenCV in the workers, or torch on the device with ``data.augment_on: device``).
    ``decode_threads`` > 1 lets each worker's decoder use that many threads. Off: every frame is decoded and the
    clips are cut from the decoded video (``batch``).
    """

    kind = "clips"
    media = "video"

    def __init__(
        self,
        size: int = 224,
        frames: int = 16,
        stride: int = 2,
        scale: tuple[float, float] = (0.3, 1.0),
        ratio: tuple[float, float] = (0.5, 2.0),
        flip_p: float = 0.5,
        jitter_strength: float = 1.0,
        jitter_p: float = 0.8,
        grayscale_p: float = 0.2,
        blur_p: Sequence[float] = (1.0, 0.1),
        solarize_p: Sequence[float] = (0.0, 0.2),
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        seek: bool = True,
        decode_threads: int = 1,
    ) -> None:
        if len(blur_p) != 2 or len(solarize_p) != 2:
            raise ConfigError(f"ClipViews needs two blur_p and two solarize_p (one per clip); got "
                              f"blur_p={list(blur_p)}, solarize_p={list(solarize_p)}")
        if frames < 1 or stride < 1 or decode_threads < 1:
            raise ConfigError(f"ClipViews needs frames, stride and decode_threads >= 1, got frames={frames}, "
                              f"stride={stride}, decode_threads={decode_threads}")
        self._set_normalization(mean, std)
        self.size, self.frames, self.stride = size, frames, stride
        self.scale, self.ratio, self.flip_p = tuple(scale), tuple(ratio), flip_p
        self.jitter_strength, self.jitter_p, self.grayscale_p = jitter_strength, jitter_p, grayscale_p
        self.blur_p, self.solarize_p = tuple(blur_p), tuple(solarize_p)
        self.seek, self.decode_threads = seek, decode_threads
        s = jitter_strength if jitter_p > 0 else 0.0
        self._colour = [ColourAugment((0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s), jitter_p, grayscale_p,
                                      _blur_kernel(size) if blur > 0 else 0, blur, solarize_p=solarize)
                        for blur, solarize in zip(self.blur_p, self.solarize_p)]

    @property
    def crop_specs(self) -> list[ClipSpec] | None:
        """The two clips, cut while decoding (with ``seek``)."""
        spec = ClipSpec(self.size, self.frames, self.stride, self.scale, self.ratio, self.flip_p, self.decode_threads)
        return [spec, spec] if self.seek else None

    def from_crops(self, crops: dict[str, Any], on_device: bool = False) -> dict[str, Any]:
        """The clips from their uint8 crops ``views`` (two of (B, frames, size, size, C)): the colour part."""
        out = []
        for colour, clips in zip(self._colour, crops["views"]):
            b, t = clips.shape[:2]
            x = colour.views(clips.flatten(0, 1), on_device, self.normalization, repeat=t)
            out.append(x.reshape(b, t, *x.shape[1:]).transpose(1, 2))
        return {"views": out}

    def __call__(self, video: torch.Tensor) -> dict[str, Any]:
        return {"views": [clip[0] for clip in self.batch(video[None])["views"]]}

    def batch(self, videos: torch.Tensor) -> dict[str, Any]:
        """Two clips of each uint8 video of a batch (B, T, C, H, W)."""
        rng = _python_rng()
        starts = [interval_starts(videos.shape[1], self.frames, self.stride, rng) for _ in range(len(videos))]
        return {"views": [self.augment(self.take(videos, [s[i] for s in starts]), i) for i in range(2)]}

    def take(self, videos: torch.Tensor, starts: Sequence[int]) -> torch.Tensor:
        """The clip of each video (B, T, C, H, W) that begins at ``starts[b]``: (B, frames, C, H, W)."""
        index = torch.tensor([clip_indices(s, self.frames, self.stride, videos.shape[1]) for s in starts])
        return videos[torch.arange(len(videos))[:, None], index]

    def augment(self, clips: torch.Tensor, index: int) -> torch.Tensor:
        """Clip ``index`` (0 or 1) augmentation of uint8 clips (B, T, C, H, W), one parameter set per clip:
        float (B, C, T, size, size)."""
        b, t, c, h, w = clips.shape
        x = clips.flatten(0, 1).float().div_(255)
        boxes = random_crop_boxes(b, h, w, self.scale, self.ratio).repeat_interleave(t, 0)
        x = hflip_where(resized_crops(x, boxes, self.size).clamp_(0, 1),
                        (torch.rand(b) < self.flip_p).repeat_interleave(t))
        x = self._colour[index].on_tensors(x, self._colour[index].draw(b, repeat=t))
        return self._normalize(x).reshape(b, t, c, self.size, self.size).transpose(1, 2)


class EvalClips(ViewRecipe):
    """The un-augmented clips evaluation averages over: ``clips`` clips of ``frames`` frames every ``stride``,
    starts spread evenly over the video, each frame resized (short side) and centre-cropped to ``size``.

    Output ``{"image": float (clips, C, frames, size, size)}``; `selfsup.eval.features.pooled` averages the
    backbone's features over the clips of each video.
    """

    kind = "image"
    media = "video"

    def __init__(self, size: int, frames: int = 16, stride: int = 2, clips: int = 4,
                 normalization: tuple[Sequence[float], Sequence[float]] | None = None) -> None:
        from selfsup.data.views import EvalView

        self.frames, self.stride, self.clips = frames, stride, clips
        self._frame = EvalView(size, normalization=normalization)

    @property
    def normalization(self) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
        return self._frame.normalization

    def starts(self, num_frames: int) -> list[int]:
        """Evenly spaced starts over the frames where a whole clip fits, the first at frame 0 (one clip: the opening
        clip; all at 0 when none fits)."""
        last = max(num_frames - (self.frames - 1) * self.stride - 1, 0)
        return [round(last * k / max(self.clips - 1, 1)) for k in range(self.clips)]

    def __call__(self, video: torch.Tensor) -> dict[str, Any]:
        index = [i for s in self.starts(len(video)) for i in clip_indices(s, self.frames, self.stride, len(video))]
        frames = self._frame(video[index])["image"]  # all frames at once: (clips x frames, C, size, size)
        clips = frames.reshape(self.clips, self.frames, *frames.shape[1:]).transpose(1, 2)
        return {"image": clips}
