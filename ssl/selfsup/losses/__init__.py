"""Losses: pure functions of tensors, each documenting its formula and convention."""

from selfsup.losses.contrastive import nt_xent
from selfsup.losses.swav import sinkhorn, swapped_prediction_loss

__all__ = ["nt_xent", "sinkhorn", "swapped_prediction_loss"]
