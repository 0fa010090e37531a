"""SimMIM's reconstruction loss (docs/methods/simmim.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pixel_mask(mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """A (B, h, w) patch mask upsampled to pixels, (B, 1, h p, w p), by repeating each entry p x p times."""
    return mask.repeat_interleave(patch_size, 1).repeat_interleave(patch_size, 2).unsqueeze(1)


def masked_l1_loss(x: torch.Tensor, x_rec: torch.Tensor, mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """L1 between normalised pixels ``x`` and the reconstruction ``x_rec`` (B, C, H, W) over masked pixels only:

        M = mask upsampled to pixels (one channel),  loss = sum(|x - x_rec| * M) / (sum(M) + 1e-5) / C

    i.e. the mean absolute error per masked pixel and channel (SimMIM divides by C because M has one channel).
    Unmasked pixels do not enter the loss. No per-patch target normalisation (that is MAE). Local to this rank:
    DDP averages the gradients.
    """
    m = pixel_mask(mask, patch_size).to(x.dtype)
    errors = F.l1_loss(x_rec.float(), x.float(), reduction="none")
    return (errors * m).sum() / (m.sum() + 1e-5) / x.shape[1]
