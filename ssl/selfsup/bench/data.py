"""`selfsup bench data`: images/s of one loader worker reading shards (read, decode, decode + SimCLR views),
against the same images as PIL files through a plain torch Dataset; and the same views finished on the training
device from the workers' uint8 crops (``augment_on: device``).

Two sets: MNIST-5k (28x28 grayscale PNG) and RGB-64 (64x64 colour JPEGs made from the same digits, written once
to the cache as a folder and as shards). Each number is the best of ``--repeats`` passes over the 4,000 training
images in this process (one worker); more workers scale it until the cores run out.

Videos: clips/s of one worker over the built-in moving-MNIST train shards (read, decode every frame with PyAV,
decode + CVRL's two clips per video as experiments/cvrl/moving-mnist.yaml makes them). No file baseline.

Kinetics-like videos (``--kinetics N``, `selfsup.bench.video`): CVRL's clips decoded by seeking against a decode
of every frame, the CVRL training loader against a plain decode, and peak memory.

Real photos (``--photos N``, `selfsup.bench.photos`; ``--photo-methods`` picks rows): each image method's ImageNet
views from photos of ImageNet's sizes, against a per-image PIL pipeline and the decode-only floor.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from selfsup.bench.cli import at_least
from selfsup.bench.photos import device_views, photo_methods, photo_rows
from selfsup.bench.video import video_rows
from selfsup.data.builtin import cache_dir
from selfsup.data.folders import list_folder
from selfsup.data.members import decode_image, decode_sample
from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream
from selfsup.data.views import EvalView, SimCLRViews, ViewRecipe

BATCH = 256


def _written_once(root: Path, write: Callable[[Path], None]) -> Path:
    """``root`` after ``write(root)`` has completed once (a marker file records that it did)."""
    if not (root / ".complete").is_file():
        write(root)
        (root / ".complete").touch()
    return root


def _mnist_digits() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The MNIST-5k train digits as uint8 batches (B, 1, 28, 28) with labels."""
    stream = ShardStream(Source("builtin:mnist5k").split("train").parts, EvalView(28), BATCH, 1, repeat=False,
                         num_classes=10)
    for batch in stream:
        yield (batch["image"] * 255).round().to(torch.uint8), batch["label"]


def _write_mnist_files(root: Path) -> None:
    index = 0
    for digits, labels in _mnist_digits():
        for digit, label in zip(digits, labels.tolist()):
            path = root / "train" / str(label) / f"{index:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(digit[0].numpy()).save(path)
            index += 1


def _write_rgb64(root: Path) -> None:
    """64x64 RGB JPEGs of the digits (tinted ink on tinted paper), then the same as shards."""
    gen = torch.Generator().manual_seed(0)
    index = 0
    for digits, labels in _mnist_digits():
        ink = torch.nn.functional.interpolate(digits.float(), size=64, mode="bilinear") / 255
        tint, paper = torch.rand(len(ink), 3, 1, 1, generator=gen), torch.rand(len(ink), 3, 1, 1, generator=gen)
        images = (255 * (paper * (1 - ink) + tint * ink)).round().clamp(0, 255).to(torch.uint8)
        for image, label in zip(images, labels.tolist()):
            path = root / "train" / str(label) / f"{index:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.permute(1, 2, 0).numpy()).save(path, quality=90)
            index += 1


def bench_sets() -> dict[str, tuple[Source, Path, ViewRecipe]]:
    """Each bench data set: its shards, the same images as a folder of files, and its SimCLR views."""
    from selfsup.shards_cli import main as shards

    def as_shards(root: Path) -> Source:
        if not (root / "shards").is_dir():
            shards(["write", "--from", str(root), "--out", str(root / "shards"), "--maxcount", "500", "--quiet"])
        return Source(f"shards:{root / 'shards'}")

    mnist = _written_once(cache_dir() / "bench-mnist5k-files", _write_mnist_files)
    rgb = _written_once(cache_dir() / "bench-rgb64", _write_rgb64)
    return {
        "MNIST-5k 28x28 PNG": (as_shards(mnist), mnist,
                               SimCLRViews(28, flip_p=0, jitter_strength=0.5, grayscale_p=0, blur_p=0)),
        "RGB-64 64x64 JPEG": (as_shards(rgb), rgb, SimCLRViews(64)),
    }


class PILFiles(Dataset):
    """The baseline: image files opened with PIL one by one, views applied per image."""

    def __init__(self, files: list[tuple[Path, int]], channels: int, stage: str, views: ViewRecipe) -> None:
        self.files, self.channels, self.stage, self.views = files, channels, stage, views

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        path, label = self.files[i]
        data = path.read_bytes()
        if self.stage == "read":
            return {"label": label}
        image = decode_image(data, self.channels)
        out = {"image": image} if self.stage == "decode" else self.views(image)
        return {**out, "label": label}


