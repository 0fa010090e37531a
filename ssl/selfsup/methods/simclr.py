"""SimCLR v1/v2 (Chen et al. 2020), as in docs/methods/simclr.md."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

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
        return self.contrast(batch["views"])

    def contrast(self, views: Sequence[torch.Tensor], negatives: torch.Tensor | None = None,
                 projector: nn.Module | None = None) -> StepOutput:
        """NT-Xent of two views after one backbone forward (BN statistics over both, as the official code) and
        ``projector`` (default: the method's). ``negatives``: inputs forwarded with the views whose projections
        join every anchor's negatives (CVRL's reversed clips)."""
        view1, view2 = views
        extra = [] if negatives is None else [negatives]
        features = self.backbone(torch.cat([view1, view2, *extra]))
        z1, z2, *z_extra = (self.projector if projector is None else projector)(features).split(len(view1))
        loss = nt_xent(z1, z2, self.temperature, negatives=z_extra[0] if z_extra else None)
        return StepOutput(loss=loss, features=features[: len(view1)], embeddings=z1)
