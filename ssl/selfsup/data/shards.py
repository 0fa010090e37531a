"""Writing samples to webdataset tar shards with a manifest, atomically."""

from __future__ import annotations

import errno
import io
import logging
import os
import re
import secrets
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from PIL import Image

from selfsup.data.manifest import Manifest, Split
from selfsup.errors import ConfigError

log = logging.getLogger("selfsup.data")

SHARD_MTIME = 1_704_067_200  # 2024-01-01, the time stamp of every member
_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}


def parse_size(text: str) -> int:
    """Bytes in a size such as ``1GB``, ``500MB`` or ``3e9``."""
    match = re.fullmatch(r"\s*([0-9.]+(?:e[0-9]+)?)\s*([kmgt]?b?)\s*", str(text).lower())
    if not match:
        raise ConfigError(f"size {text!r} is not understood; write e.g. 1GB, 500MB or 3e9")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def write_split(
    samples: Iterable[dict[str, Any]],
    folder: Path,
    split: str,
    maxcount: int = 1000,
    maxsize: int = 3_000_000_000,
    progress: bool = True,
    total: int | None = None,
) -> Split:
    """Write raw samples (``__key__`` and encoded members) to ``folder/split-NNNNNN.tar``; a shard closes at
    ``maxcount`` samples or before its file would pass ``maxsize`` bytes, whichever comes first."""
    counts: dict[str, int] = {}
    pattern = str(Path(folder) / f"{split}-%06d.tar")
    # We close shards ourselves: webdataset's maxsize counts payload only, not tar headers and padding.
    # A fixed whole-second mtime keeps shards byte-reproducible and their headers plain ustar (a float time
    # adds a PAX header to every member, doubling small samples).
    with wds.ShardWriter(pattern, maxcount=1 << 62, maxsize=float("inf"), verbose=0, mtime=SHARD_MTIME) as sink:
        size = 0
        for sample in _progress(samples, f"writing {split} shards", progress, total):
            grow = tar_bytes(sample)
            if sink.tarstream is None or sink.count >= maxcount or (sink.count and size + grow > maxsize):
                sink.next_stream()
                size = 0
            sink.write(sample)
            size += grow
            name = Path(sink.fname).name
            counts[name] = counts.get(name, 0) + 1
    return Split(shards=list(counts), counts=list(counts.values()))


def tar_bytes(sample: dict[str, Any]) -> int:
    """Bytes a sample takes in a tar file: a 512-byte header per member plus its data padded to 512."""
    return sum(512 + -(-len(v) // 512) * 512 for k, v in sample.items() if not k.startswith("_"))


def _progress(items: Iterable, desc: str, enabled: bool, total: int | None) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=" samples", total=total, leave=False, disable=None)  # None: a terminal only


def write_shard_set(
    out: Path, manifest: Manifest, splits: dict[str, Iterable[dict[str, Any]]], *,
    totals: dict[str, int] | None = None, progress: bool = True, **limits: int,
) -> Manifest:
    """Write every split's samples as shards plus ``manifest.json`` into a temporary folder beside ``out``,
    then move it to ``out`` in one rename: a reader never sees half a shard set, and a failed write leaves
    nothing behind (a killed one leaves its temporary folder, which the next write beside it removes). The set
    is readable as the umask allows, like any file. A split without samples, a full disk or a read-only folder
    is a ConfigError.
    ``limits``: ``maxcount`` and/or ``maxsize`` per shard."""
    out = Path(out)
    fix = "choose another folder (--out; SELFSUP_CACHE for the built-in data sets)"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(out)
        tmp = out.parent / f".{out.name}-{secrets.token_hex(4)}"
        tmp.mkdir(mode=0o777)  # less the umask; tempfile.mkdtemp would make it owner-only
        (tmp / WRITER).write_text(f"{socket.gethostname()} {os.getpid()}\n")
    except OSError as err:
        raise ConfigError(f"cannot write a shard set to {out} ({err.strerror or err}); {fix}") from None
    try:
        for split, samples in splits.items():
            total = (totals or {}).get(split)
            manifest.splits[split] = write_split(samples, tmp, split, progress=progress, total=total, **limits)
            if not manifest.splits[split].shards:
                raise ConfigError(f"no usable sample for the {split} split of {out}, so nothing was written; "
                                  "check the files listed as passed over")
        manifest.save(tmp)
        publish(tmp, out)
        (out / WRITER).unlink(missing_ok=True)  # only now: a write killed before this point leaves a marked folder
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, OSError) and err.errno in WRITE_FAILURES:
            raise ConfigError(f"writing the shard set {out} failed ({err.strerror or err}); nothing was kept: free "
                              f"disk space (it needs about the size of the data) or {fix}") from None
        raise
    return manifest


WRITER = ".writer"  # in a temporary shard folder: "HOST PID" of the process writing it
WRITE_FAILURES = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM)


def remove_stale_temps(out: Path) -> list[Path]:
    """Remove the temporary folders of earlier writes of ``out`` that were killed: folders ``.NAME-XXXXXXXX`` (8 hex
    digits) that carry this module's marker file, written by a process on this host that is gone. A folder without
    the marker (a user's ``.NAME-archived``) is never touched. Says so."""
    removed = []
    for tmp in out.parent.glob(f".{out.name}-" + "[0-9a-f]" * 8):
        marker = tmp / WRITER
        try:
            if tmp.is_symlink() or marker.is_symlink() or not marker.is_file():
                continue
            host, pid = marker.read_text().split()
            stale = host == socket.gethostname() and not _alive(int(pid))
        except (OSError, ValueError):
            continue
        if stale:
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
            log.warning("removed %s, the temporary folder of an interrupted write of %s", tmp, out)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def publish(tmp: Path, final: Path) -> None:
    """Move a finished shard set into place atomically (a concurrent writer that lost the race is discarded)."""
    try:
        tmp.rename(final)
    except OSError:
        if (final / "manifest.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


def encode_png(image: torch.Tensor) -> bytes:
    """PNG bytes of a uint8 (C, H, W) tensor (1 or 3 channels)."""
    pixels = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def encode_video(frames: torch.Tensor, fps: int = 10, crf: int = 0) -> bytes:
    """MP4 (H.264) bytes of uint8 frames (T, C, H, W) with 1 or 3 channels, with PyAV.

    ``crf`` 0 is lossless and the range full (yuvj): a 1-channel video comes back exactly; RGB is stored as 4:4:4
    YUV, exact up to the colour conversion's rounding.
    """
    import av

    c, h, w = frames.shape[1:]
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuvj420p" if c == 1 else "yuvj444p"
        stream.options = {"crf": str(crf), "preset": "veryfast"}
        for pixels in frames.permute(0, 2, 3, 1).numpy():
            frame = av.VideoFrame.from_ndarray(pixels[:, :, 0] if c == 1 else pixels,
                                               format="gray" if c == 1 else "rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return buffer.getvalue()
