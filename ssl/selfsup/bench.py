"""`selfsup bench`: each method's training step against its floor, the backbone passes it cannot avoid;
`selfsup bench knn`: FAISS kNN search against chunked brute-force torch on the same features.

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
from typing import Any

import torch
import torch.nn.functional as F
from lightning.fabric.utilities.apply_func import move_data_to_device

from selfsup.errors import ConfigError

CONFIGS = {"SimCLR": "experiments/simclr/mnist5k.yaml", "RotNet": "experiments/rotnet/mnist5k.yaml",
           "CVRL": "experiments/cvrl/moving-mnist.yaml",
           "SwAV": "experiments/swav/mnist5k.yaml", "PixPro": "experiments/pixpro/mnist5k.yaml",
           "SimMIM": "experiments/simmim/mnist5k-vit-tiny.yaml"}


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
    batch = move_data_to_device(batch, device)
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


def torch_knn_search(bank: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 1024
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Brute-force cosine kNN in torch (the baseline FAISS is timed against): normalise, then for each chunk of
    queries one matmul against the whole bank and ``topk``."""
    bank = F.normalize(bank.float(), dim=1)
    found = [(F.normalize(q.float(), dim=1) @ bank.T).topk(k, dim=1) for q in queries.split(chunk)]
    return torch.cat([f.values for f in found]), torch.cat([f.indices for f in found])


def clustered_features(n: int, dim: int, classes: int = 100, seed: int = 0) -> torch.Tensor:
    """Random features around ``classes`` random centres (like a trained embedding, unlike uniform noise)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234))
    return centres[torch.randint(0, classes, (n,), generator=g)] + torch.randn(n, dim, generator=g)


def bench_knn(n_train: int, dim: int, n_queries: int, k: int, device: torch.device) -> dict[str, float]:
    """Seconds of FAISS (``knn_search``) and of ``torch_knn_search`` on one bank, and the fraction of queries
    whose k neighbour sets are identical."""
    from selfsup.eval.knn import knn_search

    bank, queries = clustered_features(n_train, dim, seed=0), clustered_features(n_queries, dim, seed=1)
    faiss_s, (_, faiss_idx) = _timed(lambda: knn_search(bank, queries, k, use_gpu=device.type == "cuda"), device)
    bank, queries = bank.to(device), queries.to(device)
    torch_s, (_, torch_idx) = _timed(lambda: torch_knn_search(bank, queries, k), device)
    same = (faiss_idx.sort(1).values == torch_idx.cpu().sort(1).values).all(1).float().mean().item()
    return {"n_train": n_train, "dim": dim, "queries": n_queries, "k": k, "faiss_s": faiss_s, "torch_s": torch_s,
            "speedup": torch_s / faiss_s, "same_neighbours": same}


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds of one call of ``fn`` (synchronised on CUDA) and what it returned."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def knn_main(argv: list[str]) -> None:
    """``selfsup bench knn [--train N ...] [--dims D ...] [--queries Q] [--k K]``: FAISS against torch."""
    parser = argparse.ArgumentParser(prog="selfsup bench knn", description=knn_main.__doc__)
    parser.add_argument("--train", type=int, nargs="+", default=[50_000, 200_000], help="bank sizes")
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048], help="feature widths")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-knn.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, {args.queries} queries, k={args.k}, "
          "one timed run each")
    print(f"{'N train':>8} {'dim':>5} {'faiss s':>8} {'torch s':>8} {'torch/faiss':>11} {'same neighbours':>15}")
    rows = []
    for n in args.train:
        for dim in args.dims:
            r = bench_knn(n, dim, args.queries, args.k, device)
            rows.append(r)
            print(f"{n:>8} {dim:>5} {r['faiss_s']:>8.2f} {r['torch_s']:>8.2f} {r['speedup']:>10.2f}x "
                  f"{r['same_neighbours']:>15.4f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=1) + "\n")
    print(f"written: {args.out}")


def main(argv: list[str]) -> None:
    """``selfsup bench [--methods ...] [--batch-size N] [--device cpu|cuda] [--out FILE]``: print a table.
    ``selfsup bench data ...``: the data pipeline (`selfsup.bench_data`); ``selfsup bench knn ...``: FAISS vs torch."""
    if argv[:1] == ["data"]:
        from selfsup.bench_data import main as bench_data

        return bench_data(argv[1:])
    if argv[:1] == ["knn"]:
        return knn_main(argv[1:])
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
