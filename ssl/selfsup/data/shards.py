"""Writing samples to webdataset tar shards, and streaming them back as decoded, transformed batches."""

from __future__ import annotations

import io
import random
import shutil
from collections.abc import Iterable, Iterator
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from selfsup.data.manifest import Split
from selfsup.data.views import ViewRecipe

IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "webp")


def write_split(
    samples: Iterable[dict[str, Any]], folder: Path, split: str, maxcount: int = 1000, progress: bool = True
) -> Split:
    """Write webdataset samples (dicts with ``__key__`` and encoded members) to ``folder/split-NNNNNN.tar``."""
    counts: dict[str, int] = {}
    pattern = str(Path(folder) / f"{split}-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for sample in _progress(samples, f"writing {split} shards", progress):
            sink.write(sample)
            name = Path(sink.fname).name
            counts[name] = counts.get(name, 0) + 1
    return Split(shards=list(counts), counts=list(counts.values()))


def _progress(items: Iterable, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=" samples", leave=False)


def publish(tmp: Path, final: Path) -> None:
    """Move a finished shard set into place atomically (a concurrent writer that lost the race is discarded)."""
    try:
        tmp.rename(final)
    except OSError:
        if (final / "manifest.json").is_file():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            raise


def decode_sample(sample: dict[str, Any], channels: int) -> dict[str, Any]:
    """Decode one raw webdataset sample to ``{"image": uint8 (C, H, W), "label": int}`` (label -1: none).

    Only image bytes and the ``cls`` text are read; every other member is ignored, so nothing is unpickled.
    """
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None:
        raise ValueError(f"sample {sample.get('__key__')} has no image member ({', '.join(IMAGE_EXTENSIONS)})")
    with Image.open(io.BytesIO(sample[ext])) as decoded:
        pixels = np.asarray(decoded.convert("L" if channels == 1 else "RGB"))
    image = torch.from_numpy(pixels.copy()).reshape(pixels.shape[0], pixels.shape[1], -1).permute(2, 0, 1)
    label = int(sample["cls"].decode()) if "cls" in sample else -1
    return {"image": image, "label": label}


class ShardStream(IterableDataset):
    """Batches from a list of shards: shard split over ranks then workers, a sample shuffle buffer, decoding,
    a per-sample transform, and batching, all inside the loader's workers.

    ``repeat=True`` (training) loops over this worker's shards forever, reshuffling each pass; the loader
    wrapper (`EpochLoader`) cuts the stream into equal epochs, so every rank yields the same number of batches.
    ``repeat=False`` (evaluation) reads each sample exactly once, in shard order, and keeps a partial last batch.
    Rank and world size are given explicitly: workers cannot see the process group.
    """

    def __init__(
        self,
        urls: list[str],
        transform: ViewRecipe,
        batch_size: int,
        channels: int,
        *,
        repeat: bool,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        self.urls, self.transform, self.batch_size, self.channels = list(urls), transform, batch_size, channels
        self.repeat, self.shuffle_buffer, self.seed = repeat, shuffle_buffer, seed
        self.rank, self.world_size = rank, world_size
        self._passes = 0  # counts __iter__ calls in this copy (persistent workers keep their copy)

    def _my_shards(self, pass_index: int, worker: int, num_workers: int) -> list[str]:
        urls = list(self.urls)
        if self.repeat:
            random.Random(self.seed + pass_index).shuffle(urls)  # same permutation on every rank and worker
        return urls[self.rank :: self.world_size][worker::num_workers]

    def _samples(self, worker: int, num_workers: int) -> Iterator[dict[str, Any]]:
        pass_index = self._passes
        self._passes += 1
        while True:
            shards = self._my_shards(pass_index, worker, num_workers)
            if not shards and self.repeat:
                raise RuntimeError(
                    f"rank {self.rank} worker {worker} has no shard of {len(self.urls)}: use fewer workers/ranks "
                    "or write more, smaller shards"
                )
            stream = wds.tarfile_samples([{"url": u} for u in shards])
            if self.shuffle_buffer > 1:
                rng = random.Random(hash((self.seed, pass_index, self.rank, worker)))
                stream = _shuffled(stream, self.shuffle_buffer, rng)
            yield from stream
            if not self.repeat:
                return
            pass_index += 1000  # later passes of this iterator: fresh permutations, distinct from next epoch's

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        images: list[torch.Tensor] = []
        labels: list[int] = []
        for raw in self._samples(worker, num_workers):
            decoded = decode_sample(raw, self.channels)
            images.append(decoded["image"])
            labels.append(decoded["label"])
            if len(images) == self.batch_size:
                yield self._views(images, labels)
                images, labels = [], []
        if images:
            yield self._views(images, labels)

    def _views(self, images: list[torch.Tensor], labels: list[int]) -> dict[str, Any]:
        """The transform of a batch: batched when all images share a size, image by image otherwise."""
        if all(image.shape == images[0].shape for image in images):
            out = self.transform.batch(torch.stack(images))
        else:
            out = default_collate([self.transform(image) for image in images])
        out["label"] = torch.tensor(labels)
        return out


def _shuffled(items: Iterable, size: int, rng: random.Random) -> Iterator:
    buffer: list = []
    for item in items:
        if len(buffer) < size:
            buffer.append(item)
            continue
        k = rng.randrange(size)
        yield buffer[k]
        buffer[k] = item
    rng.shuffle(buffer)
    yield from buffer


class EpochLoader:
    """A DataLoader over an endless stream, cut into epochs of exactly ``num_batches`` batches."""

    def __init__(self, loader: DataLoader, num_batches: int) -> None:
        self.loader, self.num_batches = loader, num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Any]:
        return islice(iter(self.loader), self.num_batches)


def encode_png(image: torch.Tensor) -> bytes:
    """PNG bytes of a uint8 (C, H, W) tensor (1 or 3 channels)."""
    pixels = image.permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(buffer, format="PNG")
    return buffer.getvalue()


