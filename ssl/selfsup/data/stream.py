"""Streaming parts (shards or folder chunks) as decoded, transformed batches, split over ranks and workers."""

from __future__ import annotations

import logging
import multiprocessing
import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, IterableDataset, default_collate, get_worker_info

from selfsup.data.crops import Cropped, collate_crops, decode_crops
from selfsup.data.limits import Limits
from selfsup.data.members import (
    IMAGE_EXTENSIONS,
    VIDEO_EXTENSIONS,
    BadSample,
    decode_label,
    decode_sample,
    media_member,
    refused_members,
)
from selfsup.data.parts import PartError
from selfsup.data.seek import decode_clip_crops
from selfsup.data.views import ViewRecipe
from selfsup.errors import DataError

log = logging.getLogger("selfsup.data")


class Part(Protocol):
    """What a stream reads: a named unit of ``count`` samples (ShardPart, FilePart)."""

    name: str
    count: int

    def samples(self) -> Iterator[dict[str, Any]]: ...


class HealthTally:
    """Samples read, skipped (unusable) and members refused since the last ``take()``, by part name; ``usable``
    counts the decoded samples and ``reported`` holds the parts whose skips were logged since the stream began
    (never reset)."""

    def __init__(self) -> None:
        self.seen, self.skipped, self.refused = 0, Counter(), Counter()
        self.usable, self.reported = 0, set()

    def take(self) -> dict[str, Any]:
        """The counts so far as a plain dict (carried in each batch under ``"health"``), then reset."""
        out = {"seen": self.seen, "skipped": dict(self.skipped), "refused": dict(self.refused)}
        self.seen, self.skipped, self.refused = 0, Counter(), Counter()
        return out


