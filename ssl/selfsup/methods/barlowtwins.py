"""Barlow Twins (Zbontar et al. 2021), as in docs/methods/barlowtwins.md."""

from __future__ import annotations

from typing import Any

from selfsup.losses import barlow_twins_loss
from selfsup.methods.base import SSLMethod, StepOutput
from selfsup.methods.twoview import TwoViews, head, require_nonnegative, require_positive


class BarlowTwins(TwoViews, SSLMethod):
    """Redundancy reduction. Each view: backbone -> projector (``proj_layers - 1`` x [Linear -> BN -> ReLU] at
    ``proj_hidden_dim``, then a bias-free Linear to ``proj_dim``). The projections are batch-normalised without
    affine over the global batch and their D x D cross-correlation C pushed to the identity:
    ``sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2`` (``selfsup.losses.barlow_twins_loss``, which gathers
    the projections with gradient so that any number of devices gives the single-process gradient).

    Args:
        proj_dim: output width of the projector (8192).
        proj_hidden_dim: hidden width of the projector (8192).
        proj_layers: projector depth (3).
        lambd: weight of the off-diagonal term (0.0051).
        no_decay_lr_scale: lr of biases and norm parameters (no weight decay, no LARS adaptation) as a fraction
            of the weights' lr (0.024: the official 0.0048 against 0.2).
        **kwargs: the shared options of ``SSLMethod`` (backbone, optimizer, schedule, probe).
    """

    def __init__(
        self,
        proj_dim: int = 8192,
        proj_hidden_dim: int = 8192,
        proj_layers: int = 3,
        lambd: float = 0.0051,
        no_decay_lr_scale: float = 0.024,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require_positive(proj_dim=proj_dim, proj_hidden_dim=proj_hidden_dim, proj_layers=proj_layers)
        require_nonnegative(lambd=lambd, no_decay_lr_scale=no_decay_lr_scale)
        self.projector = head(self.backbone.num_features, proj_hidden_dim, proj_dim, proj_layers)
        self.lambd, self.no_decay_lr_scale = lambd, no_decay_lr_scale

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        (f1, z1), (_, z2) = self.per_view(batch["views"], self.backbone, self.projector)
        return StepOutput(loss=barlow_twins_loss(z1, z2, self.lambd), features=f1, embeddings=z1)
