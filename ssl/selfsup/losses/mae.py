"""MAE's reconstruction loss (docs/methods/mae.md)."""

from __future__ import annotations

import torch


def patchify(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Images (B, C, H, W) as (B, h*w, p*p*C) patches in row-major patch order, each patch's values in
    (row, column, channel) order."""
    b, c, height, width = images.shape
    p = patch_size
    h, w = height // p, width // p
    x = images.reshape(b, c, h, p, w, p)
    return torch.einsum("bchpwq->bhwpqc", x).reshape(b, h * w, p * p * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int, height: int, width: int) -> torch.Tensor:
    """The inverse of ``patchify``: (B, h*w, p*p*C) patches back to (B, C, H, W) images."""
    p = patch_size
    h, w = height // p, width // p
    x = patches.reshape(patches.shape[0], h, w, p, p, channels)
    return torch.einsum("bhwpqc->bchpwq", x).reshape(patches.shape[0], channels, height, width)


def normalize_patches(patches: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Each patch to zero mean and unit variance: ``(t - mean) / sqrt(var + eps)`` over its values, with the
    unbiased variance (divisor n - 1), MAE's ``norm_pix_loss`` target."""
    mean = patches.mean(dim=-1, keepdim=True)
    var = patches.var(dim=-1, keepdim=True, unbiased=True)
    return (patches - mean) / (var + eps).sqrt()


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = True) -> torch.Tensor:
    """Mean squared error of the predicted patches ``pred`` (B, L, D) against the target patches (B, L, D) on the
    masked patches only (``mask`` (B, L), 1 = masked)::

        t = normalize_patches(target) if norm_pix else target
        loss = sum_i mask_i * mean_d (pred_id - t_id)^2  /  sum_i mask_i

    Visible patches do not enter the loss. Local to this rank: DDP averages the gradients."""
    t = normalize_patches(target.float()) if norm_pix else target.float()
    per_patch = (pred.float() - t).pow(2).mean(dim=-1)
    m = mask.to(per_patch.dtype)
    return (per_patch * m).sum() / m.sum()
