"""Probes: a head trained on a frozen backbone loaded from a checkpoint. ``LinearProbe`` classifies pooled features.

    selfsup fit -c experiments/eval/linear-mnist5k.yaml --model.init_from runs/.../last.ckpt
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

from selfsup.backbones import pooled_features
from selfsup.data.clips import EvalClips
from selfsup.data.views import EvalView, ViewRecipe
from selfsup.errors import ConfigError
from selfsup.eval.blocks import BlockFeatures
from selfsup.eval.checkpoint import backbone_from
from selfsup.eval.features import extract_features
from selfsup.eval.knn import topk_accuracy
from selfsup.heads import LinearClassifier
from selfsup.optim import (
    LRScaling,
    OptimizerName,
    apply_lr_scale,
    build_optimizer,
    global_batch_size,
    scaled_lr,
    split_decay,
    warmup_cosine_scheduler,
)


class FrozenProbe(L.LightningModule):
    """Base of the probes: a backbone with its weights from ``init_from``, frozen (no gradients, BN always in
    eval mode), and a head (``self.head``, set by the subclass) trained with SGD/LARS/AdamW, warmup + cosine.

    Args:
        init_from: a selfsup checkpoint (`selfsup fit` of any method or probe); None probes the random init.
        backbone, backbone_args: the architecture; None: the checkpoint's (a value that differs is refused).
        in_channels, num_classes, batch_size: linked from the data by the CLI.
        optimizer, lr, lr_scaling, weight_decay, momentum, nesterov, warmup_epochs: the head's optimizer;
            lr is scaled by the global batch (``linear``: x BS/256).
    """

    evaluate_at_end = True  # the CLI validates after fit if the last epoch did not

    def __init__(
        self,
        init_from: str | None = None,
        backbone: str | None = None,
        backbone_args: dict[str, Any] | None = None,
        in_channels: int = 3,
        num_classes: int = 0,
        batch_size: int = 256,
        optimizer: OptimizerName = "sgd",
        lr: float = 0.1,
        lr_scaling: LRScaling = "linear",
        weight_decay: float = 0.0,
        momentum: float = 0.9,
        nesterov: bool = False,
        warmup_epochs: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ConfigError(
                f"{type(self).__name__} needs labels, but the data has no classes: give a labelled source "
                "(one whose manifest.json lists classes, e.g. builtin:mnist5k)"
            )
        self.save_hyperparameters()
        self.backbone, spec = backbone_from(backbone, backbone_args, in_channels, init_from, type(self).__name__)
        self.hparams.update(backbone=spec.name, backbone_args=spec.args)  # what a checkpoint of this records
        self.input_normalization = spec.normalization  # the pretraining's mean/std, for the default views
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training")

    def train(self, mode: bool = True) -> FrozenProbe:
        """Train mode for the head only: the frozen backbone's BN keeps using its running statistics."""
        super().train(mode)
        self.backbone.eval()
        return self

    def default_views(self, size: int) -> ViewRecipe:
        """Un-augmented training images, normalised as the backbone's pretraining (set data.views for
        augmentation, e.g. CropViews)."""
        return EvalView(size, normalization=self.input_normalization)

    def setup(self, stage: str) -> None:
        views = getattr(self.trainer.datamodule, "views", None) if self._trainer else None
        if views is not None and views.kind != "image":
            raise ConfigError(f"{type(self).__name__} trains on single images, but data.views makes "
                              f"{views.kind!r} views; use EvalView or CropViews")

    def parameter_groups(self) -> list[dict]:
        """What the optimizer trains: the head (a group's ``lr_scale`` multiplies the lr)."""
        return split_decay(self.head.named_parameters(), self.hparams.weight_decay)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr = scaled_lr(hp.lr, global_batch_size(hp.batch_size, self.trainer), hp.lr_scaling)
        opt = build_optimizer(hp.optimizer, self.parameter_groups(), lr, hp.momentum, hp.weight_decay,
                              nesterov=hp.nesterov)
        apply_lr_scale(opt)
        return {"optimizer": opt, "lr_scheduler": warmup_cosine_scheduler(opt, self.trainer, hp.warmup_epochs)}


