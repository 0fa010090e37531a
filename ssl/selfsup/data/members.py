"""What a sample may hold and how it is decoded: the one place that decides which bytes from a shard get parsed.

Shards come from other people, so nothing is ever unpickled: only images (Pillow), videos (PyAV), json,
``cls``/``txt`` labels, ``mask.png`` segmentation masks and plain numpy arrays (``allow_pickle=False``) are
accepted. Any other member
(``.pyd``, ``.pickle``, ``.pth`` ...) is refused: dropped unread and counted.
"""

from __future__ import annotations

import io
import json
import math
import struct
import warnings
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from selfsup.data.limits import Limits

# The pixel cap decides which images are too large; Pillow's own error, at twice its warning size, still holds.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp", "bmp", "tif", "tiff")
VIDEO_EXTENSIONS = ("mp4", "webm", "avi", "mkv", "mov")
LABEL_EXTENSIONS = ("cls", "txt")
MASK = "mask.png"  # a segmentation mask: one class index per pixel (8-bit grayscale or palette PNG)
IGNORE = 255  # a mask value that marks pixels left out of training and scoring (as in Pascal VOC)
ACCEPTED = frozenset((*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS, *LABEL_EXTENSIONS, MASK, "json", "npy"))


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


def unreadable(kind: str, err: Exception) -> BadSample:
    """The BadSample for whatever a decoder raised (decoders raise many types for broken files: OSError,
    SyntaxError, ValueError ...)."""
    reason = str(err).split(" <")[0]  # drop Pillow's "<_io.BytesIO object at 0x...>"
    return BadSample(f"unreadable {kind} ({type(err).__name__}: {reason})")


def open_image(data: bytes, limits: Limits | None = None) -> Image.Image:
    """The image in ``data`` opened from its header only (Pillow decodes on first use); BadSample if it is
    unreadable or has more pixels than ``limits.max_pixels``. Close it (``with``) when done."""
    limits = limits or Limits.from_env()
    try:
        image = Image.open(io.BytesIO(data))
    except Exception as err:
        raise unreadable("image", err) from err
    if image.width * image.height > limits.max_pixels:
        image.close()
        raise BadSample(f"image of {image.width}x{image.height} = {image.width * image.height:,} pixels is over "
                        f"{limits.describe('max_pixels')}")
    return image


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def image_pixels(image: Image.Image, channels: int) -> np.ndarray:
    """uint8 (H, W, C) pixels of an opened image with 1 (grayscale) or 3 (RGB) channels; BadSample if it does
    not decode. 16-bit and 32-bit images are scaled to 8 bits, not clipped: integers in 0..65535 by 255/65535
    (the full 16-bit range), floats in 0..1 by 255; anything else is stretched from its minimum to its maximum
    (non-finite floats become 0)."""
    try:
        if image.mode in HIGH_DEPTH_MODES:
            pixels = _to_8bit(np.asarray(image))[:, :, None]
            return pixels if channels == 1 else np.repeat(pixels, 3, axis=2)
        pixels = np.asarray(image.convert("L" if channels == 1 else "RGB"))
    except Exception as err:
        raise unreadable("image", err) from err
    return pixels.reshape(pixels.shape[0], pixels.shape[1], -1)


def _to_8bit(values: np.ndarray) -> np.ndarray:
    is_float = values.dtype.kind == "f"
    values = values.astype(np.float64)
    values[~np.isfinite(values)] = 0
    low, high = values.min(), values.max()
    if is_float and 0 <= low and high <= 1:
        values = values * 255
    elif not is_float and 0 <= low and high <= 65535:
        values = values / 257
    else:
        values = (values - low) * (255 / (high - low)) if high > low else np.zeros_like(values)
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def decode_image(data: bytes, channels: int, limits: Limits | None = None) -> torch.Tensor:
    """uint8 (C, H, W) pixels of encoded image bytes, converted to 1 (grayscale) or 3 (RGB) channels; BadSample
    if they do not decode or are over the pixel cap (see `open_image` and `image_pixels`)."""
    pixels = _plain_png(data, channels, limits or Limits.from_env())
    if pixels is None:
        with open_image(data, limits) as image:
            pixels = image_pixels(image, channels)
    return torch.from_numpy(pixels if pixels.flags.writeable else pixels.copy()).permute(2, 0, 1)


_PNG_HEAD = struct.Struct(">8sI4sIIBB")  # signature, IHDR length and type, width, height, bit depth, colour type
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_PLAIN = {(1, 0): cv2.IMREAD_GRAYSCALE, (3, 2): cv2.IMREAD_COLOR_RGB}  # (channels, colour type) -> flag


