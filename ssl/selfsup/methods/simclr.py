"""SimCLR v1/v2 (Chen et al. 2020), as in docs/methods/simclr.md."""

from __future__ import annotations

from typing import Any

import torch

from selfsup.data.views import SimCLRViews, ViewRecipe
from selfsup.heads import MLP, LastNorm
from selfsup.losses import nt_xent
from selfsup.methods.base import SSLMethod, StepOutput


class SimCLR(SSLMethod):
    """Two augmented views -> backbone (one forward over both) -> MLP projector -> NT-Xent with negatives
    from every rank.

    Args:
        temperature: NT-Xent temperature (0.1 ImageNet, 0.5 CIFAR).
        proj_layers: projector depth: 2 for SimCLR v1, 3 for v2.
        proj_dim: output width of the projector.
        proj_hidden_dim: hidden width (default: the backbone's feature width).
        proj_last_norm: what follows the projector's last Linear (SimCLR: BN without shift).
        **kwargs: the shared options of ``SSLMethod`` (backbone, optimizer, schedule, probe).
    """

    view_kinds = ("pair",)

    def __init__(
        self,
        temperature: float = 0.1,
        proj_layers: int = 2,
        proj_dim: int = 128,
        proj_hidden_dim: int | None = None,
        proj_last_norm: LastNorm = "bn_noshift",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        width = self.backbone.num_features
        hidden = proj_hidden_dim or width
        self.projector = MLP([width] + [hidden] * (proj_layers - 1) + [proj_dim], last_norm=proj_last_norm)
        self.temperature = temperature

    def default_views(self, size: int) -> ViewRecipe:
        return SimCLRViews(size)

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        view1, view2 = batch["views"]
        features = self.backbone(torch.cat([view1, view2]))  # BN statistics over both views, as the official code
        z1, z2 = self.projector(features).chunk(2)
        return StepOutput(loss=nt_xent(z1, z2, self.temperature), features=features[: len(view1)], embeddings=z1)
