"""What the hostile-data tests share: tiny labelled shard sets and photo folders, and the real command run in
this process (`cli`)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import torch

from selfsup.data.manifest import Manifest
from selfsup.data.shards import encode_png, write_shard_set

SIZE = 10  # image side


def cli(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """The exit code and the printed output (stdout then stderr) of ``selfsup ARGS``, run in this process by the
    function the console script calls (no interpreter start: these rows take well under a second)."""
    from selfsup.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    return code, out.out + out.err


class WritesAFile:
    """Unpickling this creates the file ``path``: what a malicious checkpoint would do (its pickle names only
    ``pathlib``, so any process can unpickle it)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def png(seed: int, size: int = SIZE) -> bytes:
    return encode_png(torch.randint(0, 256, (1, size, size), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(seed)))


def shard_set(root: Path, counts: tuple[int, ...] = (16, 16), extra: dict | None = None) -> Path:
    """A labelled 1-channel shard set of 10x10 PNGs with one shard per count; ``extra`` members join sample 0."""
    def samples():
        for i in range(sum(counts)):
            yield {"__key__": f"s{i:04d}", "png": png(i), "cls": str(i % 2).encode(), **(extra or {} if i == 0 else {})}

    manifest = Manifest(name="hostile", channels=1, classes=["a", "b"])
    write_shard_set(root, manifest, {"train": samples()}, progress=False, maxcount=counts[0])
    return root


def shard(folder: Path, index: int = 0) -> Path:
    return sorted(folder.glob("train-*.tar"))[index]



def photos(root: Path, per_class: int = 3, size: int = SIZE) -> Path:
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(png(10 * c + i, size))
    return root


def h264(frames: int = 60, width: int = 32, height: int = 32, fmt: str = "mp4", gop: int = 10, bframes: int = 2,
         frame_ms: list[int] | None = None, faststart: bool = False, tmp: Path | None = None) -> bytes:
    """An H.264 video of smooth gradients that move every frame: a keyframe every ``gop`` frames (no scene-cut
    keyframes), ``bframes`` B-frames, ``frame_ms``: the duration of each frame in ms (a variable frame rate);
    ``faststart`` (mp4, needs the folder ``tmp``): the index at the front of the file."""
    from fractions import Fraction

    import av
    import numpy as np

    path = (tmp or Path()) / f"video.{fmt}"
    target = path if faststart else io.BytesIO()
    with av.open(target, mode="w", format=fmt, options={"movflags": "faststart"} if faststart else {}) as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"g": str(gop), "bf": str(bframes), "sc_threshold": "0", "preset": "veryfast"}
        if frame_ms:
            stream.codec_context.time_base = Fraction(1, 1000)
        y, x = np.mgrid[0:height, 0:width]
        for i in range(frames):
            pixels = np.stack([(x * 7 + i * 5) % 256, (y * 5 + i * 3) % 256, (x + y + i * 11) % 256], -1)
            frame = av.VideoFrame.from_ndarray(pixels.astype(np.uint8), format="rgb24")
            if frame_ms:
                frame.pts, frame.time_base = sum(frame_ms[:i]), Fraction(1, 1000)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path.read_bytes() if faststart else target.getvalue()


def audio_only() -> bytes:
    """An mp4 with one AAC audio stream and no video."""
    import av
    import numpy as np

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("aac", rate=8000)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate = 8000
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()


def no_frames() -> bytes:
    """An mp4 with a video stream that holds no frame."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 16, 16, "yuv420p"
        container.mux(stream.encode())
    return buffer.getvalue()


def cut_after(data: bytes, packets: int) -> bytes:
    """``data`` cut right after its first ``packets`` video packets in file order: the header (at the front, a
    faststart mp4) still counts them all."""
    import av

    with av.open(io.BytesIO(data)) as container:
        ends = sorted(p.pos + p.size for p in container.demux(container.streams.video[0]) if p.size)
    return data[: ends[packets - 1]]
