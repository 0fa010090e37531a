"""Losses: pure functions of tensors, each documenting its formula and convention."""

from selfsup.losses.contrastive import nt_xent
from selfsup.losses.ibot import masked_patch_loss, updated_centre
from selfsup.losses.pixpro import instance_consistency, pixpro_loss, positive_pixel_pairs
from selfsup.losses.simmim import masked_l1_loss
from selfsup.losses.swav import sinkhorn, swapped_prediction_loss
from selfsup.losses.twoview import (
    barlow_twins_loss,
    byol_loss,
    moco_v3_contrast,
    moco_v3_loss,
    regression_loss,
    vicreg_terms,
)

__all__ = ["barlow_twins_loss", "byol_loss", "instance_consistency", "masked_l1_loss", "masked_patch_loss",
           "moco_v3_contrast", "moco_v3_loss", "nt_xent", "pixpro_loss", "positive_pixel_pairs", "regression_loss",
           "sinkhorn", "swapped_prediction_loss", "updated_centre", "vicreg_terms"]
