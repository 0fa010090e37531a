"""The Kinetics-like rows of `selfsup bench data`: CVRL's clips decoded by seeking against a decode of every frame.

The set is written once to the cache: videos of 10 s at 25 fps, alternately 340x256 and 480x360 (Kinetics'
common sizes), H.264 (libx264, B-frames) with a keyframe every 2 s (GOP 50), each a slow pan and zoom over one
of the photos installed packages ship (`selfsup.bench.photos`), as shards. One process, one thread:

- clip decoding, videos/s: two 16-frame stride-2 clips per video (CVRL's), from a decode of every frame (the
  path before seeking) and by seeking (`selfsup.data.seek`), the same frames; and seeking with threaded decoding;
- the CVRL training loader (`ShardStream` with CVRL's default `ClipViews` at 224 px) against a plain PyAV
  decode of every frame of the same videos;
- the peak memory (tracemalloc: numpy and torch buffers; not FFmpeg's own few frame buffers) of decoding one
  video of each size either way, and of the loader's seek + crop.
"""

from __future__ import annotations

import io
import random
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

from selfsup.data.builtin import cache_dir
from selfsup.data.clips import ClipViews, clip_indices, interval_starts
from selfsup.data.members import decode_video
from selfsup.data.seek import decode_clip_crops, decode_frames
from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream

SIZES = [(340, 256), (480, 360)]
SECONDS, FPS, GOP = 10, 25, 50
FRAMES, STRIDE = 16, 2  # CVRL's clips


