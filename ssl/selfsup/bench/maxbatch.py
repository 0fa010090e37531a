"""`selfsup bench max-batch`: the largest per-device batch of a recipe's training step that fits in memory.

The method is built from its recipe through the CLI (one device, the recipe's precision and backbone), one real
batch of its views is read from a shard set and tiled to each batch size tried, and one training step (autocast
as the recipe's precision, backward, an AdamW step: the larger of the recipes' optimizer states) runs per size:
doubling until a step fails, then halving the gap to a multiple of 8. On CUDA a size fits when the step does not
run out of memory; ``--memory-mib`` sets a budget instead (on a CPU, where nothing runs out, against the
profiler's peak). The recipe's own per-device batch not fitting means it needs activation checkpointing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import torch

from selfsup.bench.cli import at_least
from selfsup.bench.methods import Switches, build, first_batch, training_step
from selfsup.bench.step import peak_memory_mib
from selfsup.cli_checks import read_yaml

ONE_DEVICE = ["--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.strategy", "auto",
              "--trainer.sync_batchnorm", "false"]


def tiled(value: Any, size: int) -> Any:
    """Every tensor in ``value`` repeated along its first dimension to ``size`` rows."""
    if isinstance(value, torch.Tensor):
        reps = -(-size // len(value))
        return value.repeat(reps, *[1] * (value.dim() - 1))[:size]
    if isinstance(value, dict):
        return {k: tiled(v, size) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(tiled(v, size) for v in value)
    return value


def recipe_batch(config: Path) -> int | None:
    """The per-device ``data.batch_size`` a recipe sets."""
    data = (read_yaml(config) or {}).get("data") or {}
    return (data.get("init_args") or data).get("batch_size")


def largest_batch(fits: Any, start: int, limit: int) -> tuple[int, dict[int, Any]]:
    """The largest size in [start, limit] (a multiple of 8 above ``start``) for which ``fits(size)`` returns a
    result (None: it does not fit), and every result, by size. Doubling, then bisection."""
    tried: dict[int, Any] = {}
    good, bad = 0, limit + 1
    size = start
    while size <= limit:
        tried[size] = fits(size)
        if tried[size] is None:
            bad = size
            break
        good, size = size, size * 2
    if good and bad > limit:
        size = limit
        if size not in tried:
            tried[size] = fits(size)
            good, bad = (size, bad) if tried[size] is not None else (good, size)
    while good and bad - good > 8:
        size = (good + bad) // 16 * 8
        if size in (good, bad):
            break
        tried[size] = fits(size)
        good, bad = (size, bad) if tried[size] is not None else (good, size)
    return good, tried


def needs_checkpointing(largest: int, limit: int, recipe: int | None) -> bool | None:
    """Whether the recipe's per-device batch does not fit without activation checkpointing (None: not known, the
    search stopped at its limit below the recipe's batch, or the recipe sets none)."""
    if recipe is None or (largest == limit < recipe):
        return None
    return largest < recipe


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="selfsup bench max-batch", description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", type=Path, required=True, help="the recipe (experiments/...yaml)")
    parser.add_argument("--source", required=True, help="shards to read one batch of views from")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--start", type=int, default=32)
    parser.add_argument("--limit", type=int, default=2048, help="largest batch tried")
    parser.add_argument("--memory-mib", type=float, default=None,
                        help="a budget the step's peak must stay under (default on CUDA: the device's memory)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-max-batch.json"))
    args, overrides = parser.parse_known_args(argv)
    at_least(args, {"start": 1, "limit": args.start, "memory_mib": 1})
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    accelerator = ["--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu"]
    model, data, trainer = build(args.config, 8, Switches(), [*ONE_DEVICE, *accelerator, "--data.init_args.source",
                                                              args.source, *overrides])
    precision = trainer.precision
    model.to(device).train()
    batch = first_batch(data, device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    autocast = Switches(precision).autocast(device)

    def fits(size: int) -> dict[str, float] | None:
        step = training_step(model, tiled(batch, size), opt, autocast)
        try:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
                step()
                torch.cuda.synchronize(device)
                peak = torch.cuda.max_memory_allocated(device) / 2**20
            else:
                peak = peak_memory_mib(step, device)
        except torch.cuda.OutOfMemoryError:
            peak = None
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        fit = peak is not None and (args.memory_mib is None or peak <= args.memory_mib)
        print(f"batch {size}: " + (f"fits, peak {peak:.0f} MiB" if fit else "does not fit"), flush=True)
        return {"peak_mib": peak} if fit else None

    largest, tried = largest_batch(fits, args.start, args.limit)
    own = recipe_batch(args.config)
    result = {"config": str(args.config), "device": str(device), "precision": precision, "largest_batch": largest,
              "limit": args.limit, "recipe_batch": own,
              "needs_checkpointing": needs_checkpointing(largest, args.limit, own),
              "tried": {str(k): v for k, v in sorted(tried.items())}}
    verdict = result["checkpointing"] = {True: "needed", False: "not needed", None: "unknown"}[
        result["needs_checkpointing"]]
    print(f"{args.config.name}: largest batch {largest}{'+' if largest == args.limit else ''} in {precision} "
          f"(the recipe's: {own}; activation checkpointing {verdict})")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    return 0
