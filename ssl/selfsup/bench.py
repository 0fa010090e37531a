"""`selfsup bench`: each method's training step against its floor, the backbone passes it cannot avoid.

The floor is measured, not assumed: a hook records every input the method's step sends through its backbone,
and the floor times forward + backward of the backbone alone on tensors of those shapes. Medians of repeats
after warm-up; CUDA timings synchronise. Methods are built from their experiment configs, through the CLI.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from selfsup.errors import ConfigError

CONFIGS = {"SimCLR": "experiments/simclr/mnist5k.yaml", "RotNet": "experiments/rotnet/mnist5k.yaml",
           "SwAV": "experiments/swav/mnist5k.yaml"}


def _median_seconds(step: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    times = []
    for i in range(warmup + repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def _build(method: str, config: Path, batch_size: int):
    from selfsup.cli import SelfsupCLI
    from selfsup.data import SSLDataModule
    from selfsup.methods import SSLMethod

    args = ["-c", str(config), "--data.init_args.batch_size", str(batch_size), "--data.init_args.num_workers", "0",
            "--trainer.logger", "false", "--trainer.callbacks", "[]"]
    cli = SelfsupCLI(SSLMethod, SSLDataModule, subclass_mode_model=True, subclass_mode_data=True, args=args,
                     run=False, auto_configure_optimizers=False, save_config_callback=None)
    return cli.model, cli.datamodule


def bench_method(method: str, config: Path, batch_size: int, device: torch.device, warmup: int = 3,
                 repeats: int = 10) -> dict[str, float | str]:
    """Median step and floor time of one method on one real training batch of its MNIST-5k recipe."""
    model, data = _build(method, config, batch_size)
    model.to(device).train()
    batch = next(iter(data.train_dataloader()))
    batch = {k: [t.to(device) for t in v] if isinstance(v, list) else v.to(device) for k, v in batch.items()}
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    shapes: list[torch.Size] = []
    hook = model.backbone.register_forward_pre_hook(lambda _, inputs: shapes.append(inputs[0].shape))

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model.ssl_step(batch).loss.backward()
        opt.step()

    step_s = _median_seconds(step, device, warmup, repeats)
    hook.remove()
    floor_inputs = [torch.rand(s, device=device) for s in shapes[: len(shapes) // (warmup + repeats)]]

    def floor() -> None:
        opt.zero_grad(set_to_none=True)
        for x in floor_inputs:
            model.backbone(x).float().sum().backward()

    floor_s = _median_seconds(floor, device, warmup, repeats)
    images = len(batch["label"])
    return {"method": method, "batch": images, "backbone_images": sum(s[0] for s in (x.shape for x in floor_inputs)),
            "step_ms": 1e3 * step_s, "floor_ms": 1e3 * floor_s, "overhead": step_s / floor_s - 1,
            "images_per_s": images / step_s}


def main(argv: list[str]) -> None:
    """``selfsup bench [--methods ...] [--batch-size N] [--device cpu|cuda] [--out FILE]``: print a table."""
    parser = argparse.ArgumentParser(prog="selfsup bench", description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS), help=f"of: {', '.join(CONFIGS)}")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--out", type=Path, default=Path("runs/bench.json"))
    parser.add_argument("--repo", type=Path, default=Path("."), help="where experiments/ is")
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in CONFIGS]
    if unknown:
        raise ConfigError(f"no bench config for {', '.join(unknown)}; choose from: {', '.join(CONFIGS)}")
    device = torch.device(args.device)
    rows = [bench_method(m, args.repo / CONFIGS[m], args.batch_size, device, repeats=args.repeats)
            for m in args.methods]
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, batch: {args.batch_size} images")
    print(f"{'method':<8} {'backbone imgs':>13} {'step ms':>9} {'floor ms':>9} {'overhead':>9} {'images/s':>9}")
    for r in rows:
        print(f"{r['method']:<8} {r['backbone_images']:>13} {r['step_ms']:>9.1f} {r['floor_ms']:>9.1f} "
              f"{r['overhead']:>8.1%} {r['images_per_s']:>9.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=1) + "\n")
    print(f"written: {args.out}")
