"""The one LightningDataModule: any source, the method's views in the workers, equal epochs on every rank."""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader

from selfsup.data.clips import EvalClips
from selfsup.data.sources import Source
from selfsup.data.stream import EpochLoader, ShardStream
from selfsup.data.views import IMAGENET_MEAN, IMAGENET_STD, DecodedImages, EvalView, ViewRecipe, WorkerCrops
from selfsup.errors import ConfigError


class SSLDataModule(L.LightningDataModule):
    """Streams a source as training views and un-augmented evaluation images.

    Args:
        source: ``builtin:mnist5k``, ``shards:FOLDER`` (a folder with manifest.json),
            ``shards:FOLDER/train-{000000..000127}.tar``, or ``folder:PATH`` (an image folder, read directly).
        batch_size: images per batch on each device (the global batch is this x devices x nodes).
        num_workers: loader processes per device; capped by the shards each rank has.
        views: the training view recipe; by default the method's own (``default_views``).
        image_size: side of evaluation images (default: the data's own size, else the training views' largest side).
        eval_resize: short side before the evaluation centre crop (default: ``image_size``, or as ``eval_crop``).
        eval_crop: the share of the resized short side the evaluation centre crop keeps, so the resize follows the
            image size: 0.875 is ImageNet's 224 of 256, and a 64 px run then evaluates a 64 px crop of a 73 px
            resize. Set it or ``eval_resize``, not both (neither: no margin).
        shuffle_buffer: samples held for shuffling within each worker.
        seed: seed of shard and sample shuffling.
        augment_on: where training views are made: ``workers`` (each loader worker augments its batches) or
            ``device`` (workers decode and cut each view's uint8 crop; colour, blur and normalisation are done
            after the batch reaches the training device, with batched torch operations). ``device`` pays off on
            a GPU, whose augmentation is nearly free next to its step, when workers cannot keep up; on a CPU it
            takes time from the step.
        eval_clips: video sources: clips per video that evaluation averages features over (frames and stride
            as the training views' clips; with ``views`` an ``EvalClips``, that recipe is used as it is).
        label: the label kNN and the probes read: ``cls`` (the sample's class), or a field of the sample's json
            that the data set declares (``builtin:moving-mnist``: ``direction``, the direction of motion).

    ``segments`` (set by a dense probe, not in configs): classes of the segmentation masks, background included;
    when set, every batch carries each sample's ``mask.png`` member as ``"mask"``, and samples without a usable
    mask are skipped and counted. ``input_normalization`` (set by `selfsup knn` and the like, not in configs): the
    mean/std the evaluated backbone was pretrained with, given to evaluation images when the views set none.

    Unusable samples are skipped and counted (`selfsup.data.health.DataHealth`), among them those over the caps
    on pixels per image, pixels per video and bytes per tar member (`selfsup.data.limits`: ``SELFSUP_MAX_*``
    environment variables); compressed shards are refused.
    """

    def __init__(
        self,
        source: str = "builtin:mnist5k",
        batch_size: int = 256,
        num_workers: int = 2,
        views: ViewRecipe | None = None,
        image_size: int | None = None,
        eval_resize: int | None = None,
        eval_crop: float | None = None,
        shuffle_buffer: int = 1000,
        seed: int = 0,
        augment_on: Literal["workers", "device"] = "workers",
        eval_clips: int = 4,
        label: str = "cls",
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigError(f"data.batch_size must be at least 1, got {batch_size}")
        self.source = Source(source)
        self.source.label_classes(label)  # a label the data does not have: ConfigError before anything is written
        self.media = self.source.media
        self.eval_clips, self.label = eval_clips, label
        self.batch_size, self.num_workers, self.views = batch_size, num_workers, views
        if views is not None:
            self._check_media(views)
        self.image_size = image_size or (self.source.builtin.image_size if self.source.builtin else None)
        self.eval_resize, self.shuffle_buffer, self.seed = eval_resize, shuffle_buffer, seed
        self.eval_crop = check_eval_crop(eval_crop, eval_resize)
        if eval_resize and self.image_size and eval_resize > 1.5 * self.image_size:
            rank_zero_warn(f"data.eval_resize {eval_resize} with data.image_size {self.image_size}: evaluation sees "
                           f"only the middle {(self.image_size / eval_resize) ** 2:.0%} of each image; set "
                           "data.eval_crop: 0.875 instead (the resize then follows the image size)")
        if augment_on not in ("workers", "device"):
            raise ConfigError(f"data.augment_on must be 'workers' or 'device', got {augment_on!r}")
        self.augment_on = augment_on
        self.segments = 0
        self.input_normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = None
        self._eval_loaders: dict[tuple[str, int, int, int], DataLoader] = {}  # reused: their workers persist

    @property
    def num_classes(self) -> int:
        """Number of label classes (0: unlabeled)."""
        return len(self.source.label_classes(self.label))

    @property
    def num_channels(self) -> int:
        """Image channels as decoded (1: grayscale, 3: RGB)."""
        return self.source.channels

    @property
    def view_size(self) -> int | None:
        """Side of the training views (the largest crops'; None: not known before the method's default views)."""
        sides = view_sides(self.views)
        return sides[0] if sides else self.image_size

    def prepare_data(self) -> None:
        self.source.resolve()

    def setup(self, stage: str) -> None:
        if self.views is None:
            module = self.trainer.lightning_module if self.trainer else None
            if module is None or not hasattr(module, "default_views"):
                raise ConfigError("data.views is not set and there is no method to take default views from")
            self.views = module.default_views(self._eval_size())
            self._check_media(self.views)

    def _check_media(self, views: ViewRecipe) -> None:
        """Video data needs a video recipe (ClipViews, CVRL's), image data an image recipe, and a normalisation of
        one value per channel (3 values also fit 1-channel images: their average is used)."""
        if views.media != self.media:
            fix = ("use ClipViews with a video method (CVRL)" if self.media == "video"
                   else "give a video source (e.g. builtin:moving-mnist)")
            raise ConfigError(f"data source {self.source.spec!r} holds {self.media}s, but the views "
                              f"{type(views).__name__} are made from {views.media}s; {fix}")
        mean = (views.normalization or ((),))[0]
        if mean and len(mean) != self.num_channels and self.num_channels != 1:
            raise ConfigError(
                f"data.views {type(views).__name__} normalise with {len(mean)} mean(s) {list(mean)}, but data source "
                f"{self.source.spec!r} holds {self.num_channels}-channel images; give data.views mean and std "
                f"{self.num_channels} values each (ImageNet's: mean {list(IMAGENET_MEAN)}, std {list(IMAGENET_STD)}), "
                "or use a recipe made for such images")

    def _eval_size(self) -> int:
        if self.image_size is None:
            sides = view_sides(self.views)
            if sides:  # the training views' (largest crops') side, as evaluation images
                return sides[0]
            raise ConfigError(
                f"data.image_size must be set for source {self.source.spec!r}: evaluation images (val, kNN, probes) "
                "and the method's default views are resized to it, and only built-in data sets know their own; set "
                "data.image_size: 224 for photos (ImageNet's; 96 or 64 train faster), or the side of your images")
        return self.image_size

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.global_rank, trainer.world_size) if trainer else (0, 1)

    def _loader(self, stream: ShardStream) -> DataLoader:
        workers = min(self.num_workers, max(1, len(stream.parts) // stream.world_size))
        return DataLoader(
            stream,
            batch_size=None,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            prefetch_factor=2 if workers > 0 else None,  # batches read past an epoch's end are dropped
        )

    def train_dataloader(self) -> EpochLoader | DataLoader:
        module = self.trainer.lightning_module if self.trainer else None
        cached = module.cached_train_dataloader() if hasattr(module, "cached_train_dataloader") else None
        if cached is not None:  # a probe on frozen features embeds the images once and trains on the features
            return cached
        rank, world = self._world()
        split = self.source.split("train")
        if len(split.parts) < world:
            raise ConfigError(
                f"{len(split.parts)} training shard(s) cannot feed {world} ranks: write more, smaller shards "
                f"(selfsup shards write ... --maxcount {max(1, split.num_samples // world)}: samples per shard)"
            )
        num_batches = split.num_samples // (self.batch_size * world)
        if num_batches == 0:
            raise ConfigError(
                f"data.batch_size {self.batch_size} x {world} device(s) is larger than the "
                f"{split.num_samples} training samples of {self.source.spec}; lower data.batch_size"
            )
        transform = self.views
        if self.augment_on == "device" and self.media == "video" and not self.views.crop_specs:
            raise ConfigError("data.augment_on: device needs clips cut while decoding: set seek: true in the "
                              "ClipViews, or data.augment_on: workers")
        if self.augment_on == "device":
            transform = WorkerCrops(self.views) if self.views.crop_specs else DecodedImages()
        stream = ShardStream(
            split.parts, transform, self.batch_size, self.num_channels, repeat=True, num_classes=self.num_classes,
            shuffle_buffer=self.shuffle_buffer, seed=self.seed, rank=rank, world_size=world, media=self.media,
            label=self.label, segments=self.segments,
        )
        loader = self._loader(stream)
        warn_low_coverage(stream, loader.num_workers or 1, num_batches * self.batch_size)
        trainer = self.trainer
        return EpochLoader(loader, num_batches, (lambda: trainer.current_epoch) if trainer else None)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """With ``augment_on="device"``: the views of a training batch, made on the device it was moved to."""
        if isinstance(batch, dict) and "crops" in batch:
            batch = dict(batch)
            batch.update(self.views.from_crops(batch.pop("crops"), on_device=True))
        elif isinstance(batch, dict) and "decoded" in batch:
            batch = dict(batch)
            batch.update(self.views.batch(batch.pop("decoded")))
        return batch

    def eval_dataloader(self, split: str, all_ranks: bool = False) -> DataLoader:
        """Un-augmented images of ``split``, each exactly once; this rank's part unless ``all_ranks``."""
        rank, world = (0, 1) if all_ranks else self._world()
        parts = self.source.split(split).parts
        if len(parts) < world:  # too few shards to split: every rank reads all
            rank, world = 0, 1
        key = (split, rank, world, self.segments)
        if key not in self._eval_loaders:
            stream = ShardStream(parts, self.eval_transform(), self.batch_size, self.num_channels, repeat=False,
                                 num_classes=self.num_classes, rank=rank, world_size=world, media=self.media,
                                 label=self.label, segments=self.segments)
            self._eval_loaders[key] = self._loader(stream)
        return self._eval_loaders[key]

    def eval_transform(self) -> ViewRecipe:
        """Un-augmented images (or, for videos, ``eval_clips`` clips per video) normalised as training's views."""
        norm = getattr(self.views, "normalization", None) or self.input_normalization  # what training saw
        if isinstance(self.views, EvalClips):  # un-augmented clips already (a linear probe's or kNN's config)
            return self.views
        if self.media == "video":
            frames, stride = getattr(self.views, "frames", 16), getattr(self.views, "stride", 2)
            return EvalClips(self._eval_size(), frames, stride, self.eval_clips, norm)
        size = self._eval_size()
        return EvalView(size, self.eval_resize or (round(size / self.eval_crop) if self.eval_crop else None), norm)

    def sizes(self) -> str:
        """``views 96+40 px, eval 96 of 110 px``: the training views' sides and the evaluation crop of its resize."""
        sides = "+".join(str(s) for s in dict.fromkeys(view_sides(self.views))) or "?"
        try:
            view = self.eval_transform()
        except ConfigError:
            return f"views {sides} px"
        frame = getattr(view, "_frame", view)  # a video's clips: each frame as an image
        return f"views {sides} px, eval {frame.size} of {frame.resize} px"

    def val_dataloader(self) -> DataLoader | list:
        return self.eval_dataloader("val") if self.source.has_split("val") else []  # []: Lightning skips it

    def test_dataloader(self) -> DataLoader:
        return self.eval_dataloader("test" if self.source.has_split("test") else "val")

    def predict_dataloader(self) -> DataLoader:
        return self.eval_dataloader("val", all_ranks=True)


def view_sides(views: ViewRecipe | None) -> list[int]:
    """The sides of a view recipe's crops, the largest (global) first: ``[96, 40]`` for SwAV's multi-crop."""
    if views is None:
        return []
    if getattr(views, "sizes", None):
        sides = list(views.sizes)
    elif getattr(views, "global_size", None):
        sides = [views.global_size, views.local_size] if getattr(views, "num_local", 0) else [views.global_size]
    else:
        sides = [views.size] if isinstance(getattr(views, "size", None), int) else []
    return sorted(sides, reverse=True)


def check_eval_crop(crop: float | None, resize: int | None) -> float | None:
    """``data.eval_crop`` as given, refused when it is not a share in (0, 1] or comes with ``eval_resize``."""
    if crop is None:
        return None
    if resize is not None:
        raise ConfigError(f"data.eval_crop {crop} and data.eval_resize {resize} both set the evaluation resize; "
                          "keep eval_crop (it follows the image size) and drop eval_resize")
    if not 0 < crop <= 1:
        raise ConfigError(f"data.eval_crop must be in (0, 1] (the share of the resized side the centre crop keeps; "
                          f"ImageNet's is 0.875), got {crop}")
    return crop


def warn_low_coverage(stream: ShardStream, workers: int, per_rank: int, threshold: float = 0.95) -> None:
    """Warn when uneven shards make an epoch repeat samples: every worker of every rank yields the same number
    of batches, so a worker with fewer samples wraps around while another's are left unread."""
    share = per_rank / workers
    seen = sum(min(sum(p.count for p in stream.my_parts(0, w, workers, rank)), share)
               for rank in range(stream.world_size) for w in range(workers))
    coverage = seen / (per_rank * stream.world_size)
    if coverage < threshold:
        rank_zero_warn(
            f"{len(stream.parts)} training shards split unevenly over {stream.world_size} rank(s) x {workers} "
            f"loader worker(s): an epoch sees only about {coverage:.0%} distinct samples; write a multiple of "
            f"{stream.world_size * workers} equal shards"
        )
