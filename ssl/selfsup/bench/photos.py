"""The real-photo rows of `selfsup bench data`: images/s of one process on one thread making each image method's
ImageNet views from photos of ImageNet's sizes.

The set is written once to the cache from the photos installed packages ship (scikit-learn's china.jpg and
flower.jpg, matplotlib's grace_hopper.jpg): random crops rescaled to ImageNet's size distribution (mostly
500 x 375 or 375 x 500, otherwise 300 to 640 px a side, aspect 3:4 to 16:9), JPEG quality 90, every 16th a PNG,
as shards. Rows per method: a per-image PIL pipeline as lightly and solo-learn users run it, or as the method's
official code does (torchvision's PIL transforms, PIL's GaussianBlur, masks drawn per image or per batch as there),
selfsup's views made in a loader worker, and the worker's part of the device split (decode + uint8 crops); against
the decode-only floor (full and at half scale with JPEG DCT scaling).
"""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter
from torchvision import transforms as T

from selfsup.data.builtin import cache_dir
from selfsup.data.coord_views import AsymmetricViews, CoordViews
from selfsup.data.dino_views import DINOViews
from selfsup.data.masking import BlockMaskGenerator, MaskedViews, iBOTViews
from selfsup.data.members import media_member
from selfsup.data.multiblock import MultiBlockViews
from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream
from selfsup.data.views import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    SWAV_MEAN,
    SWAV_STD,
    MultiCropViews,
    RotationViews,
    SimCLRViews,
    ViewRecipe,
    WorkerCrops,
)

BATCH = 64
SIDES = [(500, 375)] * 5 + [(375, 500)] * 2 + [(500, 333), (333, 500)]  # ImageNet's most common sizes


