"""Dense probe: a per-pixel linear classifier (1x1 conv) on a frozen feature map, scored by mIoU and per-class IoU;
``DenseFineTune``: the same head with the backbone trained too.

Targets are the data's segmentation masks (the ``mask.png`` member: 0 background, ``c + 1`` for class ``c``, 255
ignored), e.g. ``builtin:mnist-scenes``; or, with ``threshold`` set, built on the fly from labelled single digits
(MNIST-5k): a pixel is of its image's class when its intensity is above ``threshold``, else background.

    selfsup fit -c experiments/eval/dense-mnist-scenes.yaml --model.init_from runs/.../last.ckpt
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn
from torch.utils.data import DataLoader

from selfsup.data.members import IGNORE
from selfsup.data.views import EvalView
from selfsup.errors import ConfigError
from selfsup.eval.cells import cell_neighbours
from selfsup.eval.probe import FrozenProbe, Tallied, _FeatureBatches
from selfsup.optim import split_decay

CELL_LIMIT = 65536  # val cells kept for ``cell_neighbours`` per rank (64 x 64 maps of 16 images, 8 x 8 of 1,024)


def digit_masks(images: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """Segmentation targets (B, H, W): ``label + 1`` where the channel-mean intensity of an image in [0, 1] is
    above ``threshold``, else 0 (background)."""
    foreground = images.mean(dim=1) > threshold
    return torch.where(foreground, labels[:, None, None] + 1, torch.zeros_like(labels)[:, None, None])


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts (C, C) of pixels with target class i (row) predicted as class j (column); ``IGNORE`` targets are
    left out."""
    keep = target != IGNORE
    flat = target[keep] * num_classes + pred[keep]
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def class_ious(confusion: torch.Tensor) -> torch.Tensor:
    """IoU = TP / (TP + FP + FN) of each class; NaN for a class in neither target nor prediction."""
    confusion = confusion.double()
    tp = confusion.diag()
    union = confusion.sum(0) + confusion.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))


def mean_iou(confusion: torch.Tensor) -> float:
    """Mean over classes present (in target or prediction) of intersection / union = TP / (TP + FP + FN)."""
    ious = class_ious(confusion)
    return ious[~ious.isnan()].mean().item()