class ShardStream(IterableDataset):
    """Batches from a list of parts: parts split over ranks then workers, a sample shuffle buffer, decoding,
    the view recipe, and batching, all inside the loader's workers.

    ``repeat=True`` (training) loops over this worker's parts forever, reshuffling each pass; `EpochLoader` cuts
    the stream into equal epochs, so every rank yields the same number of batches. ``repeat=False``
    (evaluation) reads each sample exactly once, in part order, and keeps a partial last batch.
    Rank and world size are given explicitly: workers cannot see the process group. Epoch ``e``'s shard order,
    shuffle and (in workers) view randomness depend only on (seed, e, rank, worker), so a run resumed at an
    epoch boundary reads and augments exactly what the uninterrupted run would have (`set_epoch`).

    ``media="video"``: samples are videos; with a transform that cuts its clips while decoding (``crop_specs``,
    `selfsup.data.seek`) only the clips' frames are decoded, else the whole video, to uint8 (T, C, H, W), and
    the transform gets a batch (B, T, C, H, W) when the videos share a shape. Unusable samples (undecodable
    image or video, bad label) are skipped; a part that breaks off (truncated or missing shard) or ends before the
    sample count of its manifest (cut at a member boundary, zero-filled) is skipped with a warning and its missing
    samples count as skipped.
    ``segments`` > 0 (a dense run: classes, background included): each sample's ``mask.png`` is decoded too and
    the batch carries ``"mask"`` (B, H, W) as the transform's ``mask`` makes it (un-augmented views only); a
    sample without a usable mask is skipped. Training (``repeat=True``) stops with a DataError when a whole pass
    over a worker's parts yields no usable sample, rather than looping forever. Each batch carries the counts
    under ``"health"`` (see `selfsup.data.health.DataHealth`).
    """

    def __init__(
        self,
        parts: Sequence[Part],
        transform: ViewRecipe,
        batch_size: int,
        channels: int,
        *,
        repeat: bool,
        num_classes: int = 0,
        shuffle_buffer: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        media: str = "image",
        label: str = "cls",
        segments: int = 0,
    ) -> None:
        super().__init__()
        self.media, self.label, self.segments = media, label, segments
        self.parts, self.transform, self.batch_size, self.channels = list(parts), transform, batch_size, channels
        self.repeat, self.num_classes, self.shuffle_buffer, self.seed = repeat, num_classes, shuffle_buffer, seed
        self.rank, self.world_size = rank, world_size
        self.limits = Limits.from_env()  # the caps on pixels and member sizes (see selfsup.data.limits)
        self._epoch = multiprocessing.Value("q", 0, lock=False)  # shared memory: persistent workers see updates

    def set_epoch(self, epoch: int) -> None:
        """The epoch the next ``iter()`` streams (set before the loader's iterator starts its workers)."""
        self._epoch.value = epoch

    def my_parts(self, pass_index: int, worker: int, num_workers: int, rank: int | None = None) -> list[Part]:
        """The parts that ``worker`` of this rank (or of ``rank``) reads in pass ``pass_index``."""
        parts = list(self.parts)
        if self.repeat:
            random.Random(self.seed + pass_index).shuffle(parts)  # same permutation on every rank and worker
        return parts[self.rank if rank is None else rank :: self.world_size][worker::num_workers]

    def _read(self, part: Part, tally: HealthTally) -> Iterator[dict[str, Any]]:
        """The part's samples; the samples it lacks (it breaks off, or ends early: cut at a member boundary,
        zero-filled, empty) count as read and skipped, with a warning."""
        read, problem = 0, "it ends early"
        try:
            for sample in part.samples():
                read += 1
                sample["__part__"] = part.name
                yield sample
        except PartError as err:
            problem = str(err)
        lost = part.count - read
        if lost > 0:
            tally.skipped[part.name] += lost
            tally.seen += lost
            log.warning("skipping the rest of %s after %d of %d samples: %s", part.name, read, part.count, problem)

    def _samples(self, pass_index: int, worker: int, num_workers: int, tally: HealthTally) -> Iterator[dict]:
        while True:
            parts = self.my_parts(pass_index, worker, num_workers)
            if not parts and self.repeat:
                raise RuntimeError(
                    f"rank {self.rank} worker {worker} has no part of {len(self.parts)}: use fewer workers/ranks "
                    "or write more, smaller shards"
                )
            usable = tally.usable
            stream = (sample for part in parts for sample in self._read(part, tally))
            if self.shuffle_buffer > 1:
                rng = random.Random(hash((self.seed, pass_index, self.rank, worker)))
                stream = _shuffled(stream, self.shuffle_buffer, rng)
            yield from stream
            if not self.repeat:
                return
            if tally.usable == usable:  # another pass would find nothing either: stop instead of looping forever
                names = ", ".join(part.name for part in parts[:3]) + (", ..." if len(parts) > 3 else "")
                raise DataError(
                    f"none of the {len(parts)} training part(s) read by rank {self.rank} loader worker {worker} "
                    f"({names}) holds a usable sample: they are empty, cut short, missing or unreadable; check "
                    "them with `selfsup shards inspect`, then write them again or remove them from the manifest"
                )
            pass_index += 1000  # later passes of this iterator: fresh permutations, distinct from next epoch's

    def _decoded(self, raw: dict[str, Any], tally: HealthTally, rng: random.Random, specs: list | None
                 ) -> dict[str, Any] | None:
        """The sample's image (or, with the crop ``specs`` of views cut while decoding, its `Cropped` views or
        clips) and label; None (counted as skipped) if unusable."""
        refused = refused_members(raw)
        if refused:
            tally.refused[raw["__part__"]] += len(refused)
        tally.seen += 1
        try:
            if specs is None:
                decoded = decode_sample(raw, self.channels, self.num_classes, self.media, self.limits, self.label,
                                        self.segments)
            else:
                label = decode_label(raw, self.num_classes, self.label)
                video = self.media == "video"
                decode = decode_clip_crops if video else decode_crops
                data = raw[media_member(raw, VIDEO_EXTENSIONS if video else IMAGE_EXTENSIONS)]
                crops = decode(data, self.channels, specs, rng, self.limits)
                decoded = {"image": crops, "label": label}
        except BadSample as err:
            tally.skipped[raw["__part__"]] += 1
            if raw["__part__"] not in tally.reported:  # the first reason per part, not one line per sample
                tally.reported.add(raw["__part__"])
                log.warning("skipping unusable samples of %s, the first: %s", raw["__part__"], err)
            return None
        tally.usable += 1
        return decoded

    def __iter__(self) -> Iterator[Any]:
        info = get_worker_info()
        worker, num_workers = (info.id, info.num_workers) if info else (0, 1)
        pass_index = self._epoch.value
        if info is not None:  # views draw from the worker's RNG: make it a function of (seed, epoch, rank, worker)
            torch.manual_seed(hash((self.seed, pass_index, self.rank, worker)) & (2**63 - 1))
        rng = random.Random(int(torch.randint(2**62, ())))  # crop boxes: cheap per-image draws, seeded as the views
        specs = self.transform.crop_specs
        tally = HealthTally()
        images: list[torch.Tensor] = []
        labels: list[int] = []
        masks: list[torch.Tensor] = []
        for raw in self._samples(pass_index, worker, num_workers, tally):
            decoded = self._decoded(raw, tally, rng, specs)
            if decoded is None:
                continue
            images.append(decoded["image"])
            labels.append(decoded["label"])
            if "mask" in decoded:
                masks.append(decoded["mask"])
            if len(images) == self.batch_size:
                yield self._views(images, labels, tally, masks)
                images, labels, masks = [], [], []
        if images:
            yield self._views(images, labels, tally, masks)

    def _views(self, images: list[torch.Tensor | Cropped], labels: list[int], tally: HealthTally,
               masks: list[torch.Tensor] = ()) -> dict[str, Any]:
        """The transform of a batch: from its crops when they were cut while decoding, else batched when all
        images share a size, image by image otherwise."""
        if isinstance(images[0], Cropped):
            out = self.transform.from_crops(collate_crops(images))
        elif all(image.shape == images[0].shape for image in images):
            out = self.transform.batch(torch.stack(images))
        else:
            out = default_collate([self.transform(image) for image in images])
        out["label"] = torch.tensor(labels)
        if masks:
            out["mask"] = torch.stack([self.transform.mask(mask) for mask in masks]).long()
        out["health"] = tally.take()
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
    """A DataLoader over an endless stream, cut into epochs of exactly ``num_batches`` batches.

    ``current_epoch`` (e.g. the trainer's) tells the stream which epoch it streams; without it the loader counts
    its own epochs from 0.
    """

    def __init__(self, loader: DataLoader, num_batches: int, current_epoch: Callable[[], int] | None = None) -> None:
        self.loader, self.num_batches, self.current_epoch = loader, num_batches, current_epoch
        self._epochs = 0

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[Any]:
        # A generator: the epoch is read at the first next(), because Lightning creates a resumed run's iterator
        # before it restores the trainer's epoch counter.
        self.loader.dataset.set_epoch(self.current_epoch() if self.current_epoch else self._epochs)
        self._epochs += 1
        yield from islice(iter(self.loader), self.num_batches)
