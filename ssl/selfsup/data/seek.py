"""CVRL's clips decoded by seeking: only the frames a clip needs, cropped and resized as they come.

The video's frames are listed from its packets (demuxed, not decoded): their presentation timestamps, in order,
and which are keyframes, so the frame count and the time of every frame come from the file itself, not from a
header that may lie, and variable frame rates need no rate. The clip starts are drawn from that count as
`selfsup.data.clips.interval_starts` does; for each clip the decoder seeks to the keyframe at or before its first
frame (unless decoding on from where it is gets there without passing a keyframe), decodes forward to its last
frame and keeps the frames at the clip's stride, each cropped and resized at once (one box and flip per clip).
The frames returned are those a decode of every frame gives at the same indices; a worker holds one decoded
frame and the clips' crops, never the whole video.

A frame that does not decode (a corrupt packet) is replaced by the next one that does, or the last one at the
end; packets without timestamps (rare containers) fall back to decoding from the start, still keeping only
the frames the clips need.
"""

from __future__ import annotations

import bisect
import io
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from selfsup.data.clips import ClipSpec, clip_indices, interval_starts
from selfsup.data.crops import Cropped, crop_resize, sample_box
from selfsup.data.limits import Limits
from selfsup.data.members import BadSample, frame_pixels, set_decoder_threads, unreadable


@dataclass
class FrameIndex:
    """The frames of a video stream from its packets: presentation timestamps in order (None: unknown, decode
    sequentially) and the sorted timestamps of its keyframes."""

    pts: list[int] | None
    count: int
    keyframes: list[int]

    @classmethod
    def of(cls, container: Any, stream: Any, max_count: int | None = None) -> FrameIndex:
        """The index of ``stream``, read no further than ``max_count`` + 1 frames."""
        pts, keys, count = [], [], 0
        for packet in container.demux(stream):
            if packet.size == 0:  # the flush packet at the end
                continue
            count += 1
            if max_count is not None and count > max_count:
                break
            if pts is not None and packet.pts is None:
                pts = None
            if pts is not None:
                pts.append(packet.pts)
                if packet.is_keyframe:
                    keys.append(packet.pts)
        if pts is not None and len(set(pts)) != len(pts):
            pts = None
        return cls(sorted(pts) if pts is not None else None, count, sorted(keys))


def wanted_frames(container: Any, stream: Any, index: FrameIndex, wanted: Sequence[int]) -> Iterator[tuple[int, Any]]:
    """(i, decoded frame) for each frame index of ``wanted`` (ascending, distinct), seeking past the frames
    between them when a keyframe lies in between."""
    if index.pts is None or not index.keyframes:
        yield from _sequential(container, stream, wanted)
        return
    targets = [index.pts[i] for i in wanted]
    k, frames, position, frame = 0, None, None, None
    while k < len(targets):
        key = index.keyframes[max(bisect.bisect_right(index.keyframes, targets[k]) - 1, 0)]
        if frames is None or position is None or key > position:  # a keyframe before the target: jump to it
            container.seek(key, stream=stream, backward=True, any_frame=False)
            frames = container.decode(stream)
        for frame in frames:
            position = frame.pts if frame.pts is not None else position
            if position is not None and position >= targets[k]:
                break
        else:  # the stream ended before the target: the last frame stands in for the rest
            if frame is None:
                return
            yield from ((i, frame) for i in wanted[k:])
            return
        while k < len(targets) and targets[k] <= position:  # this frame, or the first after one that is missing
            yield wanted[k], frame
            k += 1


def _sequential(container: Any, stream: Any, wanted: Sequence[int]) -> Iterator[tuple[int, Any]]:
    """``wanted_frames`` by decoding from the start and counting frames."""
    container.seek(0)
    k, frame = 0, None
    for i, frame in enumerate(container.decode(stream)):
        while k < len(wanted) and wanted[k] <= i:
            yield wanted[k], frame
            k += 1
        if k == len(wanted):
            return
    if frame is not None:
        yield from ((i, frame) for i in wanted[k:])