def _plain_png(data: bytes, channels: int, limits: Limits) -> np.ndarray | None:
    """(H, W, C) pixels of an 8-bit PNG already in the wanted channels (grayscale, or RGB without alpha), decoded
    by OpenCV: about 4x faster than Pillow on small images, with the same pixels. None for anything else (other
    formats, depths, palettes, alpha, a conversion, an image over the pixel cap, bytes OpenCV cannot decode):
    Pillow then decodes it, or says why it cannot."""
    if len(data) < _PNG_HEAD.size:
        return None
    signature, _, chunk, width, height, depth, colour = _PNG_HEAD.unpack_from(data)
    flag = _PNG_PLAIN.get((channels, colour))
    if (signature, chunk, depth) != (_PNG_SIGNATURE, b"IHDR", 8) or flag is None or width * height > limits.max_pixels:
        return None
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    if pixels is None or pixels.shape[:2] != (height, width) or pixels.size != height * width * channels:
        return None
    return pixels.reshape(height, width, channels)


def set_decoder_threads(stream: Any, threads: int) -> None:
    """Decode the PyAV video ``stream`` with ``threads`` threads (frame and slice threading above 1). FFmpeg's own
    default starts a thread per core for every video opened, which in a loader worker, one small video after
    another, cost 2.6x the decoding itself (moving-MNIST clips)."""
    stream.codec_context.thread_count = threads
    if threads > 1:
        stream.thread_type = "AUTO"


def decode_video(data: bytes, channels: int, max_frames: int | None = None, limits: Limits | None = None,
                 threads: int = 1) -> torch.Tensor:
    """uint8 (T, C, H, W) frames of encoded video bytes (mp4, webm ...), 1 (luma) or 3 (RGB) channels, with PyAV
    and ``threads`` decoder threads.

    Frames are decoded in order and decoding stops after ``max_frames`` (None: all), so a clip from the start
    of a long video does not pay for the rest of it. A stream that changes resolution midway (legal in H.264)
    has its later frames scaled to the first frame's size. BadSample if the stream's metadata says, or its
    decoded frames show, more than ``limits.max_video_pixels`` pixels (frames x width x height).
    """
    try:
        import av
    except ImportError as err:
        raise ImportError("reading videos needs PyAV: pip install 'selfsup[video]'") from err
    limits = limits or Limits.from_env()
    frames, pixels = [], 0
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            stream = container.streams.video[0]
            width, height = stream.codec_context.width, stream.codec_context.height
            planned = min(stream.frames, max_frames or stream.frames) * width * height  # frames: 0 when unknown
            if planned > limits.max_video_pixels:
                raise BadSample(f"video of {stream.frames} frames of {width}x{height} is over "
                                f"{limits.describe('max_video_pixels')}")
            set_decoder_threads(stream, threads)
            for frame in container.decode(stream):
                pixels += frame.width * frame.height
                if pixels > limits.max_video_pixels:
                    raise BadSample(f"video decoded past {len(frames)} frames of {frame.width}x{frame.height}, "
                                    f"over {limits.describe('max_video_pixels')}")
                frames.append(frame_pixels(frame, channels, frames[0].shape[:2] if frames else None))
                if max_frames is not None and len(frames) >= max_frames:
                    break
    except BadSample:
        raise
    except Exception as err:
        raise unreadable("video", err) from err
    if not frames:
        raise BadSample("video has no frames")
    pixels = np.stack(frames)
    return torch.from_numpy(pixels).reshape(*pixels.shape[:3], -1).permute(0, 3, 1, 2).contiguous()


FULL_RANGE_LUMA = ("gray", "yuvj420p", "yuvj422p", "yuvj444p")


