"""FAISS kNN against an independent brute-force torch computation."""

import pytest
import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError
from selfsup.eval.knn import knn_accuracy, knn_scores, knn_search


def clustered(n: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples around the same class centres for every seed (only the samples change)."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return centres[labels] + 0.8 * torch.randn(n, dim, generator=g), labels


def brute_force(bank, bank_labels, queries, k, t, classes):
    sims = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    top_sims, top_idx = sims.topk(k, dim=1)
    scores = torch.zeros(len(queries), classes)
    for q in range(len(queries)):
        for s, i in zip(top_sims[q], top_idx[q]):
            scores[q, bank_labels[i]] += torch.exp(s / t)
    return top_idx, scores


def test_same_neighbours_and_votes_as_brute_force():
    bank, bank_labels = clustered(2000, 10, 32, seed=0)
    queries, query_labels = clustered(300, 10, 32, seed=1)
    _, idx = knn_search(bank, queries, 20)
    ref_idx, ref_scores = brute_force(bank, bank_labels, queries, 20, 0.07, 10)
    assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(idx, ref_idx))
    scores = knn_scores(bank, bank_labels, queries, 10, k=20, temperature=0.07)
    assert torch.allclose(scores, ref_scores, rtol=1e-4)
    acc = knn_accuracy(bank, bank_labels, queries, query_labels, k=20, temperature=0.07)
    ref_top1 = (ref_scores.argmax(1) == query_labels).float().mean().item()
    assert acc["top1"] == pytest.approx(ref_top1) and acc["top1"] > 0.9
    assert acc["top5"] >= acc["top1"]


def test_k_larger_than_the_bank_is_a_clear_error():
    bank, labels = clustered(10, 2, 4, seed=0)
    with pytest.raises(ConfigError, match="k=20 is larger than the kNN bank of 10"):
        knn_accuracy(bank, labels, bank, labels, k=20)