def pan_zoom(photo: np.ndarray, width: int, height: int, frames: int, rng: random.Random) -> Iterator[np.ndarray]:
    """``frames`` RGB frames of ``width`` x ``height``: a window over ``photo`` that drifts and zooms slowly."""
    import cv2

    ph, pw = photo.shape[:2]
    fit = min(pw / width, ph / height)  # window scale at which it covers the photo's short side
    zoom = [fit * rng.uniform(0.55, 0.7), fit * rng.uniform(0.75, 0.9)][:: rng.choice((1, -1))]
    for t in np.linspace(0, 1, frames):
        scale = zoom[0] + (zoom[1] - zoom[0]) * t
        x = (pw - width * scale) * (0.1 + 0.8 * t)
        y = (ph - height * scale) * (0.5 + 0.3 * np.sin(np.pi * t))
        affine = np.array([[scale, 0, x], [0, scale, y]], np.float32)
        yield cv2.warpAffine(photo, affine, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def encode_h264(frames: Iterator[np.ndarray], width: int, height: int) -> bytes:
    """MP4 bytes: H.264 (libx264 at its defaults: B-frames, CRF 23) with a keyframe every ``GOP`` frames."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(GOP), "keyint_min": str(GOP), "preset": "veryfast"}
        for pixels in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def _video_samples(count: int) -> Iterator[dict[str, Any]]:
    from selfsup.bench.photos import _sample_photos

    rng = random.Random(0)
    photos = [np.asarray(photo) for photo in _sample_photos()]
    for i in range(count):
        width, height = SIZES[i % len(SIZES)]
        frames = pan_zoom(photos[i % len(photos)], width, height, SECONDS * FPS, rng)
        yield {"__key__": f"{i:06d}", "mp4": encode_h264(frames, width, height), "cls": str(i % len(photos)).encode()}


def kinetics_source(count: int) -> Source:
    """The Kinetics-like set of ``count`` videos as shards in the cache (written on first use)."""
    from selfsup.data.manifest import Manifest
    from selfsup.data.shards import write_shard_set

    out = cache_dir() / f"bench-kinetics-{count}"
    if not (out / "manifest.json").is_file():
        manifest = Manifest(name=out.name, channels=3, classes=["china", "flower", "hopper"], media="video")
        write_shard_set(out, manifest, {"train": _video_samples(count)}, totals={"train": count}, progress=False)
    return Source(f"shards:{out}")


def _clips(count: int, seed: int) -> list[list[int]]:
    """The frame indices of each video's two clips, drawn as CVRL's training views draw them."""
    rng = random.Random(seed)
    frames = SECONDS * FPS
    return [[i for s in interval_starts(frames, FRAMES, STRIDE, rng) for i in clip_indices(s, FRAMES, STRIDE, frames)]
            for _ in range(count)]


def decode_all(videos: list[bytes], clips: list[list[int]]) -> Callable[[], int]:
    """The clips cut from a decode of every frame (the path before seeking)."""
    return lambda: sum(len(decode_video(data, 3)[index]) > 0 for data, index in zip(videos, clips))


def seeking(videos: list[bytes], clips: list[list[int]], threads: int = 1) -> Callable[[], int]:
    """The same clips' frames decoded by seeking."""
    return lambda: sum(len(decode_frames(data, 3, index, threads=threads)) > 0 for data, index in zip(videos, clips))


def cvrl_loader(source: Source, batch: int = 4) -> Callable[[], int]:
    """One pass of a loader worker's training stream with CVRL's default views (2 x 16 frames, stride 2, 224 px)."""
    parts = source.split("train").parts
    return lambda: sum(len(b["label"]) for b in ShardStream(parts, ClipViews(224), batch, 3, repeat=False,
                                                             num_classes=3, media="video"))


def peak_mb(run: Callable[..., Any], *args: Any) -> float:
    """Peak traced memory (numpy and torch buffers) of ``run(*args)``, in MB."""
    tracemalloc.start()
    try:
        run(*args)
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def video_rows(count: int, repeats: int, best_rate: Callable[[Callable[[], int], int], float]) -> list[dict]:
    """The Kinetics-like table: printed, and returned as JSON rows."""
    import os

    source = kinetics_source(count)
    videos = [s["mp4"] for part in source.split("train").parts for s in part.samples()]
    clips = _clips(len(videos), 0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nKinetics-like videos ({len(videos)}: 10 s, 25 fps, 340x256 and 480x360, H.264, GOP 50), one process, "
          f"1 thread, best of {repeats}; load average {load}")
    rates = {
        "decode all, cut 2 clips": best_rate(decode_all(videos, clips), repeats),
        "seek to 2 clips": best_rate(seeking(videos, clips), repeats),
        "seek, 2 decoder threads": best_rate(seeking(videos, clips, threads=2), repeats),
        "plain PyAV decode of every frame": best_rate(lambda: sum(len(decode_video(v, 3)) > 0 for v in videos),
                                                      repeats),
        "CVRL loader (seek, views at 224)": best_rate(cvrl_loader(source), repeats),
    }
    base, plain = rates["decode all, cut 2 clips"], rates["plain PyAV decode of every frame"]
    print(f"{'path':<34} {'videos/s':>9} {'clips/s':>8} {'ratio':>14}")
    rows = []
    for name, rate in rates.items():
        against = plain if name.startswith("CVRL") else base
        label = "x plain decode" if name.startswith("CVRL") else "x decode all"
        rows.append({"data": "kinetics-like", "path": name, "videos_per_s": rate, "clips_per_s": 2 * rate,
                     "ratio": rate / against, "ratio_to": label})
        print(f"{name:<34} {rate:>9.2f} {2 * rate:>8.2f} {rate / against:>6.2f} {label}")
    first = {size: next(v for i, v in enumerate(videos) if SIZES[i % len(SIZES)] == size) for size in SIZES}
    for (width, height), data in first.items():
        full = peak_mb(decode_video, data, 3)
        seek = peak_mb(decode_frames, data, 3, _clips(1, 1)[0])
        crops = peak_mb(decode_clip_crops, data, 3, ClipViews(224).crop_specs, random.Random(0))
        rows.append({"data": "kinetics-like", "memory": f"{width}x{height}", "decode_all_mb": full, "seek_mb": seek,
                     "loader_seek_crops_mb": crops})
        print(f"peak memory, one {width}x{height} video: decode all {full:.0f} MB, seeking {seek:.1f} MB (the 32 "
              f"frames: {32 * width * height * 3 / 1e6:.1f} MB), the CVRL loader's seek + 224 px crops {crops:.1f} MB")
    torch.set_num_threads(threads)
    return rows
