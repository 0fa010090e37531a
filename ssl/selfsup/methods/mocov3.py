"""MoCo v3 (Chen, Xie and He 2021), as in docs/methods/mocov3.md."""

from __future__ import annotations

from functools import partial
from typing import Any

from selfsup.losses import moco_v3_loss
from selfsup.methods.base import SSLMethod, StepOutput
from selfsup.methods.twoview import TwoViewTeacher, head, require_positive
from selfsup.momentum import MomentumSchedule


class MoCoV3(TwoViewTeacher, SSLMethod):
    """Momentum contrast without a queue. Queries: backbone -> projector -> predictor of each view; keys: the
    momentum encoder's (``momentum_backbone``, ``momentum_projector``) projection of the other view, from every
    rank and without gradient. InfoNCE of each query against all keys of the global batch (its own image's key
    is the positive), times 2T, both directions summed (``selfsup.losses.moco_v3_loss``). The momentum rises from
    ``base_momentum`` to 1 on a cosine; the EMA runs before the keys of every optimizer step.

    All Linear layers are bias-free; hidden ones are followed by BN and ReLU; the projector ends in BN without
    scale and shift. ResNet: ``proj_layers=2``, ``pred_last_norm=False``; ViT: ``proj_layers=3``,
    ``pred_last_norm=True`` (the official recipes).

    Args:
        temperature: T of the InfoNCE (1.0 ResNet-50, 0.2 ViT).
        proj_layers: projector depth (2 ResNet, 3 ViT).
        proj_dim: output width of projector and predictor (256).
        proj_hidden_dim: hidden width of the projector (4096).
        pred_hidden_dim: hidden width of the predictor (4096).
        pred_last_norm: end the predictor in BN without scale and shift too (ViT).
        base_momentum: momentum at step 0 (0.99; 0.996 for 1000 epochs), rising to 1.
        momentum_schedule: ``cosine`` (MoCo v3) or ``linear``.
        **kwargs: the shared options of ``SSLMethod`` (backbone, optimizer, schedule, probe).
    """

    def __init__(
        self,
        temperature: float = 1.0,
        proj_layers: int = 2,
        proj_dim: int = 256,
        proj_hidden_dim: int = 4096,
        pred_hidden_dim: int = 4096,
        pred_last_norm: bool = False,
        base_momentum: float = 0.99,
        momentum_schedule: MomentumSchedule = "cosine",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        require_positive(proj_dim=proj_dim, proj_hidden_dim=proj_hidden_dim, pred_hidden_dim=pred_hidden_dim,
                         temperature=temperature)
        self.projector = head(self.backbone.num_features, proj_hidden_dim, proj_dim, proj_layers, "bn_noaffine")
        self.predictor = head(proj_dim, pred_hidden_dim, proj_dim, 2, "bn_noaffine" if pred_last_norm else "none")
        self.add_teacher(["backbone", "projector"], base_momentum, momentum_schedule)
        self.temperature = temperature

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        return self.predict_and_target(batch["views"], partial(moco_v3_loss, temperature=self.temperature))
