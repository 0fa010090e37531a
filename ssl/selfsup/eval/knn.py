"""Weighted k-nearest-neighbour classification on FAISS (DINO protocol by default: k=20, T=0.07).

One exact inner-product search of L2-normalised float32 features (queries in chunks), then each of the k
nearest bank samples votes for its label with weight exp(similarity / T). Several k share one search.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError
from selfsup.training.precision import cpu_flags


def _openblas_coretype() -> None:
    """Name the CPU's kernel family for the OpenBLAS that faiss-cpu wheels bundle, unless the user did.

    faiss-cpu 1.15.1 ships OpenBLAS 0.3.15, which does not recognise recent Xeons and falls back to its generic
    "Prescott" kernels: on this project's machine its search ran 3x slower than torch's matmul, and 1.4x faster
    with the right kernels. OpenBLAS reads ``OPENBLAS_CORETYPE`` when it loads, so this runs before ``import faiss``.
    """
    if os.environ.get("OPENBLAS_CORETYPE") or "faiss" in sys.modules:
        return
    flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "SkylakeX"
    elif {"avx2", "fma"} <= flags:
        os.environ["OPENBLAS_CORETYPE"] = "Haswell"


def _faiss():
    _openblas_coretype()
    try:
        import faiss
    except ImportError as err:
        raise ConfigError(
            "faiss is not installed: pip install 'selfsup[cpu]' (faiss-cpu) or 'selfsup[gpu]' (faiss-gpu)"
        ) from err
    return faiss


NO_FAISS_GPU = "kNN on GPU asked for, but the installed faiss sees no GPU; pip install 'selfsup[gpu]'"


def faiss_gpus() -> int:
    """The GPUs the installed faiss sees (0 for faiss-cpu)."""
    faiss = _faiss()
    return faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0


def _index(dim: int, use_gpu: bool | None, float16: bool):
    """An exact inner-product index: on every GPU faiss sees (``use_gpu=None``: when it sees any), else CPU."""
    faiss = _faiss()
    index = faiss.IndexFlatIP(dim)
    gpus = faiss_gpus()
    if use_gpu and gpus == 0:
        raise ConfigError(NO_FAISS_GPU)
    if use_gpu is False or gpus == 0:
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.useFloat16 = float16  # halves the bank's GPU memory; similarities lose a few digits
    return faiss.index_cpu_to_all_gpus(index, options)


def knn_search(
    bank: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 4096, use_gpu: bool | None = None,
    float16: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact cosine search: (similarities, indices), each (Q, k), nearest first.

    Features are L2-normalised and searched as float32 by inner product, ``chunk`` queries at a time. Runs on
    the GPU when the installed faiss has GPUs (``use_gpu=None``: whenever possible), else on the CPU.
    """
    if k > len(bank):
        raise ConfigError(f"k={k} is larger than the kNN bank of {len(bank)} samples; use a smaller k")
    bank_np = np.ascontiguousarray(F.normalize(bank.float(), dim=1).cpu().numpy())
    query_np = np.ascontiguousarray(F.normalize(queries.float(), dim=1).cpu().numpy())
    index = _index(bank_np.shape[1], use_gpu, float16)
    index.add(bank_np)
    sims, idx = [], []
    for start in range(0, len(query_np), chunk):
        s, i = index.search(query_np[start : start + chunk], k)
        sims.append(torch.from_numpy(s))
        idx.append(torch.from_numpy(i))
    return torch.cat(sims), torch.cat(idx)


def knn_vote(
    sims: torch.Tensor, idx: torch.Tensor, bank_labels: torch.Tensor, num_classes: int, temperature: float
) -> torch.Tensor:
    """Class scores (Q, num_classes): neighbour j of query q adds exp(sims[q, j] / temperature) to its label."""
    votes = torch.zeros(len(idx), num_classes)
    return votes.scatter_add_(1, bank_labels[idx], (sims / temperature).exp())


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and top-5 accuracy of class scores (Q, C) against labels (Q,)."""
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices
    return {
        "top1": (top[:, 0] == labels).float().mean().item(),
        "top5": (top == labels[:, None]).any(1).float().mean().item(),
    }


def knn_scores(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
    k: int = 20, temperature: float = 0.07,
) -> torch.Tensor:
    """Class scores (Q, num_classes) of weighted kNN (see ``knn_vote``)."""
    sims, idx = knn_search(bank, queries, k)
    return knn_vote(sims, idx, bank_labels, num_classes, temperature)


def knn_evaluate(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
    ks: Sequence[int] = (20,), temperature: float = 0.07, num_classes: int | None = None,
    use_gpu: bool | None = None,
) -> list[dict[str, float]]:
    """``{"k", "top1", "top5"}`` for each k, from one search for the largest k. Unlabelled samples (label < 0)
    are left out of the bank and the queries."""
    bank, bank_labels = bank[bank_labels >= 0], bank_labels[bank_labels >= 0]
    queries, query_labels = queries[query_labels >= 0], query_labels[query_labels >= 0]
    if len(queries) == 0 or len(bank) == 0:
        raise ConfigError("kNN needs labelled data, but the bank or the queries have no labels")
    num_classes = num_classes or int(max(bank_labels.max(), query_labels.max())) + 1
    sims, idx = knn_search(bank, queries, max(ks), use_gpu=use_gpu)
    return [
        {"k": k, **topk_accuracy(knn_vote(sims[:, :k], idx[:, :k], bank_labels, num_classes, temperature),
                                 query_labels)}
        for k in ks
    ]


def knn_accuracy(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
    k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of weighted kNN classification of ``queries`` against the bank."""
    result = knn_evaluate(bank, bank_labels, queries, query_labels, (k,), temperature, num_classes)[0]
    return {"top1": result["top1"], "top5": result["top5"]}
