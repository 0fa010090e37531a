"""CVRL (Qian et al. 2021), as in docs/methods/cvrl.md: SimCLR's objective on two clips of each video."""

from __future__ import annotations

import copy
from typing import Any

import torch

from selfsup.data.clips import ClipViews
from selfsup.data.views import ViewRecipe
from selfsup.errors import ConfigError
from selfsup.heads import LastNorm
from selfsup.methods.base import StepOutput
from selfsup.methods.simclr import SimCLR
from selfsup.optim import LRScaling, OptimizerName


class CVRL(SimCLR):
    """Two temporally distant, spatially augmented clips of a video (``ClipViews``) -> 3-D backbone (one forward
    over both) -> projector ``proj_layers - 1`` x [Linear -> BN -> ReLU] then Linear(``proj_dim``) -> SimCLR's
    NT-Xent (``selfsup.losses.nt_xent``, negatives from every rank through the gradient-carrying gather).

    Defaults are CVRL's: tau 0.1, three hidden layers of 2048, output 128 with no norm, SGD (momentum 0.9) at an
    absolute lr (no batch scaling), 5 warmup epochs, cosine, weight decay 1e-6 (**[unverified]**: the paper
    does not give it; SimCLR's). ``default_views``: ``ClipViews`` (16 frames, stride 2).

    ``frame_loss_weight`` > 0 adds a second NT-Xent, with its own projector, on one random frame of each clip (run
    as a one-frame clip): the two frames of a video come from different times and share no motion, so this loss
    can only fall by telling the videos' content apart. ``reversed_negatives`` adds each first clip played
    backwards as a negative for every anchor: the same frames in the other order, which only motion tells apart
    (neither is part of CVRL; docs/methods/cvrl.md).
    """

    view_kinds = ("clips",)

    def __init__(
        self,
        backbone: str = "r3d_50",
        temperature: float = 0.1,
        proj_layers: int = 4,
        proj_dim: int = 128,
        proj_hidden_dim: int | None = 2048,
        proj_last_norm: LastNorm = "none",
        optimizer: OptimizerName = "sgd",
        lr: float = 0.32,
        lr_scaling: LRScaling = "none",
        warmup_epochs: float = 5.0,
        frame_loss_weight: float = 0.0,
        reversed_negatives: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(temperature, proj_layers, proj_dim, proj_hidden_dim, proj_last_norm, backbone=backbone,
                         optimizer=optimizer, lr=lr, lr_scaling=lr_scaling, warmup_epochs=warmup_epochs, **kwargs)
        if self.backbone.media != "video":
            raise ConfigError(f"CVRL needs a 3-D (video) backbone, but model.backbone {backbone!r} reads single "
                              "images; use r3d_tiny, r3d_18 or r3d_50")
        if frame_loss_weight < 0:
            raise ConfigError(f"model.frame_loss_weight must be >= 0, got {frame_loss_weight}")
        self.frame_loss_weight, self.reversed_negatives = frame_loss_weight, reversed_negatives
        self.frame_projector = copy.deepcopy(self.projector) if frame_loss_weight > 0 else None

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        clips = batch["views"]
        out = self.contrast(clips, negatives=clips[0].flip(2) if self.reversed_negatives else None)
        if self.frame_projector is None:
            return out
        frame_loss = self.contrast([random_frame(clip) for clip in clips], projector=self.frame_projector).loss
        out.logs.update({"train/clip_loss": out.loss.detach(), "train/frame_loss": frame_loss.detach()})
        out.loss = out.loss + self.frame_loss_weight * frame_loss
        return out

    def default_views(self, size: int) -> ViewRecipe:
        return ClipViews(size)


def random_frame(clips: torch.Tensor) -> torch.Tensor:
    """One frame drawn at random from each clip of (B, C, T, H, W), as one-frame clips (B, C, 1, H, W)."""
    picks = torch.randint(clips.shape[2], (len(clips),), device=clips.device)
    return clips[torch.arange(len(clips), device=clips.device), :, picks].unsqueeze(2)
