"""Momentum (EMA) copies of modules and the teacher mixin that owns them, for methods with a slowly moving target
encoder (BYOL, MoCo v3, PixPro).

A momentum copy starts as a deep copy of its online module, never receives gradients (its parameters have
``requires_grad=False``, so ``split_decay`` leaves them out of the optimizer) and is saved in checkpoints like any
registered submodule. Only parameters are averaged; buffers (BatchNorm running statistics) are the copy's own,
as in PixPro's official code: the copy runs in train mode, normalises its keys with batch statistics and keeps
its own running averages, which are never mixed with the online ones.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.optim import cosine_ramp


def momentum_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` (same weights and buffers) with gradients switched off."""
    target = copy.deepcopy(module)
    target.requires_grad_(False)
    return target


def cosine_momentum(step: int, total_steps: int, base: float = 0.99, final: float = 1.0) -> float:
    """``final - (final - base) * (cos(pi * step / total_steps) + 1) / 2``: ``base`` at step 0, ``final`` at
    ``total_steps`` (BYOL's and PixPro's schedule; steps past the end stay at ``final``)."""
    return cosine_ramp(step, total_steps, base, final)


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``theta_target <- momentum * theta_target + (1 - momentum) * theta_online`` for every parameter the online
    module trains, in place; frozen ones (``requires_grad`` off, e.g. a ViT's fixed position table) and buffers are
    left alone (see the module docstring). The two modules must have the same parameter layout."""
    pairs = [(t, o) for t, o in zip(target.parameters(), online.parameters(), strict=True) if o.requires_grad]
    targets = [t for t, _ in pairs]
    torch._foreach_mul_(targets, momentum)
    torch._foreach_add_(targets, [o.detach() for _, o in pairs], alpha=1 - momentum)


def linear_momentum(step: int, total_steps: int, base: float = 0.996, final: float = 1.0) -> float:
    """``base + (final - base) * step / total_steps``: ``base`` at step 0, ``final`` at ``total_steps`` (I-JEPA's
    schedule; steps past the end stay at ``final``)."""
    progress = min(1.0, step / max(1, total_steps))
    return base + (final - base) * progress


MomentumSchedule = Literal["cosine", "linear"]
SCHEDULES = {"cosine": cosine_momentum, "linear": linear_momentum}


def check_momentum(name: str, value: float) -> None:
    """A ``ConfigError`` naming ``model.<name>`` unless ``0 <= value <= 1``."""
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"model.{name} must be in [0, 1] (the weight the target keeps at each step), got {value}")


class MomentumTeacher:
    """Mixin of ``SSLMethod`` for methods with a momentum (EMA) target: BYOL, MoCo v3, PixPro.

    ``add_teacher(names, ...)`` gives every online module ``self.<name>`` a copy ``self.momentum_<name>``: a
    registered submodule (saved in checkpoints), out of the optimizer (``requires_grad`` off), run by the method
    without gradient. ``update_momentum()``, called by the method before it computes its targets, averages the
    copies once per optimizer step with a momentum rising from ``base_momentum`` to 1 over the trainer's total
    optimizer steps (``cosine_momentum`` or ``linear_momentum``). ``momentum_backbone`` (when ``backbone`` is one
    of the names) is what ``selfsup bench`` counts in the floor and what ``compile_backbone`` compiles.
    """

    def add_teacher(self, names: Sequence[str], base_momentum: float, schedule: MomentumSchedule = "cosine",
                    targets: Mapping[str, nn.Module] | None = None) -> None:
        """Momentum copies of the modules ``names``; ``targets`` gives a module its own target (e.g. a
        differently initialised one, BYOL's option) instead of a copy."""
        check_momentum("base_momentum", base_momentum)
        if schedule not in SCHEDULES:
            raise ConfigError(f"model.momentum_schedule {schedule!r} is unknown; choose {' or '.join(SCHEDULES)}")
        for name in names:
            target = (targets or {}).get(name)
            setattr(self, f"momentum_{name}", momentum_copy(getattr(self, name)) if target is None
                    else target.requires_grad_(False))
        self._teacher_names, self._teacher_schedule = tuple(names), (SCHEDULES[schedule], base_momentum)
        self._ema_step: int | None = None  # the optimizer step of the last EMA (see update_momentum)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(momentum copy, online module) pairs the EMA updates."""
        return [(getattr(self, f"momentum_{name}"), getattr(self, name)) for name in self._teacher_names]

    def current_momentum(self) -> float:
        """The EMA momentum at this optimizer step, over the trainer's total steps (any epochs/devices/batch);
        the base momentum outside a trainer (a step called by hand, e.g. by ``selfsup bench``)."""
        schedule, base = self._teacher_schedule
        if self._trainer is None:
            return base
        return schedule(self.global_step, int(self.trainer.estimated_stepping_batches), base)

    @torch.no_grad()
    def update_momentum(self) -> float:
        """One EMA of the copies per optimizer step: under gradient accumulation the online weights change only
        at the optimizer step, so later micro-batches of the same step leave the copies as they are. Returns the
        momentum used (log it as ``train/momentum``)."""
        tau = self.current_momentum()
        step = self.global_step if self._trainer is not None else None
        if step is None or step != self._ema_step:
            for target, online in self.momentum_pairs():
                ema_update_(target, online, tau)
            self._ema_step = step
        return tau