def shard_stage(source: Source, stage: str, views: ViewRecipe) -> Callable[[], int]:
    """One pass over the train shards at ``stage``; returns the images it produced."""
    parts = source.split("train").parts

    def raw() -> Iterator[dict]:
        return (sample for part in parts for sample in part.samples())

    def run() -> int:
        if stage == "read":
            return sum(1 for _ in raw())
        if stage == "decode":
            return sum(1 for s in raw() if decode_sample(s, source.channels, 10, source.media)["image"] is not None)
        stream = ShardStream(parts, views, BATCH, source.channels, repeat=False, num_classes=10, media=source.media)
        return sum(len(batch["label"]) for batch in stream)

    return run


def file_stage(root: Path, channels: int, stage: str, views: ViewRecipe) -> Callable[[], int]:
    dataset = PILFiles(list_folder(root).splits["train"], channels, stage, views)
    return lambda: sum(len(batch["label"]) for batch in DataLoader(dataset, batch_size=BATCH, num_workers=0))


def best_rate(run: Callable[[], int], repeats: int) -> float:
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        images = run()
        rates.append(images / (time.perf_counter() - start))
    return max(rates)


def clip_rows(repeats: int) -> list[dict]:
    """Videos/s of one worker over moving-MNIST's train shards at each stage; CVRL makes two clips per video."""
    from selfsup.data.clips import ClipViews

    source = Source("builtin:moving-mnist")
    views = ClipViews(32, frames=8, stride=2, scale=(0.3, 1.0), flip_p=0, jitter_strength=0.5, grayscale_p=0,
                      blur_p=(0, 0), solarize_p=(0, 0))
    print("moving-MNIST (32 frames of 64x64 mp4), one worker; clips: 2 x 8 frames at 32 px per video")
    print(f"{'stage':<15} {'videos/s':>9} {'clips/s':>8}")
    rows = []
    for stage in ("read", "decode", "decode + clips"):
        rate = best_rate(shard_stage(source, stage.replace("clips", "views"), views), repeats)
        rows.append({"data": "moving-mnist", "stage": stage, "videos_per_s": rate, "clips_per_s": 2 * rate})
        print(f"{stage:<15} {rate:>9.0f} {2 * rate:>8.0f}")
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="selfsup bench data", description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default=None,
                        help="where `augment_on: device` makes the views (default: cuda when available)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-data.json"))
    parser.add_argument("--clips", action=argparse.BooleanOptionalAction, default=True,
                        help="also the moving-MNIST video rows (videos/s and clips/s)")
    parser.add_argument("--photos", type=int, default=256,
                        help="images in the real-photo set (ImageNet sizes; 0: skip those rows)")
    parser.add_argument("--photo-methods", nargs="+", metavar="METHOD", choices=list(photo_methods()),
                        help=f"only these methods' real-photo rows (of {', '.join(photo_methods())})")
    parser.add_argument("--kinetics", type=int, default=12,
                        help="videos in the Kinetics-like set (10 s, 25 fps, H.264; 0: skip those rows)")
    parser.add_argument("--small", action=argparse.BooleanOptionalAction, default=True,
                        help="also the MNIST-5k and RGB-64 rows")
    args = at_least(parser.parse_args(argv), {"repeats": 1, "photos": 0, "kinetics": 0})
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one loader worker = one core
    sets = bench_sets() if args.small else {}
    rows = []
    print(f"images/s, one worker (1 thread), best of {args.repeats}; views: 2 SimCLR views per image")
    print(f"{'data':<20} {'stage':<15} {'shards':>9} {'PIL files':>10} {'ratio':>6}")
    for name, (source, root, views) in sets.items():
        for stage in ("read", "decode", "decode + views"):
            shard = best_rate(shard_stage(source, stage, views), args.repeats)
            files = best_rate(file_stage(root, source.channels, stage, views), args.repeats)
            rows.append({"data": name, "stage": stage, "shards": shard, "files": files})
            print(f"{name:<20} {stage:<15} {shard:>9.0f} {files:>10.0f} {shard / files:>5.1f}x")
    torch.set_num_threads(threads)  # the training process's threads
    print(f"\nviews finished on {device} from the workers' uint8 crops (augment_on: device; {threads} threads), "
          "images/s, against decode + views in one worker")
    on_device = []
    for row, (name, (source, _, views)) in zip(rows[2::3], sets.items()):
        rate = best_rate(device_views(source, views, device, 10), args.repeats)
        on_device.append({"data": name, "device": str(device), "views": rate, "worker_decode_views": row["shards"]})
        print(f"{name:<20} {rate:>9.0f} vs {row['shards']:>7.0f} in a worker")
    photos = photo_rows(args.photos, args.repeats, best_rate, device, args.photo_methods) if args.photos else []
    clips = clip_rows(args.repeats) if args.clips else []
    videos = video_rows(args.kinetics, args.repeats, best_rate) if args.kinetics else []
    args.out.parent.mkdir(parents=True, exist_ok=True)
    out = {"rows": rows, "device_views": on_device, "clips": clips, "photos": photos, "kinetics": videos}
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written: {args.out}")
    return 0
