"""CVRL (Qian et al. 2021), as in docs/methods/cvrl.md: SimCLR's objective on two clips of each video."""

from __future__ import annotations

from typing import Any

from selfsup.data.clips import ClipViews
from selfsup.data.views import ViewRecipe
from selfsup.errors import ConfigError
from selfsup.heads import LastNorm
from selfsup.methods.simclr import SimCLR
from selfsup.optim import LRScaling, OptimizerName


class CVRL(SimCLR):
    """Two temporally distant, spatially augmented clips of a video (``ClipViews``) -> 3-D backbone (one forward
    over both) -> projector ``proj_layers - 1`` x [Linear -> BN -> ReLU] then Linear(``proj_dim``) -> SimCLR's
    NT-Xent (``selfsup.losses.nt_xent``, negatives from every rank through the gradient-carrying gather).

    Defaults are CVRL's: tau 0.1, three hidden layers of 2048, output 128 with no norm, SGD (momentum 0.9) at an
    absolute lr (no batch scaling), 5 warmup epochs, cosine, weight decay 1e-6 (**[unverified]**: the paper
    does not give it; SimCLR's). ``default_views``: ``ClipViews`` (16 frames, stride 2).
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
        **kwargs: Any,
    ) -> None:
        super().__init__(temperature, proj_layers, proj_dim, proj_hidden_dim, proj_last_norm, backbone=backbone,
                         optimizer=optimizer, lr=lr, lr_scaling=lr_scaling, warmup_epochs=warmup_epochs, **kwargs)
        if self.backbone.media != "video":
            raise ConfigError(f"CVRL needs a 3-D (video) backbone, but model.backbone {backbone!r} reads single "
                              "images; use r3d_tiny, r3d_18 or r3d_50")

    def default_views(self, size: int) -> ViewRecipe:
        return ClipViews(size)
