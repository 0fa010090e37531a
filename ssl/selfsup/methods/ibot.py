"""iBOT (Zhou et al. 2022): DINO plus masked patch-token self-distillation, as in docs/methods/ibot.md."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from selfsup.data.masking import iBOTViews
from selfsup.data.views import ViewRecipe
from selfsup.errors import ConfigError
from selfsup.heads import DINOHead, WeightNormLinear
from selfsup.losses import centered_targets, masked_patch_loss, teacher_temperature, updated_center
from selfsup.methods.base import StepOutput, features_by_size, host_scalar
from selfsup.methods.dino import DINO, Distilled
from selfsup.momentum import check_momentum, momentum_copy


@dataclass
class PatchDistilled(Distilled):
    """``Distilled`` plus, per global crop, the head's patch logits: (B, N, K_patch) at every patch of an
    unmasked crop (the teacher's), or (M, K_patch) at the M masked patches of a masked one (the student's, in
    the order of ``masks[g].flatten(1).nonzero()``), and the crops' masks (B, h, w) (None: unmasked)."""

    patch_logits: list[torch.Tensor]
    masks: list[torch.Tensor] | None


def pooled(backbone: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """What ``backbone(x)`` returns, from its tokens (B, prefix + N, C): the class token, or the patches' mean."""
    return tokens[:, 0] if backbone.pool == "cls" else tokens[:, backbone.num_prefix:].mean(dim=1)


class iBOT(DINO):
    """DINO (every option of ``DINO``) plus masked image modeling by self-distillation: the student sees its two
    global crops with blockwise masks (``iBOTViews``; the ViT's mask token replaces the masked patch embeddings
    before the position table), the teacher sees them unmasked; besides DINO's loss on the pooled features (the
    student's global ones from the masked crops), every masked patch of a global crop predicts the teacher's
    output at that patch of the same crop (``selfsup.losses.masked_patch_loss``), with its own centre and
    teacher temperature. The head's MLP runs on the pooled features and on the patch tokens (the teacher's all
    of them, for its centre; the student's only the masked ones, the loss reads no other).

    Args:
        out_dim: K of the pooled features' last layer (iBOT: 8192).
        patch_out_dim: K of the patch tokens' last layer (8192); equal to ``out_dim`` with ``shared_head``.
        shared_head: patch tokens go through the same last layer as the pooled features (True, iBOT's recipes);
            False gives student and teacher a second last layer for them.
        patch_weight: weight of the patch term (iBOT's lambda2, 1.0).
        teacher_patch_temp, warmup_teacher_patch_temp: the patch targets' temperature (0.07), rising linearly
            from the warmup value (0.04) over ``warmup_teacher_temp_epochs``.
        patch_center_momentum: the patch centre's EMA momentum (0.9).
        mask_ratio, mask_ratio_var: the default views' mask ratios (iBOT's pred_ratio 0 0.3, var 0 0.2).
        **kwargs: ``DINO``'s options and the shared options of ``SSLMethod``.
    """

    view_kinds = ("masked_multicrop",)

    def __init__(self, out_dim: int = 8192, patch_out_dim: int = 8192, shared_head: bool = True,
                 patch_weight: float = 1.0, teacher_patch_temp: float = 0.07, warmup_teacher_patch_temp: float = 0.04,
                 patch_center_momentum: float = 0.9, mask_ratio: Sequence[float] = (0.0, 0.3),
                 mask_ratio_var: Sequence[float] = (0.0, 0.2), **kwargs: Any) -> None:
        super().__init__(out_dim=out_dim, **kwargs)
        hp = self.hparams
        if not hasattr(self.backbone, "tokens"):
            raise ConfigError(f"iBOT masks patch tokens, which {hp.backbone!r} has none of; use a ViT: vit_tiny, "
                              "vit_s_16, vit_b_16, vit or a timm ViT (timm:vit_small_patch16_224)")
        if hp.targets != "centering":
            raise ConfigError(f"iBOT centres its patch targets; model.targets {hp.targets!r} is DINO's option only; "
                              "set targets: centering")
        if shared_head and patch_out_dim != out_dim:
            raise ConfigError(f"a shared head gives the patch tokens out_dim {out_dim} logits, not patch_out_dim "
                              f"{patch_out_dim}; set patch_out_dim: {out_dim}, or shared_head: false")
        for name in ("teacher_patch_temp", "warmup_teacher_patch_temp"):
            if not 0 < hp[name] <= hp.student_temp:
                raise ConfigError(f"model.{name} {hp[name]} must be in (0, model.student_temp {hp.student_temp}]: a "
                                  f"softer teacher sharpens nothing; iBOT: 0.04 rising to 0.07")
        check_momentum("patch_center_momentum", patch_center_momentum)
        if not shared_head:  # the teacher's copy is averaged with the rest of the head
            self.head.patch_layer = WeightNormLinear(hp.bottleneck_dim, patch_out_dim, hp.norm_last_layer)
            self.momentum_head.patch_layer = momentum_copy(self.head.patch_layer)
        self.register_buffer("patch_center", torch.zeros(1, patch_out_dim))

    def default_views(self, size: int) -> ViewRecipe:
        dino = super().default_views(size)
        hp = self.hparams
        return iBOTViews(self.backbone.patch_size, hp.mask_ratio, hp.mask_ratio_var, global_size=size,
                         local_size=dino.local_size)

    # ---- the step ---------------------------------------------------------------------------------------
    def distill_masked(self, backbone: nn.Module, head: DINOHead, crops: Sequence[torch.Tensor],
                       masks: Sequence[torch.Tensor] | None) -> PatchDistilled:
        """Backbone and head over ``crops``: the global ones (with ``masks``) through all their tokens in one
        forward, the local ones pooled (one forward per size). With masks, the head sees the masked patches only
        (the loss reads no other)."""
        tokens = backbone.tokens(torch.cat(list(crops[:2])), None if masks is None else torch.cat(list(masks)))
        features = [*pooled(backbone, tokens).chunk(2), *features_by_size(backbone, crops[2:])]
        embeddings = head.embed(torch.cat(features))
        logits = head.last_layer(embeddings)
        patch_layer, patches = getattr(head, "patch_layer", head.last_layer), tokens[:, backbone.num_prefix:]
        if masks is None:
            patch_logits = list(patch_layer(head.embed(patches)).chunk(2))
        else:
            where = torch.cat(list(masks)).flatten(1).bool()
            counts = [int(m.sum()) for m in masks]
            patch_logits = list(patch_layer(head.embed(patches[where])).split(counts))
        return PatchDistilled(features, list(embeddings.chunk(len(crops))), list(logits.chunk(len(crops))),
                              patch_logits, None if masks is None else list(masks))

    def student_outputs(self, crops: Sequence[torch.Tensor], masks: Sequence[torch.Tensor] | None = None
                        ) -> PatchDistilled:
        if masks is None or len(masks) != 2:
            raise ConfigError("iBOT needs a mask of each of the two global crops (batch['masks']); use "
                              "selfsup.data.masking.iBOTViews as data.views")
        return self.distill_masked(self.backbone, self.head, crops, masks)

    def teacher_outputs(self, global_crops: Sequence[torch.Tensor]) -> PatchDistilled:
        return self.distill_masked(self.momentum_backbone, self.momentum_head, global_crops, None)

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        out = super().ssl_step(batch)
        out.logs["schedule/teacher_patch_temp"] = host_scalar(self.teacher_patch_temp())
        return out

    def loss_terms(self, student: PatchDistilled, teacher: PatchDistilled, temp: float) -> dict[str, torch.Tensor]:
        terms = super().loss_terms(student, teacher, temp)
        patch_temp = self.teacher_patch_temp()
        targets = [centered_targets(t[m.flatten(1).bool()], self.patch_center, patch_temp)
                   for t, m in zip(teacher.patch_logits, student.masks)]  # at the student's masked patches
        patch = masked_patch_loss(student.patch_logits, targets, student.masks, self.hparams.student_temp)
        return {**terms, "patch": self.hparams.patch_weight * patch}

    @torch.no_grad()
    def update_centers(self, teacher: PatchDistilled) -> None:
        super().update_centers(teacher)
        self.patch_center.copy_(updated_center(self.patch_center, torch.cat(teacher.patch_logits),
                                               self.hparams.patch_center_momentum))

    def teacher_patch_temp(self) -> float:
        """This epoch's temperature of the patch targets."""
        hp = self.hparams
        return teacher_temperature(self.current_epoch, hp.warmup_teacher_temp_epochs, hp.warmup_teacher_patch_temp,
                                   hp.teacher_patch_temp)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        super().on_before_optimizer_step(optimizer)
        if self.current_epoch < self.hparams.freeze_last_layer_epochs and hasattr(self.head, "patch_layer"):
            for p in self.head.patch_layer.parameters():
                p.grad = None  # frozen as the other last layer

    # ---- checks ------------------------------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        super().setup(stage)
        views = getattr(self.trainer.datamodule, "views", None) if self._trainer else None
        patch = self.backbone.patch_size
        if stage == "fit" and isinstance(views, iBOTViews) and views.model_patch_size != patch:
            raise ConfigError(f"data.views.model_patch_size {views.model_patch_size} is not the backbone's patch "
                              f"size {patch}; set data.views.init_args.model_patch_size: {patch}")
