"""Collapse monitors: RankMe and the mean pairwise cosine against their formulas, and the one-line warning of
CollapseMonitor on deliberately collapsed runs through `selfsup fit` (and none on a healthy one)."""

from __future__ import annotations

import csv
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from clirun import REPO, TINY, selfsup
from selfsup.training.collapse import RANKME_EPS, CollapseMonitor, mean_pairwise_cosine, rankme, target_health


def rankme_reference(z: np.ndarray) -> float:
    """Garrido et al.'s RankMe written out in float64: p_k = s_k / ||s||_1 + eps, exp(-sum p_k log p_k)."""
    s = np.linalg.svd(z.astype(np.float64), compute_uv=False)
    p = s / np.abs(s).sum() + RANKME_EPS
    return float(np.exp(-(p * np.log(p)).sum()))


def test_rankme_matches_its_formula_and_its_extremes() -> None:
    z = torch.randn(200, 48, generator=torch.Generator().manual_seed(0))
    assert rankme(z) == pytest.approx(rankme_reference(z.numpy()), rel=1e-4)
    # r orthogonal directions used equally: rank r; one direction: rank 1; zeros (dead features): rank 1
    q, _ = torch.linalg.qr(torch.randn(64, 64, dtype=torch.float64))
    for r in (1, 5, 32):
        assert rankme(q[:, :r] @ torch.eye(r, 64, dtype=torch.float64)) == pytest.approx(r, rel=1e-3)
    assert rankme(torch.ones(30, 16)) == pytest.approx(1.0, rel=1e-3)
    assert rankme(torch.zeros(30, 16)) == pytest.approx(1.0, rel=1e-3)
    # a diverged run's NaN rows: no measure (the SVD would raise), the non-finite guard names the step instead
    assert math.isnan(rankme(torch.full((30, 16), float("nan"))))


def test_mean_pairwise_cosine_is_the_mean_over_distinct_pairs() -> None:
    z = torch.randn(9, 5, generator=torch.Generator().manual_seed(1))
    pairs = [torch.cosine_similarity(z[i], z[j], dim=0) for i, j in itertools.permutations(range(9), 2)]
    assert mean_pairwise_cosine(z) == pytest.approx(float(torch.stack(pairs).mean()), abs=1e-6)
    assert mean_pairwise_cosine(torch.ones(4, 3)) == pytest.approx(1.0)
    assert math.isnan(mean_pairwise_cosine(torch.ones(1, 3)))


def test_the_buffer_keeps_the_newest_rows() -> None:
    monitor = CollapseMonitor(buffer_size=10)
    for i in range(5):
        monitor._keep("features", torch.full((4, 3), float(i)))
    kept = torch.cat(list(monitor.buffers["features"]))
    assert len(kept) >= 10 and kept[-10:, 0].tolist() == [2.0] * 2 + [3.0] * 4 + [4.0] * 4


def test_bad_settings_are_refused_in_one_line() -> None:
    from selfsup.errors import ConfigError

    for kwargs in ({"every_n_steps": 0}, {"buffer_size": 1}, {"min_rank_fraction": 2.0}, {"target_window": 0},
                   {"uniform_ratio": 0.0}, {"top_share": 1.5}):
        with pytest.raises(ConfigError, match="collapse."):
            CollapseMonitor(**kwargs)


def test_target_health_is_the_mean_entropy_over_ln_k_and_the_top_share() -> None:
    p = torch.softmax(torch.randn(6, 10, generator=torch.Generator().manual_seed(2)), dim=1)
    entropy = float(sum(-sum(float(x) * math.log(float(x)) for x in row) for row in p)) / 6
    top = max(int((p.argmax(1) == k).sum()) for k in range(10)) / 6
    health = target_health(p)
    assert health["target_entropy_ratio"].item() == pytest.approx(entropy / math.log(10), rel=1e-5)
    assert health["target_top_share"].item() == pytest.approx(top)
    assert target_health(torch.full((4, 8), 1 / 8))["target_entropy_ratio"].item() == pytest.approx(1.0)
    one_hot = target_health(torch.eye(8)[[3, 3, 3, 1]])
    assert one_hot["target_entropy_ratio"].item() == pytest.approx(0.0) and one_hot["target_top_share"] == 0.75


QUICK = [*TINY, "--trainer.max_epochs", "2", "--trainer.limit_train_batches", "8", "--trainer.log_every_n_steps",
         "2", "--trainer.enable_progress_bar", "false", "--trainer.callbacks=[]"]  # no kNN monitor: seconds

RUNS = {
    # the demo recipe, unchanged but tiny: healthy
    "healthy": ("simclr/mnist5k.yaml", [], None),
    # codes this soft are uniform targets: every prediction turns uniform, loss = ln K (seen from epoch 1)
    "swav-soft-codes": ("swav/mnist5k.yaml", ["--model.init_args.sinkhorn_eps", "1.0", "--model.init_args.lr", "2",
                                              "--model.init_args.num_prototypes", "30",
                                              "--model.init_args.warmup_epochs", "0",
                                              "--model.init_args.freeze_prototypes_iters", "0"], "of ln K"),
    # lr 100 with no norm after the projector: the embeddings fall onto a few directions (RankMe ~3.5 of 128)
    "simclr-lr-100": ("simclr/mnist5k.yaml", ["--model.init_args.lr", "100", "--model.init_args.optimizer", "sgd",
                                              "--model.init_args.proj_last_norm", "none",
                                              "--trainer.limit_train_batches", "20"], "embeddings span"),
    # DINO's teacher targets (train/target_*) over an 8-step window: healthy; no centering (one output wins for
    # ~85% of each batch); a teacher as soft as the student (entropy 0.97-0.99 of ln K)
    "dino-healthy": ("dino/mnist5k-resnet18.yaml", ["--collapse.target_window", "8"], None),
    "dino-no-centering": ("dino/mnist5k-resnet18.yaml", ["--collapse.target_window", "8",
                                                         "--model.init_args.center_momentum", "1.0"], "same output"),
    "dino-soft-teacher": ("dino/mnist5k-resnet18.yaml", ["--collapse.target_window", "8",
                                                         "--model.init_args.teacher_temp", "0.1",
                                                         "--model.init_args.warmup_teacher_temp", "0.1"],
                          "near uniform"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(RUNS))
def test_a_collapsed_run_warns_once_and_a_healthy_one_does_not(case: str, tmp_path: Path) -> None:
    config, overrides, expected = RUNS[case]
    proc = selfsup("fit", "-c", str(REPO / "experiments" / config), *QUICK, *overrides, cwd=tmp_path)
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("selfsup: warning: collapse")]
    if expected is None:
        assert warnings == []
    else:
        assert len(warnings) == 1 and expected in warnings[0] and "Likely causes" in warnings[0], proc.stderr[-2000:]
    (metrics,) = tmp_path.glob("runs/*/version_0/metrics.csv")
    every = list(csv.DictReader(metrics.open()))
    rows = [r for r in every if r.get("health/rank_features")]
    assert rows, "health/* never logged"
    assert all(float(r["health/rank_features"]) >= 1.0 for r in rows)
    if "dino" in config:
        assert any(r.get("train/target_entropy_ratio_step") and r.get("train/target_top_share_step") for r in every)
    if "swav" in config:
        assert any(r.get("train/prototypes_used_step") for r in rows)
