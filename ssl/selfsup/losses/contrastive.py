"""Contrastive losses (SimCLR, CVRL)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.distributed import gather, rank


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1,
            negatives: torch.Tensor | None = None) -> torch.Tensor:
    """NT-Xent (normalised temperature-scaled cross-entropy) of SimCLR, with negatives from all ranks.

    ``z1`` and ``z2`` are this rank's projections of the two views, shape (N, d); row i of both comes from the
    same image. Rows are L2-normalised here. With Z1, Z2 the views gathered over ranks (gradient-carrying,
    ``selfsup.distributed.gather``) and s(a, b) = a.b / temperature, anchor i of view 1 scores its positive
    Z2[g(i)] against the 2M-2 other global samples (M = N x world size, g(i) = i + rank x N):

        l_i = -log( exp s(z1_i, Z2_g) / (sum_j exp s(z1_i, Z2_j) + sum_{j != g} exp s(z1_i, Z1_j)) )

    and symmetrically for view 2. ``negatives`` (K, d), if given, are further rows that every anchor of both
    views also scores against in its denominator (gathered over ranks too; CVRL's time-reversed clips).
    Returned: the MEAN over this rank's 2N anchors, i.e. the usual NT-Xent, which is half of the official SimCLR
    code's value (it sums the two directions). Under DDP, averaging this over ranks (as DDP does with gradients)
    gives exactly the single-process loss over 2M anchors.
    Computed in float32, also under autocast (bf16 similarities would blur logits 1/temperature apart).
    """
    with torch.autocast(z1.device.type, enabled=False):
        extra = None if negatives is None else gather(F.normalize(negatives.float(), dim=1))
        return _nt_xent(F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1), temperature, extra)


def _nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float, extra: torch.Tensor | None) -> torch.Tensor:
    all1, all2 = gather(z1), gather(z2)
    n = z1.shape[0]
    targets = torch.arange(n, device=z1.device) + rank() * n
    self_mask = F.one_hot(targets, all1.shape[0]).bool()

    def direction(a: torch.Tensor, same: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
        positives_and_cross = a @ other.T / temperature
        within = (a @ same.T / temperature).masked_fill(self_mask, float("-inf"))
        logits = [positives_and_cross, within] + ([] if extra is None else [a @ extra.T / temperature])
        return F.cross_entropy(torch.cat(logits, dim=1), targets)

    return 0.5 * (direction(z1, all1, all2) + direction(z2, all2, all1))
