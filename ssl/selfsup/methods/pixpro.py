"""PixPro (Xie et al. 2021), as in docs/methods/pixpro.md."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from selfsup.data.coord_views import CoordViews
from selfsup.data.views import ViewRecipe
from selfsup.heads import MLP2d, PixelPropagation
from selfsup.losses import instance_consistency, pixpro_loss
from selfsup.methods.base import SSLMethod, StepOutput
from selfsup.momentum import MomentumTeacher


class PixPro(MomentumTeacher, SSLMethod):
    """Pixel-to-propagation consistency. Each view's dense map (``backbone.forward_features``) goes through a
    2-D MLP projector and the pixel propagation module; a momentum copy of backbone and projector gives the
    keys. Pixels of the two views whose bin centres (from the crop boxes) are closer than ``pos_threshold``
    bin diagonals are positive pairs; the loss is -2 x their mean cosine, both directions.

    The momentum copies (``momentum_backbone``, ``momentum_projector``; ``MomentumTeacher``) are averaged from the
    online modules before the keys of every step with ``cosine_momentum`` from ``base_momentum`` to 1 over the
    trainer's total optimizer steps; only parameters are averaged (their BN running statistics are their own, as
    the official code). Each view goes through the encoders in its own forward, so BN statistics are per view, as
    the official code.

    PixContrast (the paper's contrastive variant) is not offered: the official code never released it and the
    paper leaves open which pixels serve as negatives (other images' pixels or only the other view's) and its
    temperature (docs/methods/pixpro.md), so it cannot be specified cleanly.

    Args:
        proj_dim: output width of the projector (256).
        proj_hidden_dim: hidden width of the projector and predictor (4096).
        transform_layers: the propagation module's transform g: 0 identity, 1 a 1x1 conv, 2 a 2-layer MLP.
        gamma: sharpness of the pixel similarity in propagation (2).
        pos_threshold: positive-pair distance in bin diagonals (0.7).
        base_momentum: momentum at step 0 (0.99), rising to 1 at the last step.
        instance_weight: weight of the optional BYOL-style instance branch (0: off, as the released scripts):
            a separate 2-D projector, a per-pixel 2-D MLP predictor, average pooling, -2 x cosine against the
            pooled momentum instance projection of the other view, both directions.
        **kwargs: the shared options of ``SSLMethod`` (backbone, optimizer, schedule, probe).
    """

    view_kinds = ("coord",)

    def __init__(
        self,
        proj_dim: int = 256,
        proj_hidden_dim: int = 4096,
        transform_layers: int = 1,
        gamma: float = 2.0,
        pos_threshold: float = 0.7,
        base_momentum: float = 0.99,
        instance_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        width = self.backbone.num_features
        self.projector = MLP2d([width, proj_hidden_dim, proj_dim])
        self.propagation = PixelPropagation(proj_dim, transform_layers, gamma)
        self.instance_projector = self.predictor = self.momentum_instance_projector = None
        if instance_weight > 0:
            self.instance_projector = MLP2d([width, proj_hidden_dim, proj_dim])
            self.predictor = MLP2d([proj_dim, proj_hidden_dim, proj_dim])
        instance = ["instance_projector"] if instance_weight > 0 else []
        self.add_teacher(["backbone", "projector", *instance], base_momentum)

    def default_views(self, size: int) -> ViewRecipe:
        return CoordViews(size)

    # ---- the step ------------------------------------------------------------------------------------
    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        views, boxes = batch["views"], batch["boxes"]
        maps = [self.backbone.forward_features(v) for v in views]
        projected = [self.projector(m) for m in maps]
        preds = [self.propagation(p) for p in projected]
        tau = self.update_momentum()
        with torch.no_grad():
            key_maps = [self.momentum_backbone.forward_features(v) for v in views]
            keys = [self.momentum_projector(m) for m in key_maps]
        pixel = pixpro_loss(preds[0], preds[1], keys[0], keys[1], boxes[0], boxes[1], self.hparams.pos_threshold)
        logs = {"train/pixel_loss": pixel.detach(), "train/momentum": torch.tensor(tau)}
        loss = pixel
        if self.instance_projector is not None:
            instance = self._instance_loss(maps, key_maps)
            loss = loss + self.hparams.instance_weight * instance
            logs["train/instance_loss"] = instance.detach()
        return StepOutput(loss=loss, features=maps[0].flatten(2).mean(2), logs=logs,
                          embeddings=projected[0].flatten(2).mean(2))

    def _instance_loss(self, maps: list[torch.Tensor], key_maps: list[torch.Tensor]) -> torch.Tensor:
        """The instance branch: each view's pooled prediction against the other view's pooled momentum target."""
        preds = [F.normalize(self.predictor(self.instance_projector(m)).mean(dim=(2, 3)), dim=1) for m in maps]
        with torch.no_grad():
            targets = [F.normalize(self.momentum_instance_projector(m).mean(dim=(2, 3)), dim=1) for m in key_maps]
        return instance_consistency(preds[0], targets[1]) + instance_consistency(preds[1], targets[0])
