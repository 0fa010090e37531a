"""VICReg (Bardes, Ponce and LeCun 2022), as in docs/methods/vicreg.md."""

from __future__ import annotations

from typing import Any

from selfsup.losses import vicreg_terms
from selfsup.methods.base import SSLMethod, StepOutput
from selfsup.methods.twoview import TwoViews, head, require_nonnegative, require_positive


class VICReg(TwoViews, SSLMethod):
    """Variance-invariance-covariance regularisation. Each view: backbone -> projector (``proj_layers - 1`` x
    [Linear -> BN -> ReLU] at ``proj_hidden_dim``, then a bias-free Linear to ``proj_dim``). The loss
    (``selfsup.losses.vicreg_terms``): the mean squared distance of the two projections (this device's batch),
    a hinge keeping every dimension's standard deviation over the global batch at 1 or more, and the squared
    off-diagonal covariances over the global batch, divided by D.

    Args:
        proj_dim: output width of the projector (8192).
        proj_hidden_dim: hidden width of the projector (8192).
        proj_layers: projector depth (3).
        invariance_weight: weight of the invariance term (25).
        variance_weight: weight of the variance term (25).
        covariance_weight: weight of the covariance term (1).
        **kwargs: the shared options of ``SSLMethod`` (backbone, optimizer, schedule, probe).
    """

    def __init__(
        self,
        proj_dim: int = 8192,
        proj_hidden_dim: int = 8192,
        proj_layers: int = 3,
        invariance_weight: float = 25.0,
        variance_weight: float = 25.0,
        covariance_weight: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require_positive(proj_dim=proj_dim, proj_hidden_dim=proj_hidden_dim, proj_layers=proj_layers)
        require_nonnegative(invariance_weight=invariance_weight, variance_weight=variance_weight,
                            covariance_weight=covariance_weight)
        self.projector = head(self.backbone.num_features, proj_hidden_dim, proj_dim, proj_layers)
        self.weights = (invariance_weight, variance_weight, covariance_weight)

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        (f1, z1), (_, z2) = self.per_view(batch["views"], self.backbone, self.projector)
        terms = vicreg_terms(z1, z2)
        loss = sum(w * t for w, t in zip(self.weights, terms))
        logs = {f"train/{name}": t.detach() for name, t in zip(("invariance", "variance", "covariance"), terms)}
        return StepOutput(loss=loss, features=f1, embeddings=z1, logs=logs)
