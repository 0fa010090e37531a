"""Losses: pure functions of tensors, each documenting its formula and convention."""

from selfsup.losses.contrastive import nt_xent
from selfsup.losses.dino import (
    centered_targets,
    dino_loss,
    koleo_loss,
    sinkhorn_targets,
    teacher_temperature,
    updated_center,
)
from selfsup.losses.ibot import masked_patch_loss
from selfsup.losses.mae import mae_loss, normalize_patches, patchify, unpatchify
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

__all__ = ["barlow_twins_loss", "byol_loss", "centered_targets", "dino_loss", "instance_consistency", "koleo_loss",
           "mae_loss", "masked_l1_loss", "masked_patch_loss", "moco_v3_contrast", "moco_v3_loss", "normalize_patches",
           "nt_xent", "patchify", "pixpro_loss", "positive_pixel_pairs", "regression_loss", "sinkhorn",
           "sinkhorn_targets", "swapped_prediction_loss", "teacher_temperature", "unpatchify", "updated_center",
           "vicreg_terms"]
