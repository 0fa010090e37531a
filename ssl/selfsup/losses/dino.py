"""DINO's self-distillation: the cross-entropy over (teacher crop, student crop) pairs, the teacher's targets
(centred and sharpened, or Sinkhorn-Knopp), the centre's update, the teacher-temperature schedule and DINOv2's
KoLeo regulariser (docs/methods/dino.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from selfsup.distributed import all_reduce_sum, world_size
from selfsup.losses.swav import sinkhorn


def dino_loss(student_logits: Sequence[torch.Tensor], teacher_probs: Sequence[torch.Tensor],
              student_temp: float = 0.1) -> torch.Tensor:
    """Mean over the pairs (q, v) with v != q of ``mean_b -sum_k t_q[b, k] log softmax(s_v[b] / student_temp)_k``.

    ``student_logits``: one (B, K) tensor per crop, the teacher's crops first (DINO: [g1, g2, l1, ..., ln]);
    ``teacher_probs``: one (B, K) target per teacher crop (the first ``len(teacher_probs)`` crops). With 2 globals
    and n locals that is 2 (n + 1) pairs; a crop never predicts its own target. This rank's samples only: DDP's
    gradient averaging makes it the global mean. In float32, also under autocast."""
    with torch.autocast(student_logits[0].device.type, enabled=False):
        log_p = [F.log_softmax(s.float() / student_temp, dim=-1) for s in student_logits]
        total, pairs = log_p[0].new_zeros(()), 0
        for q, t in enumerate(teacher_probs):
            for v, lp in enumerate(log_p):
                if v != q:
                    total = total - (t.float() * lp).sum(dim=-1).mean()
                    pairs += 1
        return total / pairs


@torch.no_grad()
def centered_targets(teacher_logits: torch.Tensor, center: torch.Tensor, temperature: float) -> torch.Tensor:
    """``softmax((teacher_logits - center) / temperature)`` over the last dimension, in float32, no gradient."""
    return F.softmax((teacher_logits.float() - center.float()) / temperature, dim=-1)


@torch.no_grad()
def sinkhorn_targets(teacher_logits: torch.Tensor, temperature: float, iterations: int = 3) -> torch.Tensor:
    """DINOv2's Sinkhorn-Knopp targets of (B, K) teacher logits: SwAV's ``sinkhorn`` with ``eps`` = the teacher
    temperature (every prototype gets 1/K of the mass over all ranks, every sample 1), no centre."""
    return sinkhorn(teacher_logits, temperature, iterations)


@torch.no_grad()
def updated_center(center: torch.Tensor, teacher_logits: torch.Tensor, momentum: float = 0.9) -> torch.Tensor:
    """The next centre: ``momentum * center + (1 - momentum) * mean of the raw teacher logits`` over the rows of
    ``teacher_logits`` (every teacher crop of the batch, (B * crops, K) or any (..., K)) and over ALL ranks
    (all-reduced; every rank must call it with the same number of rows). Returned, not applied: the caller
    replaces its centre once this step's targets are computed."""
    rows = teacher_logits.float().reshape(-1, teacher_logits.shape[-1])
    mean = all_reduce_sum(rows.sum(dim=0, keepdim=True)) / (len(rows) * world_size())
    return center * momentum + mean.to(center.dtype) * (1 - momentum)


def teacher_temperature(epoch: float, warmup_epochs: float, warmup_temp: float = 0.04,
                        final_temp: float = 0.04) -> float:
    """The teacher's temperature at ``epoch``: DINO's ``linspace(warmup_temp, final_temp, warmup_epochs)``
    indexed by the epoch (``warmup_temp`` at 0, ``final_temp`` from ``warmup_epochs - 1`` on; a fractional epoch
    interpolates, DINOv2's per-step ramp)."""
    if epoch >= warmup_epochs:
        return final_temp
    if warmup_epochs <= 1:
        return warmup_temp
    return warmup_temp + (final_temp - warmup_temp) * min(1.0, epoch / (warmup_epochs - 1))


def koleo_loss(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """DINOv2's KoLeo regulariser of (B, D) features: ``-mean_i log(||u_i - u_nn(i)|| + eps)`` with u the
    L2-normalised rows and nn(i) the other row of largest dot product. This rank's rows only, float32."""
    with torch.autocast(x.device.type, enabled=False):
        u = F.normalize(x.float(), dim=-1, eps=eps)
        dots = u @ u.T
        dots.fill_diagonal_(-math.inf)
        nearest = dots.argmax(dim=1)
        distances = F.pairwise_distance(u, u[nearest], p=2, eps=eps)
        return -torch.log(distances + eps).mean()
