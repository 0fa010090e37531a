"""What the two-view methods without negatives share (BYOL, MoCo v3, Barlow Twins, VICReg): their asymmetric pair
of views, one backbone forward per view, bias-free projector MLPs, and checks of their options."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from selfsup.data.coord_views import AsymmetricViews
from selfsup.data.views import ViewRecipe
from selfsup.errors import ConfigError
from selfsup.heads import MLP, LastNorm
from selfsup.methods.base import StepOutput
from selfsup.momentum import MomentumTeacher


def require_positive(**options: float) -> None:
    """A ``ConfigError`` naming the first ``model.<option>`` (a layer width or count, a temperature) not above 0."""
    for name, value in options.items():
        if value <= 0:
            raise ConfigError(f"model.{name} must be > 0, got {value}; set a positive value")


def require_nonnegative(**options: float) -> None:
    """A ``ConfigError`` naming the first ``model.<option>`` (a loss weight or temperature) below 0."""
    for name, value in options.items():
        if value < 0:
            raise ConfigError(f"model.{name} must be >= 0, got {value}; set it to 0 or more")


def head(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, last_norm: LastNorm = "none") -> MLP:
    """``layers - 1`` x (Linear -> BN -> ReLU) at ``hidden_dim``, then a bias-free Linear to ``out_dim`` and
    ``last_norm``: the projectors and predictors of BYOL, MoCo v3, Barlow Twins and VICReg."""
    require_positive(layers=layers)
    return MLP([in_dim] + [hidden_dim] * (layers - 1) + [out_dim], last_norm=last_norm, last_bias=False)


class TwoViews:
    """Mixin of ``SSLMethod`` for methods that compare two augmented views of each image (any ``pair`` recipe:
    ``AsymmetricViews`` by default, ``SimCLRViews``).

    Args:
        joint_forward: one forward over both views, so batch-norm statistics are over 2B images as in SimCLR
            (the MNIST recipes: it learns faster there), instead of one forward per view with statistics over B
            (False: the official codes of all four methods).
    """

    view_kinds = ("pair",)

    def __init__(self, *, joint_forward: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.joint_forward = joint_forward

    def default_views(self, size: int) -> ViewRecipe:
        return AsymmetricViews(size)

    def per_view(self, views: Sequence[torch.Tensor], *stages: Callable[[torch.Tensor], torch.Tensor]
                 ) -> list[list[torch.Tensor]]:
        """For each view, its output after every stage in turn (the first stage is a backbone):
        ``[[backbone(v), stage2(backbone(v)), ...], ...]``; with ``joint_forward`` each stage runs once over
        both views."""
        if self.joint_forward:
            outputs = _chain(torch.cat(list(views)), stages)
            return [list(chain) for chain in zip(*(out.chunk(len(views)) for out in outputs))]
        return [_chain(view, stages) for view in views]


def _chain(x: torch.Tensor, stages: Sequence[Callable[[torch.Tensor], torch.Tensor]]) -> list[torch.Tensor]:
    """The output of every stage of ``stages`` applied in turn to ``x``."""
    outputs = []
    for stage in stages:
        x = stage(x)
        outputs.append(x)
    return outputs


class TwoViewTeacher(MomentumTeacher, TwoViews):
    """Mixin of ``SSLMethod`` for two-view methods whose targets come from momentum copies of the backbone and
    projector (BYOL, MoCo v3): the online chain backbone -> projector -> predictor on each view, the copies'
    projections as targets."""

    def predict_and_target(self, views: Sequence[torch.Tensor], loss: Callable[..., torch.Tensor]) -> StepOutput:
        """``loss(pred1, pred2, target1, target2)`` after the online forwards and one EMA of the copies."""
        (f1, z1, p1), (_, _, p2) = self.per_view(views, self.backbone, self.projector, self.predictor)
        tau = self.update_momentum()
        with torch.no_grad():
            (_, t1), (_, t2) = self.per_view(views, self.momentum_backbone, self.momentum_projector)
        return StepOutput(loss=loss(p1, p2, t1, t2), features=f1, embeddings=z1,
                          logs={"train/momentum": torch.tensor(tau)})
