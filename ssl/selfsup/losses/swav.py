"""SwAV's online clustering: Sinkhorn-Knopp codes and the swapped prediction loss (docs/methods/swav.md)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from selfsup.distributed import all_reduce_logsumexp, world_size


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Soft assignments (codes) of B samples to K prototypes with equal prototype shares over ALL ranks.

    ``scores`` (B_local, K) are sample-prototype similarities (queue rows first, if any); B = B_local x world
    size. The official algorithm, on Q = exp(scores / eps).T (K x B_local)::

        Q /= sum(Q)                                                    (all-reduced)
        repeat ``iterations`` times:
            Q /= row sums (all-reduced) ; Q /= K     -> each prototype gets 1/K of the mass, over all ranks
            Q /= column sums (local)    ; Q /= B     -> each sample gets 1/B
        return (B x Q).T

    computed on log Q (every division a subtraction of a logsumexp), so that it stays finite for any eps: the
    official exp(scores / eps) leaves float32 below eps ~0.0114 (and fp16 far earlier). In float32 whatever the
    input dtype or autocast, without gradient. Returned: (B_local, K), each row sums to 1; the column sums over
    all ranks approach B/K. Every rank must call this with the same B_local (the all-reduces are collectives).
    """
    with torch.autocast(scores.device.type, enabled=False):
        log_q = scores.float().T / eps
        k, b = log_q.shape[0], log_q.shape[1] * world_size()
        log_q -= all_reduce_logsumexp(torch.logsumexp(log_q.flatten(), dim=0))
        for _ in range(iterations):
            log_q -= all_reduce_logsumexp(torch.logsumexp(log_q, dim=1, keepdim=True)) + math.log(k)
            log_q -= torch.logsumexp(log_q, dim=0, keepdim=True) + math.log(b)
        return (log_q + math.log(b)).exp().T


def swapped_prediction_loss(
    scores: Sequence[torch.Tensor], codes: Mapping[int, torch.Tensor], temperature: float = 0.1
) -> torch.Tensor:
    """SwAV's swapped prediction: each crop predicts the codes of every OTHER assigned crop.

    ``scores``: one (B, K) tensor per crop (V crops); ``codes``: {crop index c: (B, K) codes of crop c} (SwAV:
    the two large crops). With p_v = softmax(scores_v / temperature), in float32::

        loss = mean_c [ 1/(V-1) sum_{v != c} mean_b ( -sum_k q_c[b, k] log p_v[b, k] ) ]

    This rank's samples only: DDP's gradient averaging makes it the global mean. About ln K at random init.
    In float32, also under autocast; one log-softmax per crop, shared by every assigned crop it predicts.
    """
    with torch.autocast(scores[0].device.type, enabled=False):
        log_p = F.log_softmax(torch.stack([s.float() for s in scores]) / temperature, dim=2)  # (V, B, K)
        total = log_p.new_zeros(())
        for c, q in codes.items():
            cross_entropy = -(q.float() * log_p).sum(dim=2).mean(dim=1)  # (V,): q_c against each crop's p_v
            total = total + (cross_entropy.sum() - cross_entropy[c]) / (len(scores) - 1)
        return total / len(codes)
