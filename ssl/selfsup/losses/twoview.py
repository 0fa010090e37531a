"""Two-view losses without explicit negatives or large batches: BYOL, MoCo v3, Barlow Twins, VICReg.

Distributed convention (as ``nt_xent``): each rank returns a loss whose average over ranks, after DDP averages
the gradients, is the single-process loss over the global batch with the single-process gradient; 2 ranks x N
equal 1 rank x 2N. Terms over the global batch read other ranks' rows through ``selfsup.distributed.gather``,
whose backward sums the gradient over ranks. Every loss computes in float32, also under autocast.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.distributed import gather, rank


def _fp32(*tensors: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in tensors]


def regression_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's ``mean_n ||p_n/|p_n| - z_n/|z_n| ||^2 = mean_n (2 - 2 cos(p_n, z_n))`` over this rank's rows, no
    gradient into ``target``."""
    with torch.autocast(pred.device.type, enabled=False):
        pred, target = (F.normalize(x.float(), dim=1) for x in (pred, target.detach()))
        return (pred - target).pow(2).sum(1).mean()


def byol_loss(pred1: torch.Tensor, pred2: torch.Tensor, target1: torch.Tensor, target2: torch.Tensor
              ) -> torch.Tensor:
    """``regression(q(v1), z'(v2)) + regression(q(v2), z'(v1))``: the two directions SUMMED, as BYOL's official
    code (0 at perfect agreement, 8 at worst); half of it is the symmetrised mean other libraries report."""
    return regression_loss(pred1, target2) + regression_loss(pred2, target1)


def moco_v3_contrast(query: torch.Tensor, key: torch.Tensor, temperature: float) -> torch.Tensor:
    """MoCo v3's InfoNCE of this rank's queries (B, d) against the keys of every rank (N = B x world, no queue,
    no gradient into keys): ``2T x CE(q_i . K^T / T, i + B x rank)`` on L2-normalised rows, mean over this rank's
    queries. The ``2T`` factor is the official code's (it keeps the gradient scale independent of T)."""
    with torch.autocast(query.device.type, enabled=False):
        q = F.normalize(query.float(), dim=1)
        keys = gather(F.normalize(key.detach().float(), dim=1))
        targets = torch.arange(len(q), device=q.device) + rank() * len(q)
        return 2 * temperature * F.cross_entropy(q @ keys.T / temperature, targets)


def moco_v3_loss(query1: torch.Tensor, query2: torch.Tensor, key1: torch.Tensor, key2: torch.Tensor,
                 temperature: float = 1.0) -> torch.Tensor:
    """``contrast(q1, k2) + contrast(q2, k1)``, the two directions summed (the official code)."""
    return moco_v3_contrast(query1, key2, temperature) + moco_v3_contrast(query2, key1, temperature)


def cross_squares(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``||a^T b||_F^2``, the sum of all squares of the D x D product of two (N, D) matrices, through the cheaper of
    that product (N D^2 multiply-adds) and the N x N Gram matrices, ``<a a^T, b b^T>`` (traces commute; 2 N^2 D,
    N^2 D where ``b is a``): with a batch narrower than the projection, the D x D matrix is never formed."""
    n, d = a.shape
    if b is a and n < d:
        return (a @ a.T).pow(2).sum()
    if b is not a and 2 * n < d:
        return ((a @ a.T) * (b @ b.T)).sum()
    return (a.T @ b).pow(2).sum()


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambd: float = 0.0051, eps: float = 1e-5
                      ) -> torch.Tensor:
    """Barlow Twins on this rank's projections (B, D), over the global batch of N = B x world rows::

        z^ = (z - mean_N z) / sqrt(var_N z + eps)          (per dimension; biased variance, no affine)
        C  = z^1^T z^2 / N                                 (D x D cross-correlation)
        L  = sum_i (1 - C_ii)^2 + lambd * sum_{i != j} C_ij^2

    Both views are gathered with gradient, so the normalisation statistics and C are the global batch's and
    every rank computes the same L; the gather's backward sums over ranks, so after DDP's averaging each
    parameter gets exactly the single-process gradient (the official code all-reduces C without gradient,
    which leaves each GPU 1/world of it). The price: every rank multiplies the full N x D matrices, through the
    cheaper of C and the N x N Gram matrices (``cross_squares``).
    """
    with torch.autocast(z1.device.type, enabled=False):
        a, b = (F.batch_norm(gather(z.float()), None, None, training=True, eps=eps) for z in (z1, z2))
        n = len(a)
        on = (a * b).sum(0) / n  # C_ii
        off = cross_squares(a, b) / n**2 - on.pow(2).sum()  # sum_{i != j} C_ij^2
        return (1 - on).pow(2).sum() + lambd * off


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """VICReg's three terms of this rank's projections (B, D)::

        invariance = mean over this rank's B x D entries of (z1 - z2)^2
        variance   = mean_j relu(1 - sqrt(Var Z1_j + 1e-4)) / 2 + the same of Z2 / 2
        covariance = sum_{i != j} Cov(Z1)_ij^2 / D + the same of Z2

    Z1, Z2: both views gathered over ranks (gradient-carrying); Var unbiased, Cov = Z^T Z / (N - 1) of centred Z.
    The invariance stays local (DDP's averaging makes it the global mean); variance and covariance are the global
    batch's on every rank. VICReg's loss is ``25 x invariance + 25 x variance + 1 x covariance``.
    """
    with torch.autocast(z1.device.type, enabled=False):
        z1, z2 = _fp32(z1, z2)
        invariance = F.mse_loss(z1, z2)
        variance = covariance = z1.new_zeros(())
        for z in (gather(z1), gather(z2)):
            z = z - z.mean(0)
            n, d = z.shape
            var = z.pow(2).sum(0) / (n - 1)  # Cov's diagonal
            variance = variance + F.relu(1 - torch.sqrt(var + 1e-4)).mean() / 2
            covariance = covariance + (cross_squares(z, z) / (n - 1) ** 2 - var.pow(2).sum()) / d
        return invariance, variance, covariance

