"""`selfsup bench`: each method's training step against its floor, the backbone passes it cannot avoid.

The floor is measured, not assumed: one step runs with its backbone's ``forward`` and ``forward_features`` (and
a ViT's ``tokens``) recorded, arguments such as SimMIM's mask and I-JEPA's kept patches included, and the floor
times forward + backward of the backbone alone on exactly those inputs, plus a forward without gradient of
``model.momentum_backbone`` on its recorded inputs where a method has one (the backbone of the target or key
encoder of PixPro, BYOL, MoCo v3, DINO, iBOT, I-JEPA). Heads are never in the floor: the online projector and
predictor, and the momentum copies' projector or head after the momentum backbone, are the method's overhead. Step
and floor are timed in pairs, back to back in alternating order, after warm-up (CUDA synchronised); the overhead is
the median of the pairs' step / floor ratios, printed with its 95% confidence interval, so a run states how far its
own figure can be trusted. Methods are built from their experiment configs through the CLI, with the fast paths
(precision, channels-last, torch.compile) set as a training run sets them.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.apply_func import move_data_to_device

from selfsup.bench.cli import CONFIGS
from selfsup.bench.step import BackboneCalls, floor_step, median_interval, paired_seconds, peak_memory_mib
from selfsup.errors import ConfigError
from selfsup.recipes import recipe_path
from selfsup.training.precision import resolve_precision


def build(config: Path, batch_size: int, switches: Switches, overrides: Sequence[str] = ()):
    """The model, data module and trainer of ``config`` as the CLI makes them, with the fast paths in
    ``switches``, no loggers or callbacks, the loader in this process, and ``overrides`` last."""
    from selfsup.cli import SelfsupCLI
    from selfsup.data import SSLDataModule
    from selfsup.methods import SSLMethod

    args = ["-c", str(config), "--data.init_args.batch_size", str(batch_size), "--data.init_args.num_workers", "0",
            "--trainer.logger", "false", "--trainer.callbacks", "[]",
            "--model.init_args.channels_last", str(switches.channels_last).lower(),
            "--model.init_args.compile_backbone", str(switches.compile).lower(), *overrides]
    cli = SelfsupCLI(SSLMethod, SSLDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
                     run=False, auto_configure_optimizers=False, save_config_callback=None)
    return cli.model, cli.datamodule, cli.trainer


@dataclass(frozen=True)
class Switches:
    """The fast paths a bench run measures, as a training run sets them: ``trainer.precision``,
    ``model.channels_last`` and ``model.compile_backbone``."""

    precision: str = "32-true"
    channels_last: bool = False
    compile: bool = False

    def autocast(self, device: torch.device) -> Callable[[], AbstractContextManager]:
        """The context Lightning's precision plugin runs a training step in (autocast for ``*-mixed``)."""
        if self.precision == "32-true":
            return nullcontext
        from lightning.pytorch.plugins.precision import MixedPrecision

        plugin = MixedPrecision(self.precision, "cuda" if device.type == "cuda" else "cpu")
        return plugin.forward_context


def first_batch(data: Any, device: torch.device) -> dict[str, Any]:
    """The data module's first training batch on ``device``, as Lightning moves it."""
    return data.on_after_batch_transfer(move_data_to_device(next(iter(data.train_dataloader())), device), 0)


def training_step(model: Any, batch: dict[str, Any], opt: torch.optim.Optimizer,
                  autocast: Callable[[], AbstractContextManager]) -> Callable[[], None]:
    """One training step on ``batch`` as a run takes it: the loss under ``autocast``, backward, ``opt``'s step."""

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = model.ssl_step(batch).loss
        loss.backward()
        opt.step()

    return step