@contextmanager
def opened(data: bytes, limits: Limits | None = None, threads: int = 1) -> Iterator[tuple[Any, Any, FrameIndex]]:
    """The container, video stream and frame index of the encoded video ``data``; BadSample if it has no video
    stream, no frames, or more pixels than ``limits.max_video_pixels`` (frames x width x height, counted from
    its packets). Decoder errors inside become BadSample too."""
    try:
        import av
    except ImportError as err:
        raise ImportError("reading videos needs PyAV: pip install 'selfsup[video]'") from err
    limits = limits or Limits.from_env()
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise BadSample("file has no video stream")
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            most = limits.max_video_pixels // max(width * height, 1)
            index = FrameIndex.of(container, stream, most)
            if index.count > most:
                raise BadSample(f"video of over {most:,} frames of {width}x{height} is over "
                                f"{limits.describe('max_video_pixels')}")
            if index.count == 0:
                raise BadSample("video has no frames")
            set_decoder_threads(stream, threads)
            yield container, stream, index
    except BadSample:
        raise
    except Exception as err:
        raise unreadable("video", err) from err


def pixels_of(container: Any, stream: Any, index: FrameIndex, wanted: Sequence[int], channels: int
              ) -> Iterator[tuple[int, np.ndarray]]:
    """(i, uint8 (H, W, C) pixels) of the frames ``wanted`` (ascending, distinct), by `wanted_frames`, each at
    the stream's size as opened (the first frame's: a stream that changes resolution midway is scaled back)."""
    size = stream.codec_context.height, stream.codec_context.width
    for i, frame in wanted_frames(container, stream, index, wanted):
        pixels = frame_pixels(frame, channels, size)
        yield i, pixels[:, :, None] if pixels.ndim == 2 else pixels


def decode_frames(data: bytes, channels: int, indices: Sequence[int], limits: Limits | None = None,
                  threads: int = 1) -> np.ndarray:
    """uint8 (len(indices), H, W, C): the frames at ``indices`` (any order, repeats allowed; taken modulo the
    frame count) of the encoded video ``data``, decoded by seeking."""
    with opened(data, limits, threads) as (container, stream, index):
        indices = [i % index.count for i in indices]
        frames = dict(pixels_of(container, stream, index, sorted(set(indices)), channels))
    if len(frames) < len(set(indices)):
        raise BadSample("video has no decodable frames")
    return np.stack([frames[i] for i in indices])


def decode_clip_crops(data: bytes, channels: int, specs: Sequence[ClipSpec], rng: random.Random,
                      limits: Limits | None = None) -> Cropped:
    """CVRL's two clips of the encoded video ``data``, decoded by seeking and cut to ``specs`` (one per clip):
    ``views`` are uint8 (frames, size, size, C). BadSample if the video is unreadable, has no video stream or no
    frames, or is over ``limits.max_video_pixels`` (see `opened`)."""
    views = [np.empty((spec.frames, spec.size, spec.size, channels), np.uint8) for spec in specs]
    done: set[int] = set()
    with opened(data, limits, specs[0].threads) as (container, stream, index):
        width, height = stream.codec_context.width, stream.codec_context.height
        starts = interval_starts(index.count, specs[0].frames, specs[0].stride, rng)
        boxes = [sample_box(height, width, spec.scale, spec.ratio, rng) for spec in specs]
        flips = [rng.random() < spec.flip_p for spec in specs]
        uses: dict[int, list[tuple[int, int]]] = {}
        for c, (start, spec) in enumerate(zip(starts, specs)):
            for t, i in enumerate(clip_indices(start, spec.frames, spec.stride, index.count)):
                uses.setdefault(i, []).append((c, t))
        for i, pixels in pixels_of(container, stream, index, sorted(uses), channels):
            for c, t in uses[i]:
                views[c][t] = crop_resize(pixels, boxes[c], specs[c].size, flips[c])[0]
            done.add(i)
    if len(done) < len(uses):
        raise BadSample("video has no decodable frames")
    return Cropped(views, boxes, flips, height, width)
