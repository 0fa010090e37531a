"""Shared fixtures: one cache folder for built-in shards per test session, also seen by CLI subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="session", autouse=True)
def selfsup_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = Path(os.environ.get("SELFSUP_TEST_CACHE") or tmp_path_factory.mktemp("selfsup-cache"))
    os.environ["SELFSUP_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def mnist5k(selfsup_cache: Path) -> Path:
    """The built-in MNIST-5k shard set, written once per session."""
    from selfsup.data.builtin import get_builtin

    return get_builtin("mnist5k").ensure_written()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist5k: Path) -> tuple[Path, Path]:
    """A few real SimCLR steps through `selfsup fit` with the demo config (width-4 ResNet-18, CIFAR stem, 1 channel);
    returns (run dir, last.ckpt). Shared by the CLI and evaluation tests."""
    from clirun import REPO, TINY, selfsup

    cwd = tmp_path_factory.mktemp("fit")
    selfsup("fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), *TINY, "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "3", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.enable_progress_bar", "false", cwd=cwd)
    runs = sorted((cwd / "runs/simclr-mnist5k").glob("version_*"))
    assert len(runs) == 1, runs  # CSV and TensorBoard share one version folder
    return runs[0], runs[0] / "checkpoints/last.ckpt"


@pytest.fixture
def stale_nans():
    """A function that leaves NaN in the memory the allocator hands out next, so a kernel that reads memory it
    never wrote shows NaN instead of passing by luck. Call it before each trial."""

    def poison() -> None:
        for dtype in (torch.float32, torch.bfloat16):
            torch.full((20_000_000,), float("nan"), dtype=dtype)

    return poison
