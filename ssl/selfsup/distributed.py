"""Rank/world helpers and an all-gather that carries gradient back to every rank's samples."""

from __future__ import annotations

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if is_distributed() else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        ctx.batch = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        # Every rank's loss may depend on this rank's rows: sum their gradients, keep this rank's slice.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.batch
        return grad[start : start + ctx.batch]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` (same shape on every rank) over ranks along dim 0, in rank order.

    Differentiable: the backward pass all-reduces (sums) the incoming gradient and returns this rank's slice,
    so that after DDP averages parameter gradients, 2 ranks x N samples match 1 rank x 2N exactly.
    Without a process group it returns ``x`` itself.
    """
    if not is_distributed():
        return x
    return _GatherWithGrad.apply(x)


@torch.no_grad()
def all_reduce_logsumexp(x: torch.Tensor) -> torch.Tensor:
    """``log(sum over ranks of exp(x))`` element-wise, without overflow (each rank's x shifted by the global
    maximum); identity without a process group. For log-domain sums: pass each rank's local logsumexp."""
    if not is_distributed():
        return x
    peak = x.clone()
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    total = (x - peak).exp()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return peak + total.log()


@torch.no_grad()
def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    """The element-wise sum of ``x`` over ranks (a new tensor; a copy of ``x`` without a process group). No
    gradient: for statistics such as DINO's centre."""
    total = x.detach().clone()
    if is_distributed():
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total
