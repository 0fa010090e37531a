"""DINO (Caron et al. 2021) and the DINOv2 additions as options, as in docs/methods/dino.md."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from selfsup.data.dino_views import DINOViews
from selfsup.data.views import ViewRecipe
from selfsup.errors import ConfigError
from selfsup.heads import DINOHead
from selfsup.losses import (
    centered_targets,
    dino_loss,
    koleo_loss,
    sinkhorn_targets,
    teacher_temperature,
    updated_center,
)
from selfsup.methods.base import SSLMethod, StepOutput, features_by_size, host_scalar
from selfsup.methods.twoview import require_positive
from selfsup.momentum import MomentumTeacher, check_momentum
from selfsup.optim import OptimizerName, clip_grad_per_tensor_
from selfsup.training.collapse import target_health

Targets = Literal["centering", "sinkhorn_knopp"]


@dataclass
class Distilled:
    """One network's outputs on a list of crops: per crop, the backbone's pooled features (B, C), the head's
    L2-normalised bottleneck (B, bottleneck) and its logits (B, K)."""

    features: list[torch.Tensor]
    embeddings: list[torch.Tensor]
    logits: list[torch.Tensor]


class DINO(MomentumTeacher, SSLMethod):
    """Self-distillation with no labels. A student (backbone -> ``DINOHead``) sees every crop, an EMA teacher (the
    momentum copy of both, cosine ``base_momentum`` -> 1 per step) the two global crops only; each student crop
    predicts the teacher's target of every global crop but its own (``selfsup.losses.dino_loss``). Targets are
    ``softmax((t - c) / teacher_temp)`` with the centre c an EMA of the teacher's mean logits, updated after the
    loss (``centering``), or DINOv2's Sinkhorn-Knopp (``sinkhorn_knopp``).

    Args:
        out_dim: K, the head's output width (65536).
        head_hidden_dim, bottleneck_dim, head_layers, head_bn: the head's MLP (2048, 256, 3, no BN).
        norm_last_layer: keep the last layer's weight-norm scale at 1 (True; the ViT-S "boost" recipe: False).
        student_temp: the student's softmax temperature (0.1).
        teacher_temp: the teacher's temperature after its warmup (0.04; up to 0.07); at most ``student_temp``.
        warmup_teacher_temp, warmup_teacher_temp_epochs: the teacher temperature rises linearly from this value
            over these epochs (0.04, 0: none; boost: 30).
        center_momentum: the centre's EMA momentum (0.9); 1 keeps the centre at 0 (no centering).
        targets: ``centering`` (DINO) or ``sinkhorn_knopp`` (DINOv2's option; no centre).
        base_momentum: the teacher's momentum at step 0 (0.996), rising to 1 (cosine).
        clip_grad: each gradient tensor's norm is capped at this value (3.0; 0: off).
        freeze_last_layer_epochs: epochs during which the head's last layer gets no update (1).
        weight_decay_end: ``SSLMethod``'s cosine weight-decay schedule, DINO's default end: 0.4.
        koleo_weight: weight of DINOv2's KoLeo term on the student's backbone features of each global crop (0: off;
            DINOv2: 0.1).
        **kwargs: the shared options of ``SSLMethod`` (backbone, optimizer, schedule, probe, ``layer_decay``:
            DINOv2's 0.9); no decay only for biases and 1-D parameters.
        optimizer, lr, weight_decay: DINO's: AdamW, 5e-4 x N / 256, 0.04.
    """

    view_kinds = ("multicrop",)

    def __init__(
        self,
        out_dim: int = 65536,
        head_hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        head_layers: int = 3,
        head_bn: bool = False,
        norm_last_layer: bool = True,
        student_temp: float = 0.1,
        teacher_temp: float = 0.04,
        warmup_teacher_temp: float = 0.04,
        warmup_teacher_temp_epochs: float = 0,
        center_momentum: float = 0.9,
        targets: Targets = "centering",
        base_momentum: float = 0.996,
        clip_grad: float = 3.0,
        freeze_last_layer_epochs: int = 1,
        weight_decay_end: float | None = 0.4,
        koleo_weight: float = 0.0,
        optimizer: OptimizerName = "adamw",
        lr: float = 5e-4,
        weight_decay: float = 0.04,
        **kwargs: Any,
    ) -> None:
        super().__init__(optimizer=optimizer, lr=lr, weight_decay=weight_decay, weight_decay_end=weight_decay_end,
                         **kwargs)
        require_positive(out_dim=out_dim, head_hidden_dim=head_hidden_dim, bottleneck_dim=bottleneck_dim,
                         head_layers=head_layers, student_temp=student_temp, teacher_temp=teacher_temp,
                         warmup_teacher_temp=warmup_teacher_temp)
        check_momentum("center_momentum", center_momentum)
        for name, temp in (("teacher_temp", teacher_temp), ("warmup_teacher_temp", warmup_teacher_temp)):
            if temp > student_temp:
                raise ConfigError(f"model.{name} {temp} is above model.student_temp {student_temp}: the teacher's "
                                  "targets would be softer than the student's predictions and nothing is "
                                  f"sharpened; set {name} at most {student_temp} (DINO: 0.04 to 0.07)")
        if targets not in ("centering", "sinkhorn_knopp"):
            raise ConfigError(f"model.targets {targets!r} is unknown; choose centering or sinkhorn_knopp")
        self.head = DINOHead(self.backbone.num_features, out_dim, head_hidden_dim, bottleneck_dim, head_layers,
                             norm_last_layer, head_bn)
        self.add_teacher(["backbone", "head"], base_momentum)
        for module in self.momentum_backbone.modules():  # the teacher runs without stochastic depth
            for rate in ("drop_path", "drop_prob"):  # the built-in ViT's blocks, timm's DropPath
                if isinstance(getattr(module, rate, None), float):
                    setattr(module, rate, 0.0)
        self.register_buffer("center", torch.zeros(1, out_dim))

    def default_views(self, size: int) -> ViewRecipe:
        patch = getattr(self.backbone, "patch_size", 1)
        local = max(patch, round(size * 96 / 224 / patch) * patch)
        return DINOViews(global_size=size, local_size=local)

    # ---- the step ---------------------------------------------------------------------------------------
    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        crops = batch["views"]
        if len(crops) < 2:
            raise ConfigError(f"DINO needs two global crops first in its views, got {len(crops)} crop(s)")
        momentum = self.update_momentum()
        student = self.student_outputs(crops, batch.get("masks"))
        with torch.no_grad():
            teacher = self.teacher_outputs(crops[:2])
        temp = self.teacher_temp()
        terms = self.loss_terms(student, teacher, temp)
        health = target_health(torch.cat(self.teacher_targets(teacher.logits, self.center, temp)))
        self.update_centers(teacher)
        logs = {f"train/loss_{name}": value.detach() for name, value in terms.items()}
        logs.update({f"train/{name}": value for name, value in health.items()})  # read by CollapseMonitor
        logs.update({"schedule/momentum": host_scalar(momentum), "schedule/teacher_temp": host_scalar(temp)})
        return StepOutput(loss=sum(terms.values()), features=student.features[0], embeddings=student.embeddings[0],
                          logs=logs)

    def distill(self, backbone: nn.Module, head: DINOHead, crops: Sequence[torch.Tensor]) -> Distilled:
        """Backbone and head over ``crops`` (the head once over all of them)."""
        features = features_by_size(backbone, crops)
        embeddings = head.embed(torch.cat(features))
        logits = head.last_layer(embeddings)
        return Distilled(features, list(embeddings.chunk(len(crops))), list(logits.chunk(len(crops))))

    def student_outputs(self, crops: Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | None = None
                        ) -> Distilled:
        """The student on every crop (``masks``, one per global crop where the views make them, are iBOT's)."""
        return self.distill(self.backbone, self.head, crops)

    def teacher_outputs(self, global_crops: Sequence[torch.Tensor]) -> Distilled:
        """The teacher on the global crops (called without gradient)."""
        return self.distill(self.momentum_backbone, self.momentum_head, global_crops)

    def teacher_targets(self, logits: Sequence[torch.Tensor], center: torch.Tensor, temp: float
                        ) -> list[torch.Tensor]:
        """The teacher's target distribution of each of its crops: centred and sharpened, or Sinkhorn-Knopp over
        all of them (and all ranks)."""
        if self.hparams.targets == "sinkhorn_knopp":
            return list(sinkhorn_targets(torch.cat(list(logits)), temp).chunk(len(logits)))
        return [centered_targets(t, center, temp) for t in logits]

    def loss_terms(self, student: Distilled, teacher: Distilled, temp: float) -> dict[str, torch.Tensor]:
        """The weighted terms whose sum is the loss (a subclass adds its own, e.g. iBOT's patch term)."""
        hp = self.hparams
        targets = self.teacher_targets(teacher.logits, self.center, temp)
        terms = {"dino": dino_loss(student.logits, targets, hp.student_temp)}
        if hp.koleo_weight > 0:
            terms["koleo"] = hp.koleo_weight * sum(koleo_loss(f) for f in student.features[:2]) / 2
        return terms

    @torch.no_grad()
    def update_centers(self, teacher: Distilled) -> None:
        """The centre's EMA step, once this step's targets are made (a subclass updates its own centres too)."""
        if self.hparams.targets == "centering":
            self.center.copy_(updated_center(self.center, torch.cat(teacher.logits), self.hparams.center_momentum))

    def teacher_temp(self) -> float:
        """This epoch's teacher temperature."""
        hp = self.hparams
        return teacher_temperature(self.current_epoch, hp.warmup_teacher_temp_epochs, hp.warmup_teacher_temp,
                                   hp.teacher_temp)

    # ---- optimisation ------------------------------------------------------------------------------------
    def no_decay(self, name: str, param: nn.Parameter) -> bool:
        """DINO's rule: no weight decay for biases and 1-D parameters only (tokens and position tables decay)."""
        return name.endswith(".bias") or param.ndim == 1

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        hp = self.hparams
        probe = set(self.probe.parameters()) if self.probe is not None else set()
        if hp.clip_grad > 0:
            clip_grad_per_tensor_([p for p in self.parameters() if p not in probe], hp.clip_grad)
        if self.current_epoch < hp.freeze_last_layer_epochs:
            for p in self.head.last_layer.parameters():
                p.grad = None  # the optimizer skips it: no moments, no decay

    # ---- checks ------------------------------------------------------------------------------------------
    def check_checkpoint(self, saved: dict[str, Any], path: str) -> None:
        """Refuse to resume from a checkpoint whose head was trained with the other ``norm_last_layer``."""
        mine, theirs = self.hparams.norm_last_layer, saved.get("norm_last_layer", True)
        if bool(theirs) != bool(mine):
            raise ConfigError(f"checkpoint {path} was trained with norm_last_layer: {theirs}, but the config sets "
                              f"{mine}; set model.init_args.norm_last_layer: {theirs} to resume it")