class _FeatureBatches(IterableDataset):
    """Shuffled batches ``{"features", "label"}`` (and ``"mask"`` with ``masks``) of cached features: a fresh
    permutation each epoch, this rank's share of it, whole batches only (every rank takes the same number of
    steps). ``health``: what reading the cached images counted (``"health"`` of the stream's batches), carried by the
    first batch of each epoch, as a stream re-reading them would, so DataHealth logs and stops on it."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, batch_size: int, rank: int, world: int,
                 seed: int = 0, masks: torch.Tensor | None = None, health: dict[str, Any] | None = None) -> None:
        self.features, self.labels, self.masks, self.batch_size = features, labels, masks, batch_size
        self.rank, self.world, self.seed, self._epoch = rank, world, seed, 0
        self.health = health

    def __len__(self) -> int:
        return len(self.labels) // (self.batch_size * self.world)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        order = torch.randperm(len(self.labels), generator=torch.Generator().manual_seed(self.seed + self._epoch))
        self._epoch += 1
        mine = order[self.rank :: self.world]
        for i in range(len(self)):
            idx = mine[i * self.batch_size : (i + 1) * self.batch_size]
            batch = {"features": self.features[idx], "label": self.labels[idx]}
            if self.masks is not None:
                batch["mask"] = self.masks[idx]
            if i == 0 and self.health is not None:
                batch["health"] = self.health
            yield batch


class Tallied:
    """Iterates a loader of stream batches, adding up the ``"health"`` counts they carry (``health``: None until
    one did), so what caching read is counted as training's reading is."""

    def __init__(self, loader: Iterable[dict[str, Any]]) -> None:
        self.loader, self.health = loader, None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        for batch in self.loader:
            counts = batch.get("health")
            if counts is not None:
                self.health = self.health or {"seen": 0, "skipped": {}, "refused": {}}
                self.health["seen"] += counts["seen"]
                for key in ("skipped", "refused"):
                    self.health[key] = dict(Counter(self.health[key]) + Counter(counts[key]))
            yield batch


class LinearProbe(FrozenProbe):
    """Linear classification of the frozen backbone's pooled features; logs ``val/top1`` and ``val/top5``.

    Args:
        cache_features: embed the un-augmented training images once and train on those features (many times
            faster; needs un-augmented views, i.e. data.views unset or EvalView).
        feature_bn: standardise the features with a BatchNorm without scale and shift before the linear layer
            (as MAE's and MoCo v3's linear probes; still linear at test time). Makes the probe insensitive to
            the features' scale; the SimCLR paper's recipe has none.
        block, block_grid: probe the map of an inner block instead (a ResNet: 0 the stem, 1-4 its stages),
            average-pooled to block_grid x block_grid (`selfsup.eval.blocks`); None: the pooled last map.
        **kwargs: the options of ``FrozenProbe``.
    """

    def __init__(self, cache_features: bool = False, feature_bn: bool = False, block: int | None = None,
                 block_grid: int = 4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._block = None if block is None else BlockFeatures(self.backbone, block, block_grid)
        width = self.features.num_features
        classifier = LinearClassifier(width, self.hparams.num_classes)
        self.head = nn.Sequential(nn.BatchNorm1d(width, affine=False), classifier) if feature_bn else classifier
        self.cache_features = cache_features

    def setup(self, stage: str) -> None:
        super().setup(stage)
        views = getattr(self.trainer.datamodule, "views", None) if self._trainer else None
        unaugmented = isinstance(views, (EvalView, EvalClips))
        if stage == "fit" and self.cache_features and views is not None and not unaugmented:
            raise ConfigError(f"model.cache_features needs un-augmented training images, but data.views is "
                              f"{type(views).__name__}; drop data.views or set cache_features: false")

    @property
    def features(self) -> nn.Module:
        """What the head reads: the backbone's pooled features, or those of the probed block."""
        return self.backbone if self._block is None else self._block

    def cached_train_dataloader(self) -> DataLoader | None:
        """With ``cache_features``: batches of the training images' features, embedded once (the data module
        asks for this before it streams images)."""
        if not self.cache_features:
            return None
        data = self.trainer.datamodule
        loader = Tallied(data.eval_dataloader("train", all_ranks=True))
        features, labels = extract_features(self.features, loader, self.device, progress=True, desc="train")
        keep = labels >= 0
        rank_zero_info(f"cached {int(keep.sum())} training features of width {features.shape[1]}")
        batches = _FeatureBatches(features[keep], labels[keep], data.batch_size, self.global_rank,
                                  self.trainer.world_size, data.seed, health=loader.health)
        return DataLoader(batches, batch_size=None)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits of images."""
        with torch.no_grad():
            features = pooled_features(self.features, images)
        return self.head(features)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits = self.head(batch["features"]) if "features" in batch else self(batch["image"])
        labels = batch["label"]
        keep = labels >= 0
        loss = F.cross_entropy(logits[keep], labels[keep])
        top1 = (logits.argmax(1) == labels)[keep].float().mean()
        self.log_dict({"train/loss": loss, "train/top1": top1}, on_step=True, on_epoch=True, batch_size=len(labels))
        return loss

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> None:
        labels = batch["label"]
        keep = labels >= 0
        logits = self(batch["image"])[keep]
        metrics = topk_accuracy(logits, labels[keep])
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, on_epoch=True, sync_dist=True,
                      batch_size=int(keep.sum()))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

