"""Losses: pure functions of tensors, each documenting its formula and convention."""

from selfsup.losses.contrastive import nt_xent
from selfsup.losses.simmim import masked_l1_loss
from selfsup.losses.swav import sinkhorn, swapped_prediction_loss

__all__ = ["masked_l1_loss", "nt_xent", "sinkhorn", "swapped_prediction_loss"]