def bench_method(method: str, config: Path, batch_size: int, device: torch.device, warmup: int = 3,
                 repeats: int = 20, switches: Switches = Switches(), overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Median step and floor time, images/s and peak memory of one method on one real training batch of its
    MNIST-5k recipe, with the fast paths in ``switches`` and ``overrides`` (e.g. another backbone)."""
    model, data, _ = build(config, batch_size, switches, overrides)
    model.to(device).train()
    model.setup("fit")  # compiles the backbone when asked, as in a training run
    batch = first_batch(data, device)
    autocast = switches.autocast(device)
    step = training_step(model, batch, torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9), autocast)
    momentum = getattr(model, "momentum_backbone", None)
    with BackboneCalls(model.backbone) as calls, BackboneCalls(momentum) as momentum_calls:
        step()
    floor = floor_step(model.backbone, calls.calls, momentum, momentum_calls.calls, autocast)
    step_times, floor_times = paired_seconds(step, floor, device, warmup, repeats)
    ratios = [s / f for s, f in zip(step_times, floor_times)]
    low, high = median_interval(ratios)
    step_s, floor_s = statistics.median(step_times), statistics.median(floor_times)
    images = len(batch["label"])
    return {"method": method, "batch": images, "backbone_images": sum(c.images for c in calls.calls),
            "backbone_calls": [c.entry for c in calls.calls],
            "backbone_input": calls.calls[0].shape if calls.calls else [],
            "momentum_images": sum(c.images for c in momentum_calls.calls),
            "step_ms": 1e3 * step_s, "floor_ms": 1e3 * floor_s, "overhead": statistics.median(ratios) - 1,
            "overhead_low": low - 1, "overhead_high": high - 1, "pairs": len(ratios),
            "images_per_s": images / step_s, "peak_mib": peak_memory_mib(step, device),
            "floor_peak_mib": peak_memory_mib(floor, device)}


def spread(row: dict[str, Any]) -> str:
    """A row's 95% interval of the overhead, e.g. ``[-1.2%, 4.5%]``."""
    return f"[{row['overhead_low']:.1%}, {row['overhead_high']:.1%}]"


def run_methods(args: argparse.Namespace) -> None:
    """``selfsup bench``: each method's step against its floor, a table and a JSON file (arguments:
    ``selfsup.bench.cli``)."""
    unknown = [m for m in args.methods if m not in CONFIGS]
    if unknown:
        raise ConfigError(f"no bench config for {', '.join(unknown)}; choose from: {', '.join(CONFIGS)}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    switches = Switches(resolve_precision(args.precision, device.type), args.channels_last, args.compile)
    configs = {m: args.repo / CONFIGS[m] if args.repo else recipe_path(CONFIGS[m]) for m in args.methods}
    overrides = ["--model.init_args.backbone", args.backbone, "--model.init_args.backbone_args",
                 args.backbone_args] if args.backbone else []
    overrides += [f"--{setting}" for setting in args.set or []]
    rows = [bench_method(m, configs[m], args.batch_size, device, args.warmup, args.repeats, switches, overrides)
            for m in args.methods]
    memory = "CUDA max_memory_allocated" if device.type == "cuda" else "torch CPU allocations (profiler)"
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, batch: {args.batch_size} images, "
          f"{', '.join(f'{k}={v}' for k, v in asdict(switches).items())}; {args.repeats} step/floor pairs after "
          f"{args.warmup} warm-up, overhead: median of the pairs' ratios - 1 [its 95% interval"
          f"{'; under 6 pairs their full range, short of 95%' if args.repeats < 6 else ''}]; peak: MiB above the "
          f"step's start ({memory})")
    name = max(8, *(len(m) for m in args.methods))
    print(f"{'method':<{name}} {'backbone imgs':>13} {'momentum imgs':>13} {'step ms':>9} {'floor ms':>9} "
          f"{'overhead':>9} {'95% interval':>16} {'images/s':>9} {'peak MiB':>9} {'floor MiB':>9}")
    for r in rows:
        print(f"{r['method']:<{name}} {r['backbone_images']:>13} {r['momentum_images']:>13} {r['step_ms']:>9.1f} "
              f"{r['floor_ms']:>9.1f} "
              f"{r['overhead']:>8.1%} {spread(r):>16} {r['images_per_s']:>9.0f} {r['peak_mib']:>9.1f} "
              f"{r['floor_peak_mib']:>9.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "threads": torch.get_num_threads(),
                                    "switches": asdict(switches), "overrides": overrides, "rows": rows},
                                   indent=1) + "\n")
    print(f"written: {args.out}")
