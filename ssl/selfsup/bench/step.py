"""What one training step costs: the backbone calls a step makes (its floor), paired timings, the median's
confidence interval and peak memory.

Used by `selfsup bench`; kept apart from the command so tests can check each measurement on its own.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

ENTRIES = ("forward", "forward_features", "tokens")  # the ways a method calls its backbone (tokens: ViT, MAE)


@dataclass
class BackboneCall:
    """One recorded backbone call: the entry point and its (detached) arguments, e.g. SimMIM's mask."""

    entry: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)

    def run(self, module: nn.Module) -> torch.Tensor:
        """The same call on ``module``: ``forward`` through ``module(...)`` (hooks, torch.compile), or
        ``module.forward_features(...)``."""
        fn = module if self.entry == "forward" else getattr(module, self.entry)
        return fn(*self.args, **self.kwargs)

    @property
    def images(self) -> int:
        return len(self.args[0]) if self.args and isinstance(self.args[0], torch.Tensor) else 0

    @property
    def shape(self) -> list[int]:
        """The shape of the call's input batch (empty where its first argument is not a tensor)."""
        return list(self.args[0].shape) if self.images else []


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    if isinstance(value, dict):
        return {k: _detached(v) for k, v in value.items()}
    return value


class BackboneCalls:
    """Context manager recording every outermost call of ``module.forward``, ``module.forward_features`` or
    (ViTs) ``module.tokens``
    (``forward`` calling ``forward_features`` inside counts once), arguments detached. ``module=None``
    records nothing (a method without a momentum backbone)."""

    def __init__(self, module: nn.Module | None) -> None:
        self.module, self.calls = module, []
        self._depth, self._saved = 0, {}

    def __enter__(self) -> BackboneCalls:
        if self.module is not None:
            for entry in (e for e in ENTRIES if hasattr(self.module, e)):
                self._saved[entry] = self.module.__dict__.get(entry)  # an instance attribute (compiled) or None
                setattr(self.module, entry, self._recording(entry, getattr(self.module, entry)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for entry, saved in self._saved.items():
            if saved is None:
                delattr(self.module, entry)
            else:
                setattr(self.module, entry, saved)
        self._saved = {}

    def _recording(self, entry: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        @torch.compiler.disable  # recording runs eagerly; the timed steps run without it
        def recorded(*args: Any, **kwargs: Any) -> Any:
            if self._depth == 0:
                self.calls.append(BackboneCall(entry, _detached(args), _detached(kwargs)))
            self._depth += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1

        return recorded


def floor_step(backbone: nn.Module, calls: list[BackboneCall], momentum: nn.Module | None = None,
               momentum_calls: Sequence[BackboneCall] = (),
               context: Callable[[], AbstractContextManager] = nullcontext) -> Callable[[], None]:
    """The floor of a step: the forward of ``backbone`` on each recorded call's inputs and one backward through
    all of them (activations of every call held at once, as in the step), and a forward without gradient of the
    momentum backbone on its own recorded inputs (PixPro's target encoder). Forwards run inside ``context``
    (autocast under mixed precision), the backward outside it, as in training."""

    def run() -> None:
        backbone.zero_grad(set_to_none=True)
        with context():
            outputs = [call.run(backbone) for call in calls]
        if momentum is not None:
            with torch.no_grad(), context():
                for call in momentum_calls:
                    call.run(momentum)
        if outputs:
            torch.stack([out.float().sum() for out in outputs]).sum().backward()

    return run


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def paired_seconds(step: Callable[[], None], floor: Callable[[], None], device: torch.device, warmup: int,
                   repeats: int) -> tuple[list[float], list[float]]:
    """Wall times of ``step`` and ``floor`` in ``repeats`` pairs after ``warmup`` untimed ones; CUDA
    synchronised. Each pair runs both back to back, in alternating order (step first, then floor first), so a
    change in the machine's load (a shared machine) or a gain from running second hits both alike and each
    pair's ratio stays meaningful."""
    times: tuple[list[float], list[float]] = ([], [])
    for i in range(warmup + repeats):
        order = ((0, step), (1, floor)) if i % 2 == 0 else ((1, floor), (0, step))
        for slot, fn in order:
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            if i >= warmup:
                times[slot].append(time.perf_counter() - start)
    return times


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free ``confidence`` interval of the median of ``values``: the order statistics
    ``x(j) <= median <= x(n+1-j)`` with the largest ``j`` whose binomial coverage ``1 - 2 P(Bin(n, 1/2) < j)``
    is still at least ``confidence``. Under 6 values no interval reaches 95%: then the full range."""
    ranked, n = sorted(values), len(values)
    below = 0.0  # P(Bin(n, 1/2) <= j - 1) for the current j
    j = 1
    while j < (n + 1) // 2:
        below += math.comb(n, j - 1) / 2**n
        if 1 - 2 * (below + math.comb(n, j) / 2**n) < confidence:
            break
        j += 1
    return ranked[j - 1], ranked[n - j]


def peak_memory_mib(step: Callable[[], None], device: torch.device) -> float:
    """MiB that one call of ``step`` allocates at its peak above what was live before it (activations,
    gradients, temporaries; not weights or optimizer state already held).

    CUDA: the caching allocator's ``max_memory_allocated`` minus ``memory_allocated`` at the start. CPU: the
    peak of the bytes the step's own allocations hold at once, from the profiler's record of every allocation
    and free torch makes during the step (``profile_memory``); blocks allocated before the step and freed in
    it (the previous step's gradients) are not subtracted, so this can exceed the CUDA figure by up to their
    size. Not the process's RSS, which mixes in the allocator's cached pages and Python objects.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        step()
        synchronize(device)
        return (torch.cuda.max_memory_allocated(device) - before) / 2**20
    from torch._C._profiler import _EventType
    from torch.profiler import ProfilerActivity, profile

    os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # the profiler's own start/stop lines would flood the table
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    changes: list[tuple[int, int]] = []
    nodes = list(prof.profiler.kineto_results.experimental_event_tree())
    while nodes:
        node = nodes.pop()
        if node.tag == _EventType.Allocation and node.extra_fields.device.type == "cpu":
            changes.append((node.start_time_ns, node.extra_fields.alloc_size))
        nodes.extend(node.children)
    live = peak = 0
    for _, size in sorted(changes):
        live += size
        peak = max(peak, live)
    return peak / 2**20
