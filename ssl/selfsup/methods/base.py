"""SSLMethod: what every method shares (backbone, optimizer and schedule, online probe, logging)."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from selfsup.backbones import build_backbone, pooled_features, to_channels_last
from selfsup.data.views import ViewRecipe
from selfsup.errors import ConfigError
from selfsup.heads import LinearClassifier
from selfsup.optim import (
    LRScaling,
    OptimizerName,
    apply_lr_scale,
    backbone_layer_groups,
    build_optimizer,
    check_layer_decay,
    cosine_ramp,
    global_batch_size,
    is_no_decay,
    scaled_lr,
    split_decay,
    warmup_cosine_scheduler,
)


class DataWaitWatch:
    """Warns once (rank zero) when the loader holds training back: the mean of ``train/data_wait`` over the last
    ``window`` steps above ``threshold``."""

    def __init__(self, window: int = 50, threshold: float = 0.2) -> None:
        self.window, self.threshold, self.recent, self.warned = window, threshold, deque(maxlen=window), False

    def add(self, wait: float) -> None:
        self.recent.append(wait)
        mean = sum(self.recent) / len(self.recent)
        if not self.warned and len(self.recent) == self.window and mean > self.threshold:
            self.warned = True
            rank_zero_warn(
                f"the data loader holds training back: over the last {self.window} steps training waited "
                f"{mean:.0%} of each step for its next batch (train/data_wait); raise data.num_workers (up to the "
                f"free cores), or set data.augment_on: device to finish the views on the GPU"
            )


def host_scalar(value: float) -> torch.Tensor:
    """A number to log every step, as a CPU tensor: Lightning keeps it on the CPU, where a Python float becomes
    a tensor on the GPU through a blocking copy (the host waits for every queued kernel) each time."""
    return torch.tensor(float(value))


@dataclass
class StepOutput:
    """What a method's ``ssl_step`` returns: the loss, pooled backbone features of one view (for the online probe
    and the collapse monitor), what the loss compares for that view (projector outputs, for the collapse
    monitor; None where there is no projector) and extra logs (``schedule/*`` ones: the value a per-step schedule
    gave this step, logged per step only)."""

    loss: torch.Tensor
    features: torch.Tensor | None = None
    logs: dict[str, torch.Tensor] = field(default_factory=dict)
    embeddings: torch.Tensor | None = None


def size_runs(crops: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """(start, end) of each run of consecutive same-sized image batches in ``crops``."""
    runs, start = [], 0
    while start < len(crops):
        end = start + 1
        while end < len(crops) and crops[end].shape[-2:] == crops[start].shape[-2:]:
            end += 1
        runs.append((start, end))
        start = end
    return runs


def features_by_size(backbone: torch.nn.Module, crops: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``backbone``'s pooled features of each image batch in ``crops``: one forward per run of consecutive
    same-sized batches (multi-crop: one per resolution), not one per crop."""
    features = []
    for start, end in size_runs(crops):
        features += backbone(torch.cat(list(crops[start:end]))).chunk(end - start)
    return features


class SSLMethod(L.LightningModule):
    """Base of every method. A subclass adds its heads and implements ``ssl_step`` and ``default_views``.

    Args:
        backbone: a name from ``selfsup.backbones.available_backbones()``.
        backbone_args: keyword arguments of that backbone (e.g. ``{width: 16, cifar_stem: true}``).
        in_channels: image channels (linked from the data in the CLI).
        num_classes: label classes for the online probe; 0 turns it off (linked from the data).
        batch_size: per-device batch size (linked from the data), for the lr scaling rule.
        optimizer: ``lars`` (SimCLR's LARS), ``larc`` (SwAV's), ``lars_pixpro`` (PixPro's), ``sgd`` (momentum) or
            ``adamw``.
        lr: base learning rate before scaling.
        lr_scaling: ``linear`` (lr x global batch / 256), ``linear512`` (x global batch / 512, SimMIM), ``sqrt``
            (lr x sqrt(global batch)) or ``none``.
        weight_decay: applied to weights (and to norms and biases unless they are excluded).
        weight_decay_end: the weight decay at the last step, reached on a cosine from ``weight_decay`` and set every
            optimizer step on the decayed groups (logged as ``schedule/weight_decay``); None keeps ``weight_decay``.
        exclude_norms_and_biases: no weight decay and no LARS/LARC adaptation for norms and biases (SimCLR);
            False applies both to every parameter (SwAV's official code).
        momentum: SGD/LARS momentum.
        betas: AdamW betas.
        warmup_epochs: linear warmup length (fractions allowed), counted in optimizer steps.
        warmup_start_factor: lr at step 0 as a fraction of the peak lr.
        final_lr_factor: lr at the last step as a fraction of the peak lr (cosine decay).
        layer_decay: layer-wise lr decay: a parameter in block i of L of the backbone gets ``layer_decay ** (L + 1 -
            i)`` of the lr (patch embedding, tokens and position tables: depth 0; the rest of the model: L + 1;
            1: off). Needs a backbone with blocks (a ViT).
        probe_lr: lr of the online linear probe on detached features (not scaled, same schedule).
        channels_last: keep the backbone's convolution weights in channels-last memory format (NHWC; NDHWC for a
            video backbone), which tensor-core convolutions (CUDA, bf16/fp16) run fastest in, and oneDNN's 3-D
            convolutions on a CPU too. The first convolution turns each input batch to that format (one copy, what
            converting the batch would cost) and every activation after it stays in it.
        compile_backbone: ``torch.compile`` the backbone's ``forward`` and ``forward_features`` (and the
            momentum backbone's, if the method has one) when training starts; the first steps then compile.
    """

    view_kinds: ClassVar[tuple[str, ...]] = ()
    no_decay_lr_scale: float = 1.0  # lr of the parameters excluded from decay, as a fraction of the lr (Barlow Twins)

    def __init__(
        self,
        backbone: str = "resnet50",
        backbone_args: dict[str, Any] | None = None,
        in_channels: int = 3,
        num_classes: int = 0,
        batch_size: int = 256,
        optimizer: OptimizerName = "lars",
        lr: float = 0.3,
        lr_scaling: LRScaling = "linear",
        weight_decay: float = 1e-6,
        weight_decay_end: float | None = None,
        exclude_norms_and_biases: bool = True,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        warmup_epochs: float = 10.0,
        warmup_start_factor: float = 0.0,
        final_lr_factor: float = 0.0,
        layer_decay: float = 1.0,
        probe_lr: float = 0.1,
        channels_last: bool = False,
        compile_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.backbone = self.new_backbone()
        check_layer_decay(self.backbone, layer_decay, backbone)
        self.probe = LinearClassifier(self.backbone.num_features, num_classes) if num_classes > 0 else None
        self._last_batch_end: float | None = None
        self._batch_start: float | None = None
        self._data_wait = DataWaitWatch()

    # ---- what a method implements -------------------------------------------------------------------
    def default_views(self, size: int) -> ViewRecipe:
        """The method's own view recipe at image side ``size``."""
        raise NotImplementedError

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        """The self-supervised loss of one training batch."""
        raise NotImplementedError

    # ---- shared machinery --------------------------------------------------------------------------
    def new_backbone(self) -> torch.nn.Module:
        """A backbone as the options describe it, freshly initialised (channels-last when asked, before subclasses
        copy it: a momentum encoder keeps the format)."""
        hp = self.hparams
        backbone = build_backbone(hp.backbone, in_channels=hp.in_channels, **(hp.backbone_args or {}))
        return to_channels_last(backbone) if hp.channels_last else backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (averaged over clips for (B, K, C, T, H, W) video input)."""
        return pooled_features(self.backbone, images)

    def backbone_by_size(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        """Pooled features of a list of image batches, concatenated in order (``features_by_size``)."""
        return torch.cat(features_by_size(self.backbone, crops))

    def compile_backbones(self) -> None:
        """``torch.compile`` ``forward`` (through ``module.compile()``, which keeps the state-dict keys) and
        ``forward_features`` of the backbone and of ``momentum_backbone`` if any; once per module."""
        for module in (self.backbone, getattr(self, "momentum_backbone", None)):
            if module is None or getattr(module, "_selfsup_compiled", False):
                continue
            module.compile()
            module.forward_features = torch.compile(module.forward_features)
            module._selfsup_compiled = True

    def setup(self, stage: str) -> None:
        if self.hparams.get("compile_backbone"):
            self.compile_backbones()
        views = getattr(self.trainer.datamodule, "views", None) if self._trainer else None
        if stage == "fit" and views is not None and views.kind not in self.view_kinds:
            name = type(self).__name__
            raise ConfigError(
                f"{name} needs {' or '.join(repr(k) for k in self.view_kinds)} views, but data.views is "
                f"{type(views).__name__}, which makes {views.kind!r} views; use "
                f"{type(self.default_views(8)).__name__} (or drop data.views to get {name}'s default)"
            )
        patch = getattr(self.backbone, "patch_size", None)
        for size in sorted(set(getattr(views, "sizes", None) or [])):  # multi-crop views
            if patch and (size < patch or size % patch):
                raise ConfigError(f"{type(self).__name__}: crops of {size} px do not split into whole {patch} px "
                                  f"patches of {self.hparams.backbone}; make every crop size in data.views a multiple "
                                  f"of {patch} (at least {patch})")

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
        """The loss, with the step's detached features and embeddings for callbacks (``CollapseMonitor``)."""
        out = self.ssl_step(batch)
        schedules = {k: v for k, v in out.logs.items() if k.startswith("schedule/")}  # this step's values, unaveraged
        loss = out.loss
        logs = {"train/loss": out.loss, **{k: v for k, v in out.logs.items() if k not in schedules}}
        if self.probe is not None and out.features is not None:
            probe_loss, top1 = self._probe(out.features.detach(), batch["label"])
            loss = loss + probe_loss
            logs.update({"train/probe_loss": probe_loss, "train/probe_top1": top1})
        self.log_dict(logs, on_step=True, on_epoch=True, prog_bar=False, batch_size=len(batch["label"]))
        self.log("train/lr", host_scalar(self.trainer.optimizers[0].param_groups[0]["lr"]), on_step=True,
                 on_epoch=False)
        if schedules:
            self.log_dict(schedules, on_step=True, on_epoch=False, batch_size=len(batch["label"]))
        detached = {k: getattr(out, k) for k in ("features", "embeddings") if getattr(out, k) is not None}
        return {"loss": loss, **{k: v.detach() for k, v in detached.items()}}

    def _probe(self, features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Cross-entropy and top-1 of the online probe over labelled rows (label -1: unlabelled)."""
        logits = self.probe(features)
        valid = (labels >= 0).float()
        losses = F.cross_entropy(logits.float(), labels.clamp(min=0), reduction="none")
        count = valid.sum().clamp(min=1)
        top1 = ((logits.argmax(1) == labels).float() * valid).sum() / count
        return (losses * valid).sum() / count, top1

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._batch_start = time.perf_counter()
        hp = self.hparams
        if hp.weight_decay_end is not None and hp.weight_decay:
            decay = self.weight_decay_now()
            for group in self.trainer.optimizers[0].param_groups:  # before 'weight_decay_scale': decayed or not
                group["weight_decay"] = decay * group.get("weight_decay_scale", float(group["weight_decay"] > 0))
            self.log("schedule/weight_decay", host_scalar(decay), on_step=True, on_epoch=False)

    def weight_decay_now(self) -> float:
        """The weight decay at this optimizer step: cosine from ``weight_decay`` to ``weight_decay_end`` over the
        fit; ``weight_decay`` where there is no schedule or no trainer."""
        hp = self.hparams
        if hp.weight_decay_end is None or not hp.weight_decay or self._trainer is None:
            return hp.weight_decay
        return cosine_ramp(self.global_step, int(self.trainer.estimated_stepping_batches), hp.weight_decay,
                           hp.weight_decay_end)

    def on_train_batch_end(self, outputs: Any, batch: dict[str, Any], batch_idx: int) -> None:
        now = time.perf_counter()
        if self._last_batch_end is not None:
            step = now - self._last_batch_end
            images = len(batch["label"]) * self.trainer.world_size
            self.log("train/images_per_s", host_scalar(images / step), on_step=True, on_epoch=False)
            wait = max(self._batch_start - self._last_batch_end, 0.0) / step if self._batch_start else 0.0
            self.log("train/data_wait", host_scalar(wait), on_step=True, on_epoch=False)
            self._data_wait.add(wait)
        self._last_batch_end = now

    def on_train_epoch_start(self) -> None:
        self._last_batch_end = None

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> None:
        if self.probe is None:
            return
        logits = self.probe(pooled_features(self.backbone, batch["image"]))
        labels = batch["label"]
        valid = labels >= 0
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        metrics = {
            f"{prefix}/probe_top1": (logits.argmax(1) == labels)[valid].float().mean(),
            f"{prefix}/probe_top5": (top5 == labels[:, None]).any(1)[valid].float().mean(),
        }
        self.log_dict(metrics, on_epoch=True, sync_dist=True, batch_size=int(valid.sum()))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        return {"features": pooled_features(self.backbone, batch["image"]), "label": batch["label"]}

    def no_decay(self, name: str, param: torch.nn.Parameter) -> bool:
        """Whether ``param`` is left out of weight decay (and LARS adaptation)."""
        return self.hparams.exclude_norms_and_biases and is_no_decay(name, param)

    def parameter_groups(self, named: list[tuple[str, torch.nn.Parameter]]) -> list[dict]:
        """The optimizer's groups of the method's parameters (the probe's is added to them): decayed and not
        (per depth with ``layer_decay``), the latter at ``no_decay_lr_scale`` of the lr."""
        hp = self.hparams
        if hp.layer_decay == 1.0:
            groups = split_decay(named, hp.weight_decay, self.no_decay)
        else:
            groups = backbone_layer_groups(named, self.backbone, hp.layer_decay, hp.weight_decay, self.no_decay)
        for group in groups:
            group["lr_scale"] = group.get("lr_scale", 1.0) * (1.0 if group["adapt"] else self.no_decay_lr_scale)
        return groups

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr = scaled_lr(hp.lr, global_batch_size(hp.batch_size, self.trainer), hp.lr_scaling)
        probe = set(self.probe.parameters()) if self.probe is not None else set()
        groups = self.parameter_groups([(n, p) for n, p in self.named_parameters() if p not in probe])
        if probe:
            groups.append({"params": list(probe), "weight_decay": 0.0, "adapt": False, "lr": hp.probe_lr})
        for group in groups:  # what the weight-decay schedule multiplies (saved with the optimizer state)
            group["weight_decay_scale"] = group["weight_decay"] / hp.weight_decay if hp.weight_decay else 0.0
        opt = build_optimizer(hp.optimizer, groups, lr, hp.momentum, hp.weight_decay, tuple(hp.betas))
        apply_lr_scale(opt)
        schedule = warmup_cosine_scheduler(opt, self.trainer, hp.warmup_epochs, hp.warmup_start_factor,
                                           hp.final_lr_factor)
        return {"optimizer": opt, "lr_scheduler": schedule}
