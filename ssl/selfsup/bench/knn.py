"""`selfsup bench knn`: FAISS kNN search against chunked brute-force torch on the same features."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from selfsup.bench.step import synchronize
from selfsup.errors import ConfigError
from selfsup.eval.knn import NO_FAISS_GPU, faiss_gpus, knn_search


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


def same_neighbours(a: torch.Tensor, b: torch.Tensor) -> float:
    """The fraction of queries whose k neighbour sets (rows of indices, any order) are identical."""
    return (a.cpu().sort(1).values == b.cpu().sort(1).values).all(1).float().mean().item()


def bench_knn(n_train: int, dim: int, n_queries: int, k: int, device: torch.device, against_faiss_cpu: bool = False
              ) -> dict[str, float]:
    """Seconds of FAISS (``knn_search``, on the GPU for a CUDA ``device``) and of ``torch_knn_search`` on one bank,
    and the fraction of queries whose k neighbour sets are identical; with ``against_faiss_cpu`` also FAISS on the
    CPU on the same features."""
    bank, queries = clustered_features(n_train, dim, seed=0), clustered_features(n_queries, dim, seed=1)
    faiss_s, (_, faiss_idx) = _timed(lambda: knn_search(bank, queries, k, use_gpu=device.type == "cuda"), device)
    cpu = {}
    if against_faiss_cpu:
        cpu_s, (_, cpu_idx) = _timed(lambda: knn_search(bank, queries, k, use_gpu=False), device)
        cpu = {"faiss_cpu_s": cpu_s, "same_as_faiss_cpu": same_neighbours(faiss_idx, cpu_idx)}
    bank, queries = bank.to(device), queries.to(device)
    torch_s, (_, torch_idx) = _timed(lambda: torch_knn_search(bank, queries, k), device)
    return {"n_train": n_train, "dim": dim, "queries": n_queries, "k": k, "faiss_s": faiss_s, "torch_s": torch_s,
            "speedup": torch_s / faiss_s, "same_neighbours": same_neighbours(faiss_idx, torch_idx), **cpu}


def _timed(fn: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    """Seconds of one call of ``fn`` (synchronised on CUDA) and what it returned."""
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return time.perf_counter() - start, out


def run_knn(args: argparse.Namespace) -> None:
    """``selfsup bench knn``: FAISS against torch on each bank size and width (arguments: ``selfsup.bench.cli``)."""
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not faiss_gpus():
        raise ConfigError(NO_FAISS_GPU)  # before any CUDA call: the reason a GPU run needs is faiss's
    print(f"device: {device}, torch threads: {torch.get_num_threads()}, {args.queries} queries, k={args.k}, "
          "one timed run each")
    against = args.against_faiss_cpu
    print(f"{'N train':>8} {'dim':>5} {'faiss s':>8} {'torch s':>8} {'torch/faiss':>11} {'same neighbours':>15}"
          + (f" {'faiss-cpu s':>11} {'same as faiss-cpu':>17}" if against else ""))
    rows = []
    for n in args.train:
        for dim in args.dims:
            r = bench_knn(n, dim, args.queries, args.k, device, against)
            rows.append(r)
            print(f"{n:>8} {dim:>5} {r['faiss_s']:>8.2f} {r['torch_s']:>8.2f} {r['speedup']:>10.2f}x "
                  f"{r['same_neighbours']:>15.4f}"
                  + (f" {r['faiss_cpu_s']:>11.2f} {r['same_as_faiss_cpu']:>17.4f}" if against else ""), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": str(device), "rows": rows}, indent=1) + "\n")
    print(f"written: {args.out}")
