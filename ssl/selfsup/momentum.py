"""Momentum (EMA) copies of modules, for methods with a slowly moving target encoder (PixPro; BYOL-style methods).

A momentum copy starts as a deep copy of its online module, never receives gradients (its parameters have
``requires_grad=False``, so ``split_decay`` leaves them out of the optimizer) and is saved in checkpoints like any
registered submodule. Only parameters are averaged; buffers (BatchNorm running statistics) are the copy's own,
as in PixPro's official code: the copy runs in train mode, normalises its keys with batch statistics and keeps
its own running averages, which are never mixed with the online ones.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` (same weights and buffers) with gradients switched off."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``: ``base`` at step 0, ``final`` at
    ``total_steps`` (BYOL's and PixPro's schedule; steps past the end stay at ``final``)."""
    progress = min(1.0, step / max(1, total_steps))
    return final - (final - base) * (math.cos(math.pi * progress) + 1) / 2


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``theta_target <- momentum * theta_target + (1 - momentum) * theta_online`` for every parameter, in place;
    buffers are left alone (see the module docstring). The two modules must have the same parameter layout."""
    pairs = list(zip(target.parameters(), online.parameters(), strict=True))
    targets = [t for t, _ in pairs]
    torch._foreach_mul_(targets, momentum)
    torch._foreach_add_(targets, [o.detach() for _, o in pairs], alpha=1 - momentum)
