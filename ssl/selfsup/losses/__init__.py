"""Losses: pure functions of tensors, each documenting its formula and convention."""

from selfsup.losses.contrastive import nt_xent
from selfsup.losses.pixpro import instance_consistency, pixpro_loss, positive_pixel_pairs
from selfsup.losses.simmim import masked_l1_loss
from selfsup.losses.swav import sinkhorn, swapped_prediction_loss

__all__ = ["instance_consistency", "masked_l1_loss", "nt_xent", "pixpro_loss", "positive_pixel_pairs", "sinkhorn",
           "swapped_prediction_loss"]