def _sample_photos() -> list[Image.Image]:
    from matplotlib.cbook import get_sample_data
    from sklearn.datasets import load_sample_image

    with get_sample_data("grace_hopper.jpg") as f:
        hopper = Image.open(f).convert("RGB")
    return [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")] + [hopper]


def _photo_samples(count: int, seed: int = 0) -> Iterator[dict[str, Any]]:
    """``count`` shard samples: a random crop of a sample photo rescaled to an ImageNet-like size."""
    rng = random.Random(seed)
    sources = _sample_photos()
    for i in range(count):
        src = sources[i % len(sources)]
        if rng.random() < 0.7:
            width, height = rng.choice(SIDES)
        else:
            aspect = rng.uniform(3 / 4, 16 / 9) ** rng.choice((1, -1))
            long = rng.randint(300, 640)
            width, height = (long, round(long / aspect)) if aspect >= 1 else (round(long * aspect), long)
        crop = rng.uniform(0.5, 1.0)
        w, h = round(src.width * crop), round(src.height * crop)
        x, y = rng.randint(0, src.width - w), rng.randint(0, src.height - h)
        image = src.crop((x, y, x + w, y + h)).resize((width, height), Image.BICUBIC)
        buf = io.BytesIO()
        ext = "png" if i % 16 == 15 else "jpg"
        image.save(buf, "PNG" if ext == "png" else "JPEG", quality=90)
        yield {"__key__": f"{i:06d}", ext: buf.getvalue(), "cls": str(i % len(sources)).encode()}


def photo_source(count: int, shards: int = 2) -> Source:
    """The real-photo set of ``count`` images as ``shards`` shards in the cache (written on first use; a loader
    worker reads whole shards, so as many shards as workers at least)."""
    from selfsup.data.manifest import Manifest
    from selfsup.data.shards import write_shard_set

    out = cache_dir() / (f"bench-photos-{count}" if shards == 2 else f"bench-photos-{count}-{shards}shards")
    if not (out / "manifest.json").is_file():
        manifest = Manifest(name=out.name, channels=3, classes=["china", "flower", "hopper"])
        write_shard_set(out, manifest, {"train": _photo_samples(count)}, totals={"train": count}, progress=False,
                        maxcount=max(-(-count // shards), 1))
    return Source(f"shards:{out}")


class PILBlur:
    """lightly's GaussianBlur: PIL's GaussianBlur with radius ~ U(0.1, 2)."""

    def __call__(self, image: Image.Image) -> Image.Image:
        return image.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def pil_view(size: int, scale: tuple[float, float], jitter: tuple[float, ...] | None = None, blur_p: float = 0.0,
             solarize_p: float = 0.0, mean: tuple[float, ...] = IMAGENET_MEAN, std: tuple[float, ...] = IMAGENET_STD,
             flip: bool = True, bicubic: bool = False) -> T.Compose:
    """One view as a per-image PIL pipeline (lightly's SimCLRTransform / SwaVTransform style; DINO's and iBOT's
    official crops are ``bicubic``)."""
    interpolation = T.InterpolationMode.BICUBIC if bicubic else T.InterpolationMode.BILINEAR
    steps: list[Any] = [T.RandomResizedCrop(size, scale=scale, interpolation=interpolation)]
    steps += [T.RandomHorizontalFlip()] if flip else []
    if jitter:
        steps += [T.RandomApply([T.ColorJitter(*jitter)], p=0.8), T.RandomGrayscale(0.2)]
    if blur_p:
        steps.append(T.RandomApply([PILBlur()], p=blur_p))
    if solarize_p:
        steps.append(T.RandomSolarize(128, p=solarize_p))
    return T.Compose([*steps, T.ToTensor(), T.Normalize(mean, std)])


@dataclass
class PILRecipe:
    """A method's views as its users make them per image: each image through every one of ``views``; then
    ``per_image()`` (masks a dataset draws with each image: iBOT's) and ``per_batch(B)`` (masks a collator draws
    per batch: I-JEPA's)."""

    views: list[T.Compose]
    per_image: Callable[[], Any] | None = None
    per_batch: Callable[[int], Any] | None = None


def multicrop_pil(recipe: DINOViews) -> list[T.Compose]:
    """DINO's and iBOT's official per-image multi-crop for ``recipe``'s sizes and scales (bicubic crops, flip,
    jitter 0.4/0.4/0.2/0.1 at 0.8, grayscale 0.2; blur 1.0 / 0.1 / 0.5, solarize 0 / 0.2 / 0)."""
    jitter = (0.4, 0.4, 0.2, 0.1)
    first, second = [pil_view(recipe.global_size, recipe.global_scale, jitter, recipe.blur_p[k], recipe.solarize_p[k],
                              bicubic=True) for k in (0, 1)]
    local = pil_view(recipe.local_size, recipe.local_scale, jitter, recipe.blur_p[2], recipe.solarize_p[2],
                     bicubic=True)
    return [first, second] + [local] * recipe.num_local


def ibot_masks(masks: BlockMaskGenerator, seed: int = 0) -> Callable[[], list[torch.Tensor]]:
    """iBOT's dataset: a blockwise mask of each global crop, drawn with the image (its own ratio each)."""
    rng = random.Random(seed)
    return lambda: [masks.block_mask(masks.draw_ratio(rng), rng) for _ in range(2)]


def photo_methods() -> dict[str, tuple[ViewRecipe, PILRecipe]]:
    """Each method's ImageNet view recipe, and the same views as per-image PIL pipelines."""
    simclr, pixpro = (0.8, 0.8, 0.8, 0.2), (0.4, 0.4, 0.2, 0.1)
    dino = DINOViews()  # the paper's: 2 x 224 + 8 x 96
    ibot = iBOTViews(num_local=10, global_scale=(0.25, 1.0), local_scale=(0.05, 0.25))  # its ViT-S/16 recipe
    ijepa = MultiBlockViews(224, 16)
    return {
        "SimCLR": (SimCLRViews(224), PILRecipe([pil_view(224, (0.08, 1.0), simclr, 0.5)] * 2)),
        "SwAV": (MultiCropViews(), PILRecipe([pil_view(224, (0.14, 1.0), simclr, 0.5, 0, SWAV_MEAN, SWAV_STD)] * 2
                 + [pil_view(96, (0.05, 0.14), simclr, 0.5, 0, SWAV_MEAN, SWAV_STD)] * 6)),
        "PixPro": (CoordViews(224), PILRecipe([pil_view(224, (0.08, 1.0), pixpro, 1.0),
                                               pil_view(224, (0.08, 1.0), pixpro, 0.1, 0.2)])),
        "BYOL": (AsymmetricViews(224, additive_brightness=True),  # MoCo v3, Barlow Twins, VICReg: the same views
                 PILRecipe([pil_view(224, (0.08, 1.0), pixpro, 1.0), pil_view(224, (0.08, 1.0), pixpro, 0.1, 0.2)])),
        "SimMIM": (MaskedViews(192), PILRecipe([pil_view(192, (0.67, 1.0))])),
        "RotNet": (RotationViews(224), PILRecipe([pil_view(224, (0.6, 1.0))])),
        "DINO": (dino, PILRecipe(multicrop_pil(dino))),
        "iBOT": (ibot, PILRecipe(multicrop_pil(ibot), per_image=ibot_masks(ibot.masks))),
        "I-JEPA": (ijepa, PILRecipe([pil_view(224, ijepa.scale, flip=False)], per_batch=ijepa.masks.batch)),
    }


def _encoded(source: Source) -> list[bytes]:
    return [s[media_member(s)] for part in source.split("train").parts for s in part.samples()]


def decode_floor(images: list[bytes], half: bool) -> Callable[[], int]:
    """Decoding alone, in full or at half scale (JPEG DCT scaling; other formats in full)."""

    def run() -> int:
        for data in images:
            with Image.open(io.BytesIO(data)) as image:
                if half:
                    image.draft("RGB", (image.width // 2, image.height // 2))
                np.asarray(image.convert("RGB"))
        return len(images)

    return run


def torchvision_decode(images: list[bytes], device: torch.device) -> Callable[[], int]:
    """The JPEGs among ``images`` decoded in one batch by ``torchvision.io.decode_jpeg`` on ``device`` (nvJPEG
    on CUDA, libjpeg-turbo on the CPU)."""
    from torchvision.io import decode_jpeg

    jpegs = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data in images if data[:2] == b"\xff\xd8"]
    decode_jpeg(jpegs[:1], device=device)  # the decoder's start (nvJPEG's handle) is not part of the rate

    def run() -> int:
        decoded = decode_jpeg(jpegs, device=device)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return len(decoded)

    return run


def pil_baseline(images: list[bytes], recipe: PILRecipe) -> Callable[[], int]:
    """Per image: PIL decode, each view's PIL pipeline (and the recipe's masks); views stacked per batch."""

    def run() -> int:
        for start in range(0, len(images), BATCH):
            out = []
            for data in images[start:start + BATCH]:
                with Image.open(io.BytesIO(data)) as image:
                    rgb = image.convert("RGB")
                out.append([view(rgb) for view in recipe.views] + (recipe.per_image() if recipe.per_image else []))
            [torch.stack(v) for v in zip(*out)]
            if recipe.per_batch:
                recipe.per_batch(len(out))
        return len(images)

    return run


def selfsup_stream(source: Source, views: ViewRecipe) -> Callable[[], int]:
    """One pass of a loader worker's stream (decode, views, batching) over the set."""
    parts = source.split("train").parts
    return lambda: sum(len(b["label"]) for b in ShardStream(parts, views, BATCH, 3, repeat=False, num_classes=3))


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    if isinstance(value, list):
        return [_to(v, device) for v in value]
    return value.to(device, non_blocking=True)


def device_views(source: Source, views: ViewRecipe, device: torch.device, num_classes: int) -> Callable[[], int]:
    """One pass of the device's part of ``augment_on: device`` over the train set: the views made on ``device``
    from the uint8 crops the workers send (cut once beforehand, already on the device); returns the images."""
    stream = ShardStream(source.split("train").parts, WorkerCrops(views), BATCH, source.channels, repeat=False,
                         num_classes=num_classes)
    batches = [_to(batch["crops"], device) for batch in stream]

    def run() -> int:
        for crops in batches:
            views.from_crops(crops, on_device=True)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return sum(len(crops["sizes"]) for crops in batches)

    return run


def photo_rows(count: int, repeats: int, best_rate: Callable[[Callable[[], int], int], float],
               device: torch.device, methods: list[str] | None = None) -> list[dict]:
    """The real-photo table (of ``methods``; None: all): printed, and returned as JSON rows. The device's part of
    the split is measured on a GPU only (on a CPU it is the batched torch ops, ~13 ms a 224 px view)."""
    source = photo_source(count)
    images = _encoded(source)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    full = best_rate(decode_floor(images, half=False), repeats)
    half = best_rate(decode_floor(images, half=True), repeats)
    torch.set_num_threads(threads)
    on_device = best_rate(torchvision_decode(images, device), repeats)
    torch.set_num_threads(1)
    print(f"\nreal photos ({count}: ImageNet sizes, JPEG q90 + 1/16 PNG), one process, 1 thread, images/s, best of "
          f"{repeats}; decode-only floor: {full:.0f} full, {half:.0f} at half scale (DCT); the JPEGs decoded in one "
          f"batch by torchvision's decode_jpeg on {device} ({threads} threads): {on_device:.0f}")
    on_gpu = device.type != "cpu"
    print(f"{'method':<8} {'PIL per image':>13} {'selfsup workers':>15} {'x PIL':>6} {'device split: worker':>21}"
          f" {'% of decode':>11}" + (f" {'device ' + str(device):>14}" if on_gpu else ""))
    rows = [{"data": "photos", "method": "decode", "full": full, "dct_half": half, "decode_jpeg_device": on_device,
             "device": str(device)}]
    for name, (recipe, pil) in photo_methods().items():
        if methods is not None and name not in methods:
            continue
        baseline = best_rate(pil_baseline(images, pil), repeats)
        workers = best_rate(selfsup_stream(source, recipe), repeats)
        split = best_rate(selfsup_stream(source, WorkerCrops(recipe)), repeats)
        row = {"data": "photos", "method": name, "pil_baseline": baseline, "workers": workers,
               "device_split_workers": split, "decode_full": full}
        if on_gpu:
            torch.set_num_threads(threads)
            row["device_split_device"] = best_rate(device_views(source, recipe, device, 3), repeats)
            torch.set_num_threads(1)
        rows.append(row)
        print(f"{name:<8} {baseline:>13.0f} {workers:>15.0f} {workers / baseline:>5.1f}x {split:>21.0f} "
              f"{workers / full:>10.0%}" + (f" {row['device_split_device']:>14.0f}" if on_gpu else ""))
    torch.set_num_threads(threads)
    return rows
