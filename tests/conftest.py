"""Shared fixtures: one cache folder for built-in shards per test session (shared by parallel workers and seen by
CLI subprocesses); the markers each test gets by rule (markers.py); the durations file of each run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

pytest_plugins = ["markers", "durations"]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist, each worker (and the commands it starts) gets its share of the cores, not all of them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where this run's test caches live: $SELFSUP_TEST_CACHE, or a folder that all of its workers share."""
    if os.environ.get("SELFSUP_TEST_CACHE"):
        return Path(os.environ["SELFSUP_TEST_CACHE"])
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "selfsup-cache"


@pytest.fixture(scope="session", autouse=True)
def selfsup_cache(cache_root: Path) -> Path:
    from builtin_cache import cache_folder

    cache = cache_folder(cache_root)
    os.environ["SELFSUP_CACHE"] = str(cache)
    return cache


@pytest.fixture(scope="session")
def mnist5k(selfsup_cache: Path) -> Path:
    """The built-in MNIST-5k shard set, written once per run."""
    from builtin_cache import ensure_builtin

    return ensure_builtin(selfsup_cache, "mnist5k")


@pytest.fixture(scope="session")
def small_builtins(cache_root: Path) -> Path:
    """A cache folder holding every built-in data set cut to its first SMALL_SPLITS samples per split."""
    from builtin_cache import SMALL_SPLITS, cache_folder, ensure_builtin
    from selfsup.data.builtin import BUILTINS

    cache = cache_folder(cache_root, SMALL_SPLITS)
    for name in BUILTINS:
        ensure_builtin(cache, name, SMALL_SPLITS)
    return cache


@pytest.fixture
def small_data(small_builtins: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """For one test (and the commands it runs): the built-in data sets are the small ones."""
    monkeypatch.setenv("SELFSUP_CACHE", str(small_builtins))
    return small_builtins


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory, mnist5k: Path) -> tuple[Path, Path]:
    """A few real SimCLR steps through `selfsup fit` with the demo config (width-4 ResNet-18, CIFAR stem, 1 channel);
    returns (run dir, last.ckpt). Shared by the CLI and evaluation tests."""
    from clirun import REPO, TINY, selfsup

    cwd = tmp_path_factory.mktemp("fit")
    selfsup("fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), *TINY, "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "3", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.enable_progress_bar", "false", cwd=cwd, fresh=True)  # `fit` as a user runs it
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
