"""Real photos of mixed sizes and formats through the fused decode + crop: both view paths, bad files."""

import io
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream
from selfsup.data.views import MultiCropViews, SimCLRViews


def photos(n: int, seed: int = 0) -> list[Image.Image]:
    """``n`` crops of scikit-learn's sample photos, rescaled to varied sizes (20 to 90 px a side)."""
    from sklearn.datasets import load_sample_image

    sources = [Image.fromarray(load_sample_image(name)) for name in ("china.jpg", "flower.jpg")]
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        src = sources[i % 2]
        w, h = rng.integers(100, 400, size=2)
        x, y = rng.integers(0, src.width - w), rng.integers(0, src.height - h)
        out.append(src.crop((x, y, x + w, y + h)).resize(tuple(int(v) for v in rng.integers(20, 90, size=2))))
    return out


def write_mixed(folder: Path, n: int = 40) -> Path:
    """A labelled RGB set of JPEGs and PNGs of different sizes, a few grayscale and one CMYK."""
    for i, image in enumerate(photos(n)):
        path = folder / str(i % 2) / f"{i:03d}.{'png' if i % 5 == 0 else 'jpg'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image = image.convert("L") if i % 7 == 3 else image.convert("CMYK") if i == 11 else image
        image.save(path, quality=90) if path.suffix == ".jpg" else image.save(path)
    return folder


def bomb_png(width: int, height: int) -> bytes:
    """A valid 1x1 gray PNG whose header claims ``width`` x ``height`` pixels (a decompression bomb's header)."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


def test_bad_files_are_skipped_and_counted_and_odd_ones_converted(tmp_path):
    """A truncated JPEG, a 30000 x 30000 bomb header and a non-image are skipped (counted); a 16-bit PNG, a CMYK
    JPEG, a grayscale JPEG and images smaller than the crop become views."""
    folder = write_mixed(tmp_path / "set", 12)
    good = (folder / "0" / "002.jpg").read_bytes()
    (folder / "0" / "truncated.jpg").write_bytes(good[: len(good) // 2])
    (folder / "0" / "bomb.png").write_bytes(bomb_png(30000, 30000))
    (folder / "0" / "noise.jpg").write_bytes(b"not an image at all")
    Image.fromarray(np.arange(30 * 20, dtype=np.uint16).reshape(30, 20) * 100).save(folder / "1" / "deep.png")
    source = Source(f"folder:{folder}")
    stream = ShardStream(source.split("train").parts, SimCLRViews(64), 100, 3, repeat=False, num_classes=2)
    batches = list(stream)
    assert sum(len(b["label"]) for b in batches) == 13
    assert sum(sum(b["health"]["skipped"].values()) for b in batches) == 3
    assert all(v.shape == (13, 3, 64, 64) and torch.isfinite(v).all() for v in batches[0]["views"])


@pytest.mark.parametrize("views", [SimCLRViews(32), MultiCropViews((32, 16), (2, 3), ((0.3, 1), (0.05, 0.3)))])
def test_mixed_sizes_make_batched_views_with_the_fused_crop(tmp_path, views):
    folder = write_mixed(tmp_path / "set", 20)
    stream = ShardStream(Source(f"folder:{folder}").split("train").parts, views, 8, 3, repeat=False, num_classes=2)
    batch = next(iter(stream))
    assert [tuple(v.shape[-3:]) for v in batch["views"]] == [(3, s.size, s.size) for s in views.crop_specs]
    assert len(batch["label"]) == 8


@pytest.mark.slow
@pytest.mark.parametrize("augment_on", ["workers", "device"])
def test_fit_on_mixed_size_photo_shards(tmp_path, augment_on):
    """JPEGs and PNGs of many sizes, grayscale among RGB, as shards, through `selfsup fit` on both view paths."""
    from clirun import REPO, TINY, selfsup

    write_mixed(tmp_path / "photos", 64)
    selfsup("shards", "write", "--from", str(tmp_path / "photos"), "--out", str(tmp_path / "shards"), "--maxcount",
            "32", "--quiet", cwd=tmp_path)
    selfsup("fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), *TINY, "--data.init_args.source",
            f"shards:{tmp_path / 'shards'}", "--data.init_args.views", "selfsup.data.views.SimCLRViews",
            "--data.init_args.views.init_args.size", "32", "--data.init_args.image_size", "32",
            "--data.init_args.augment_on", augment_on, "--data.init_args.batch_size", "16", "--trainer.max_steps",
            "3", "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]", "--trainer.enable_progress_bar",
            "false", cwd=tmp_path)
    metrics = next(tmp_path.glob("runs/*/version_0/metrics.csv")).read_text()
    import csv

    losses = [float(r["train/loss_step"]) for r in csv.DictReader(io.StringIO(metrics)) if r.get("train/loss_step")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    waits = [float(r["train/data_wait"]) for r in csv.DictReader(io.StringIO(metrics)) if r.get("train/data_wait")]
    assert len(waits) == 2 and all(0 <= w < 1 for w in waits)  # the first step of an epoch has no previous end
