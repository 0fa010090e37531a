"""BYOL (Grill et al. 2020), as in docs/methods/byol.md."""

from __future__ import annotations

from typing import Any

from selfsup.losses import byol_loss
from selfsup.methods.base import SSLMethod, StepOutput
from selfsup.methods.twoview import TwoViewTeacher, head, require_positive
from selfsup.momentum import MomentumSchedule


class BYOL(TwoViewTeacher, SSLMethod):
    """Bootstrap your own latent. The online network (backbone -> projector -> predictor) regresses, on each
    view, the target network's projection of the other view: ``2 - 2 cos`` per image, the two directions summed
    (``selfsup.losses.byol_loss``). The target (``momentum_backbone``, ``momentum_projector``) is an EMA of the
    online backbone and projector with momentum ``1 - (1 - base_momentum)(cos(pi k / K) + 1) / 2`` at optimizer
    step k of K, runs in training mode (batch statistics; its BN running averages are its own) and gets no
    gradient. No negatives: the predictor and the slow target keep it from collapsing.

    Args:
        proj_dim: output width of projector and predictor (256).
        proj_hidden_dim: hidden width of the projector (4096).
        pred_hidden_dim: hidden width of the predictor (4096).
        base_momentum: target momentum at step 0 (0.996 for 1000 epochs; 0.99 for 100-300), rising to 1.
        momentum_schedule: ``cosine`` (BYOL) or ``linear``.
        independent_target: start the target from its own random initialisation, as the official code
            (False: a copy of the online network).
        **kwargs: the shared options of ``SSLMethod`` (backbone, optimizer, schedule, probe).
    """

    def __init__(
        self,
        proj_dim: int = 256,
        proj_hidden_dim: int = 4096,
        pred_hidden_dim: int = 4096,
        base_momentum: float = 0.996,
        momentum_schedule: MomentumSchedule = "cosine",
        independent_target: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require_positive(proj_dim=proj_dim, proj_hidden_dim=proj_hidden_dim, pred_hidden_dim=pred_hidden_dim)
        width = self.backbone.num_features
        self.projector = head(width, proj_hidden_dim, proj_dim)
        self.predictor = head(proj_dim, pred_hidden_dim, proj_dim)
        targets = None
        if independent_target:
            targets = {"backbone": self.new_backbone(), "projector": head(width, proj_hidden_dim, proj_dim)}
        self.add_teacher(["backbone", "projector"], base_momentum, momentum_schedule, targets)

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        return self.predict_and_target(batch["views"], byol_loss)
