"""Shared fixtures: one cache folder for built-in shards per test session, also seen by CLI subprocesses."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


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
