"""FAISS kNN against an independent brute-force torch computation."""

import sys

import pytest
import torch
import torch.nn.functional as F

from selfsup.errors import ConfigError
from selfsup.eval.knn import knn_accuracy, knn_evaluate, knn_scores, knn_search


def clustered(n: int, classes: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Samples around the same class centres for every seed (only the samples change)."""
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(1234))
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=g)
    return centres[labels] + 0.8 * torch.randn(n, dim, generator=g), labels


def brute_force(bank, bank_labels, queries, k, t, classes):
    sims = F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T
    top_sims, top_idx = sims.topk(k, dim=1)
    one_hot = F.one_hot(bank_labels[top_idx], classes).float()  # (Q, k, C)
    scores = (torch.exp(top_sims / t)[:, :, None] * one_hot).sum(1)
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


def test_every_k_of_one_search_matches_brute_force_at_that_k():
    """knn_evaluate searches once for the largest k; each smaller k must still match its own brute force."""
    bank, bank_labels = clustered(3000, 10, 64, seed=2)
    queries, query_labels = clustered(500, 10, 64, seed=3)
    rows = knn_evaluate(bank, bank_labels, queries, query_labels, ks=(1, 10, 200), temperature=0.07)
    for row in rows:
        ref_idx, ref_scores = brute_force(bank, bank_labels, queries, row["k"], 0.07, 10)
        _, idx = knn_search(bank, queries, row["k"], chunk=97)  # several chunks, the last one partial
        assert all(set(a.tolist()) == set(b.tolist()) for a, b in zip(idx, ref_idx))
        assert row["top1"] == pytest.approx((ref_scores.argmax(1) == query_labels).float().mean().item())
        ref_top5 = (ref_scores.topk(5, dim=1).indices == query_labels[:, None]).any(1).float().mean().item()
        assert row["top5"] == pytest.approx(ref_top5)


def test_unlabelled_samples_are_left_out():
    bank, bank_labels = clustered(400, 4, 8, seed=4)
    queries, query_labels = clustered(50, 4, 8, seed=5)
    marked = bank_labels.clone()
    marked[::2] = -1
    got = knn_evaluate(bank, marked, queries, query_labels, ks=(5,), num_classes=4)[0]
    want = knn_evaluate(bank[1::2], bank_labels[1::2], queries, query_labels, ks=(5,), num_classes=4)[0]
    assert got == want


def test_missing_faiss_names_the_extra_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # `import faiss` now raises ImportError
    bank, labels = clustered(10, 2, 4, seed=0)
    with pytest.raises(ConfigError, match=r"pip install 'selfsup\[cpu\]'"):
        knn_search(bank, bank, 1)
