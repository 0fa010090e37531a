"""Weighted k-nearest-neighbour classification on FAISS (DINO protocol by default: k=20, T=0.07)."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError


def _faiss():
    try:
        import faiss
    except ImportError as err:
        raise ConfigError(
            "faiss is not installed: pip install 'selfsup[cpu]' (faiss-cpu) or 'selfsup[gpu]' (faiss-gpu)"
        ) from err
    return faiss


def knn_search(
    bank: torch.Tensor, queries: torch.Tensor, k: int, chunk: int = 4096, use_gpu: bool | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact inner-product search: (similarities, indices), each (Q, k), of L2-normalised float32 features.

    Runs on a GPU when the installed faiss has GPUs (``use_gpu=None``: whenever possible), else on the CPU;
    queries go in chunks of ``chunk``.
    """
    faiss = _faiss()
    if k > len(bank):
        raise ConfigError(f"k={k} is larger than the kNN bank of {len(bank)} samples; use a smaller k")
    bank_np = np.ascontiguousarray(F.normalize(bank.float(), dim=1).numpy())
    query_np = np.ascontiguousarray(F.normalize(queries.float(), dim=1).numpy())
    index = faiss.IndexFlatIP(bank_np.shape[1])
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if (use_gpu is None and gpus > 0) or use_gpu:
        index = faiss.index_cpu_to_all_gpus(index)
    index.add(bank_np)
    sims, idx = [], []
    for start in range(0, len(query_np), chunk):
        s, i = index.search(query_np[start : start + chunk], k)
        sims.append(torch.from_numpy(s))
        idx.append(torch.from_numpy(i))
    return torch.cat(sims), torch.cat(idx)


def knn_scores(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, num_classes: int,
    k: int = 20, temperature: float = 0.07,
) -> torch.Tensor:
    """Class scores (Q, num_classes): each of the k nearest bank samples (cosine similarity s) votes for
    its label with weight exp(s / temperature)."""
    sims, idx = knn_search(bank, queries, k)
    votes = torch.zeros(len(queries), num_classes)
    return votes.scatter_add_(1, bank_labels[idx], (sims / temperature).exp())


def knn_accuracy(
    bank: torch.Tensor, bank_labels: torch.Tensor, queries: torch.Tensor, query_labels: torch.Tensor,
    k: int = 20, temperature: float = 0.07, num_classes: int | None = None,
) -> dict[str, float]:
    """Top-1 and top-5 accuracy of weighted kNN classification of ``queries`` against the bank."""
    num_classes = num_classes or int(max(bank_labels.max(), query_labels.max())) + 1
    scores = knn_scores(bank, bank_labels, queries, num_classes, k, temperature)
    top = scores.topk(min(5, num_classes), dim=1).indices
    return {
        "top1": (top[:, 0] == query_labels).float().mean().item(),
        "top5": (top == query_labels[:, None]).any(1).float().mean().item(),
    }