class DenseProbe(FrozenProbe):
    """A 1x1 conv from the frozen ``forward_features`` map (a ResNet's last stage: stride 8 with the CIFAR stem
    and no max-pool, 8x8 on 64 px scenes) to background + the classes, logits upsampled (bilinear) to the input;
    per-pixel cross-entropy. Logs ``val/miou``, ``val/pixel_acc`` and ``val/iou_NAME`` per class (``iou_bg``:
    background). Masks need un-augmented images (data.views unset or EvalView), so they stay aligned.

    Args:
        threshold: None: targets are the data's masks (samples without a usable one are skipped and counted);
            a number: digit masks (intensity above it is the image's class).
        segments: classes of the masks, background included (default: the data's classes + 1); for mask data
            without class labels, e.g. a ``folder:`` of ``NAME.png`` + ``NAME.mask.png``.
        cache_features: embed the training images once and train the head on their cached maps (masks only).
        feature_bn: standardise the map with a BatchNorm without scale and shift before the 1x1 conv (as the
            linear probe's option; still linear at test time): one lr for every backbone, whatever its scale.
        cell_neighbours: also log what the map's cells share with their nearest cells in other val images
            (``val/cells_same_class``, ``val/cells_same_place``, ``val/cells_rankme``: ``selfsup.eval.cells``),
            from this rank's first ``CELL_LIMIT`` val cells.
        **kwargs: the options of ``FrozenProbe`` (checkpoint, architecture, optimizer).
    """

    def __init__(self, threshold: float | None = None, segments: int | None = None, cache_features: bool = False,
                 feature_bn: bool = False, cell_neighbours: bool = False, **kwargs: Any) -> None:
        if segments is not None:
            if segments < 2:
                raise ConfigError(f"model.segments must be at least 2 (background and one class), got {segments}")
            kwargs["num_classes"] = segments - 1
        if cache_features and threshold is not None:
            raise ConfigError("model.cache_features needs mask targets; drop model.threshold or cache_features")
        super().__init__(**kwargs)
        if segments is not None:  # a subclass's frame holds the num_classes it was given, which the hparams took
            self.hparams.num_classes = segments - 1
        self.threshold, self.cache_features = threshold, cache_features
        self.num_segments = self.hparams.num_classes + 1
        width = self.backbone.num_features
        conv = nn.Conv2d(width, self.num_segments, kernel_size=1)
        self.head = nn.Sequential(nn.BatchNorm2d(width, affine=False), conv) if feature_bn else conv
        self._confusion: torch.Tensor | None = None
        self.cell_neighbours, self._cells = cell_neighbours, []

    def setup(self, stage: str) -> None:
        super().setup(stage)
        data = self.trainer.datamodule if self._trainer else None
        if self.threshold is None and data is not None:
            views = getattr(data, "views", None)
            if views is not None and not isinstance(views, EvalView):
                raise ConfigError(f"DenseProbe reads masks, which only un-augmented images keep aligned, but "
                                  f"data.views is {type(views).__name__}; drop data.views")
            data.segments = self.num_segments

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Per-pixel logits (B, classes + 1, H, W) at the input's resolution."""
        with torch.no_grad():
            fmap = self.feature_map(images)
        return self._upsampled(self.head(fmap), images.shape[-2:])

    def feature_map(self, images: torch.Tensor) -> torch.Tensor:
        """The frozen backbone's dense map (B, C, h, w)."""
        fmap = self.backbone.forward_features(images)
        if fmap.ndim != 4:
            raise ConfigError(f"DenseProbe needs a 2-D feature map (B, C, h, w); this backbone gives {fmap.ndim}-D")
        return fmap

    @staticmethod
    def _upsampled(logits: torch.Tensor, size: torch.Size) -> torch.Tensor:
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def cached_train_dataloader(self) -> DataLoader | None:
        """With ``cache_features``: batches of the training images' feature maps and masks, embedded once."""
        if not self.cache_features:
            return None
        data = self.trainer.datamodule
        maps, labels, masks = [], [], []
        loader = Tallied(data.eval_dataloader("train", all_ranks=True))
        with torch.no_grad():
            for batch in loader:
                maps.append(self.feature_map(batch["image"].to(self.device)).cpu())
                labels.append(batch["label"])
                masks.append(batch["mask"])
        if not maps:
            raise ConfigError("the train data holds no usable sample with a mask; check it with `selfsup shards "
                              "inspect`")
        features = torch.cat(maps)
        rank_zero_info(f"cached {len(features)} training feature maps of {tuple(features.shape[1:])}")
        return DataLoader(_FeatureBatches(features, torch.cat(labels), data.batch_size, self.global_rank,
                                          self.trainer.world_size, data.seed, masks=torch.cat(masks),
                                          health=loader.health),
                          batch_size=None)

    def _logits_and_masks(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        if "features" in batch:
            return self._upsampled(self.head(batch["features"]), batch["mask"].shape[-2:]), batch["mask"]
        if self.threshold is None:
            return self(batch["image"]), batch["mask"]
        images, labels = batch["image"], batch["label"]
        keep = labels >= 0
        images, labels = images[keep], labels[keep]
        return self(images), digit_masks(images, labels, self.threshold)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        logits, masks = self._logits_and_masks(batch)
        loss = F.cross_entropy(logits, masks, ignore_index=IGNORE)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(masks))
        return loss

    def on_validation_epoch_start(self) -> None:
        self._confusion = torch.zeros(self.num_segments, self.num_segments, dtype=torch.long, device=self.device)
        self._cells = []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        logits, masks = self._logits_and_masks(batch)
        self._confusion += confusion_matrix(logits.argmax(1), masks, self.num_segments)
        if self.cell_neighbours and sum(maps[:, 0].numel() for maps, _ in self._cells) < CELL_LIMIT:
            images = batch["image"] if self.threshold is None else batch["image"][batch["label"] >= 0]
            with torch.no_grad():
                self._cells.append((self.feature_map(images).cpu(), masks.cpu()))

    def segment_names(self) -> list[str]:
        """``bg`` and the data's class names (their indices without names)."""
        data = self.trainer.datamodule if self._trainer else None
        classes = list(data.source.classes) if data is not None and hasattr(data, "source") else []
        return ["bg", *(classes[i] if i < len(classes) else str(i) for i in range(self.num_segments - 1))]

    def on_validation_epoch_end(self) -> None:
        confusion = self.trainer.strategy.reduce(self._confusion, reduce_op="sum")
        pixel_acc = (confusion.diag().sum() / confusion.sum().clamp(min=1)).item()
        ious = {f"val/iou_{name}": iou for name, iou in zip(self.segment_names(), class_ious(confusion).tolist())
                if iou == iou}  # NaN: a class in neither target nor prediction
        self.log_dict({"val/miou": mean_iou(confusion), "val/pixel_acc": pixel_acc, **ious})
        if self._cells:
            maps, masks = (torch.cat(parts) for parts in zip(*self._cells))
            stats = cell_neighbours(maps, masks, self.num_segments)
            self.log_dict({f"val/{name}": value for name, value in stats.items()}, rank_zero_only=True)
            self._cells = []


class DenseFineTune(DenseProbe):
    """The dense probe's head and scores with the backbone trained too (its BN in train mode), at
    ``backbone_lr_scale`` x the head's lr: the fine-tuned protocol by which dense methods such as PixPro are
    judged (segmentation, detection), where the frozen probe asks what a linear read-out of the map already holds.

    Args:
        backbone_lr_scale: the backbone's lr as a fraction of the head's.
        **kwargs: the options of ``DenseProbe`` (``cache_features`` excepted: the maps change as it trains).
    """

    def __init__(self, backbone_lr_scale: float = 0.1, **kwargs: Any) -> None:
        if kwargs.get("cache_features"):
            raise ConfigError("model.cache_features caches a frozen backbone's maps, but DenseFineTune trains the "
                              "backbone; set cache_features: false")
        super().__init__(**kwargs)
        self.backbone.requires_grad_(True)
        self.backbone.train()

    def train(self, mode: bool = True) -> DenseFineTune:
        """Train mode for the backbone too."""
        nn.Module.train(self, mode)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._upsampled(self.head(self.feature_map(images)), images.shape[-2:])

    def parameter_groups(self) -> list[dict]:
        """The head at the lr, the backbone at ``backbone_lr_scale`` x the lr."""
        backbone = split_decay(self.backbone.named_parameters(), self.hparams.weight_decay)
        return [*super().parameter_groups(), *({**g, "lr_scale": self.hparams.backbone_lr_scale} for g in backbone)]