def frame_pixels(frame: Any, channels: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """(H, W) luma or (H, W, 3) RGB of a decoded frame, scaled to ``size`` (H, W) when given and the frame is of
    another (a stream that changes resolution midway). Full-range luma is read straight from the Y plane: a
    swscale conversion per frame costs several times the decoding of a small video."""
    layout = "gray" if channels == 1 else "rgb24"
    if size is not None and (frame.height, frame.width) != tuple(size):
        return frame.to_ndarray(format=layout, width=size[1], height=size[0])
    if channels == 1 and frame.format.name in FULL_RANGE_LUMA:
        plane = frame.planes[0]
        return np.frombuffer(plane, np.uint8).reshape(plane.height, plane.line_size)[:, : plane.width]
    return frame.to_ndarray(format=layout)


def decode_label(sample: dict[str, Any], num_classes: int, label: str = "cls") -> int:
    """The sample's class index: ``cls`` (or ``txt``), or the integer field ``label`` of its ``json``; -1 for
    unlabeled data (``num_classes == 0``)."""
    if num_classes == 0:
        return -1
    raw = sample.get("cls", sample.get("txt")) if label == "cls" else sample.get("json")
    try:
        value = raw.decode().strip() if label == "cls" else json.loads(raw)[label]
        if isinstance(value, (bool, float)):
            raise ValueError
        index = int(value)
    except (AttributeError, UnicodeDecodeError, ValueError, TypeError, KeyError, RecursionError):
        where = "cls" if label == "cls" else f"json field {label!r}"
        raise BadSample(f"sample {sample.get('__key__')} has no usable label ({where}: {raw!r:.40})") from None
    if not 0 <= index < num_classes:
        raise BadSample(f"sample {sample.get('__key__')} has label {index}, outside 0..{num_classes - 1}")
    return index


def decode_mask(sample: dict[str, Any], segments: int, size: tuple[int, int], limits: Limits | None = None
                ) -> torch.Tensor:
    """The sample's segmentation mask, uint8 (H, W) of class indices 0..segments - 1 (or ``IGNORE``); BadSample
    when it is missing, unreadable, not one channel of indices, of another size than its image (``size``: H, W)
    or holds a value outside the classes."""
    key = sample.get("__key__")
    if MASK not in sample:
        raise BadSample(f"sample {key} has no {MASK} member (a dense run needs one per image)")
    with open_image(sample[MASK], limits) as image:
        if image.mode not in ("L", "P"):
            raise BadSample(f"sample {key}: its mask is a {image.mode} image; write class indices as an 8-bit "
                            "grayscale or palette PNG")
        try:
            mask = np.array(image)
        except Exception as err:
            raise unreadable("mask", err) from err
    if mask.shape != size:
        raise BadSample(f"sample {key}: its mask is {mask.shape[1]}x{mask.shape[0]}, its image "
                        f"{size[1]}x{size[0]}")
    bad = (mask >= segments) & (mask != IGNORE)
    if bad.any():
        raise BadSample(f"sample {key}: its mask holds label {int(mask[bad].max())}, outside 0..{segments - 1} "
                        f"(and {IGNORE}, ignored)")
    return torch.from_numpy(mask)


def decode_sample(sample: dict[str, Any], channels: int, num_classes: int = 0, media: str = "image",
                  limits: Limits | None = None, label: str = "cls", segments: int = 0) -> dict[str, Any]:
    """Decode one raw sample to ``{"image": uint8 (C, H, W), "label": int}`` (``media="video"``: the image is the
    whole clip, uint8 (T, C, H, W)); with ``segments`` (classes of a dense run, background included) also
    ``"mask"`` (see `decode_mask`). BadSample if unusable.

    Only the image (or video) member, the label and the mask are parsed; refused members are never touched. A
    sample the reader marked ``__error__`` (a file it could not read, a member over a cap) is BadSample with that
    reason.
    """
    if "__error__" in sample:
        raise BadSample(f"sample {sample.get('__key__')}: {sample['__error__']}")
    if media == "video":
        image = decode_video(sample[media_member(sample, VIDEO_EXTENSIONS)], channels, limits=limits)
    else:
        image = decode_image(sample[media_member(sample)], channels, limits)
    decoded = {"image": image, "label": decode_label(sample, num_classes, label)}
    if segments:
        decoded["mask"] = decode_mask(sample, segments, tuple(image.shape[-2:]), limits)
    return decoded


def load_npy(data: bytes) -> np.ndarray:
    """A plain numpy array from ``.npy`` bytes; BadSample for object arrays (which would need pickle) and for a
    header that declares more data than the member holds (numpy would allocate it all before reading)."""
    buffer = io.BytesIO(data)
    try:
        major, _ = np.lib.format.read_magic(buffer)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(buffer)
        declared, held = math.prod(shape) * dtype.itemsize, len(data) - buffer.tell()
        if declared <= held:
            return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, TypeError, EOFError) as err:
        raise BadSample(f"refused .npy member: {err}") from err
    raise BadSample(f"refused .npy member: its header declares {declared:,} bytes ({dtype} {shape}), the member "
                    f"holds {held:,}")
