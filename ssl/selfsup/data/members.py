"""What a sample may hold and how it is decoded: the one place that decides which bytes from a shard get parsed.

Shards come from other people, so nothing is ever unpickled: only images (Pillow), videos (PyAV), json,
``cls``/``txt`` labels and plain numpy arrays (``allow_pickle=False``) are accepted. Any other member
(``.pyd``, ``.pickle``, ``.pth`` ...) is refused: dropped unread and counted.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from PIL import Image

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")
VIDEO_EXTENSIONS = ("mp4", "webm", "avi", "mkv", "mov")
LABEL_EXTENSIONS = ("cls", "txt")
ACCEPTED = frozenset((*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS, *LABEL_EXTENSIONS, "json", "npy"))


class BadSample(ValueError):
    """A sample whose image or label cannot be used (it is skipped and counted, not fatal)."""


def refused_members(sample: dict[str, Any]) -> list[str]:
    """Member extensions of a raw sample that selfsup will not read (e.g. pickles)."""
    return [ext for ext in sample if not ext.startswith("__") and ext not in ACCEPTED]


def media_member(sample: dict[str, Any], extensions: tuple[str, ...] = IMAGE_EXTENSIONS) -> str:
    """The extension of the sample's image (or video) member."""
    ext = next((e for e in extensions if e in sample), None)
    if ext is None:
        raise BadSample(f"sample {sample.get('__key__')} has no member of type {', '.join(extensions)}")
    return ext


def decode_image(data: bytes, channels: int) -> torch.Tensor:
    """uint8 (C, H, W) pixels of encoded image bytes, converted to 1 (grayscale) or 3 (RGB) channels."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except Exception as err:  # Pillow raises many types for broken files (OSError, SyntaxError, ValueError ...)
        reason = str(err).split(" <")[0]  # drop Pillow's "<_io.BytesIO object at 0x...>"
        raise BadSample(f"unreadable image ({type(err).__name__}: {reason})") from err
    return torch.from_numpy(pixels.copy()).reshape(pixels.shape[0], pixels.shape[1], -1).permute(2, 0, 1)


def decode_video(data: bytes, channels: int, max_frames: int | None = None) -> torch.Tensor:
    """uint8 (T, C, H, W) frames of encoded video bytes (mp4, webm ...), 1 (luma) or 3 (RGB) channels, with PyAV.

    Frames are decoded in order and decoding stops after ``max_frames`` (None: all), so a clip from the start
    of a long video does not pay for the rest of it.
    """
    try:
        import av
    except ImportError as err:
        raise ImportError("reading videos needs PyAV: pip install 'selfsup[video]'") from err
    frames = []
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            for frame in container.decode(stream):
                frames.append(_frame_pixels(frame, channels))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except (av.FFmpegError, IndexError, ValueError) as err:
        raise BadSample(f"unreadable video ({type(err).__name__}: {err})") from err
    if not frames:
        raise BadSample("video has no frames")
    pixels = np.stack(frames)
    return torch.from_numpy(pixels).reshape(*pixels.shape[:3], -1).permute(0, 3, 1, 2).contiguous()


FULL_RANGE_LUMA = ("gray", "yuvj420p", "yuvj422p", "yuvj444p")


def _frame_pixels(frame: Any, channels: int) -> np.ndarray:
    """(H, W) luma or (H, W, 3) RGB of a decoded frame. Full-range luma is read straight from the Y plane: a
    swscale conversion per frame costs several times the decoding of a small video."""
    if channels == 1 and frame.format.name in FULL_RANGE_LUMA:
        plane = frame.planes[0]
        return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
    return frame.to_ndarray(format="gray" if channels == 1 else "rgb24")


def decode_label(sample: dict[str, Any], num_classes: int) -> int:
    """The sample's class index (``cls`` or ``txt``); -1 for unlabeled data (``num_classes == 0``)."""
    if num_classes == 0:
        return -1
    raw = sample.get("cls", sample.get("txt"))
    try:
        label = int(raw.decode().strip())
    except (AttributeError, UnicodeDecodeError, ValueError):
        raise BadSample(f"sample {sample.get('__key__')} has no usable label (cls: {raw!r:.40})") from None
    if not 0 <= label < num_classes:
        raise BadSample(f"sample {sample.get('__key__')} has label {label}, outside 0..{num_classes - 1}")
    return label


def decode_sample(sample: dict[str, Any], channels: int, num_classes: int = 0, media: str = "image") -> dict[str, Any]:
    """Decode one raw sample to ``{"image": uint8 (C, H, W), "label": int}`` (``media="video"``: the image is the
    whole clip, uint8 (T, C, H, W)); BadSample if unusable.

    Only the image (or video) member and the label are parsed; refused members are never touched.
    """
    if media == "video":
        image = decode_video(sample[media_member(sample, VIDEO_EXTENSIONS)], channels)
    else:
        image = decode_image(sample[media_member(sample)], channels)
    return {"image": image, "label": decode_label(sample, num_classes)}


def load_npy(data: bytes) -> np.ndarray:
    """A plain numpy array from ``.npy`` bytes; object arrays (which would need pickle) are refused."""
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except ValueError as err:
        raise BadSample(f"refused .npy member: {err}") from err
