"""Built-in data sets for tests: written once per content, shared by every test process.

A cache folder is named by a hash of the code that writes the built-in sets and of the sample counts, so a
changed writer never reuses a stale set; a file lock lets parallel test workers write each set once.
"""

from __future__ import annotations

import hashlib
import inspect
from itertools import islice
from pathlib import Path

from filelock import FileLock

SMALL_SPLITS = {"train": 256, "val": 64}  # samples per split of the small built-in sets (the `small_builtins` fixture)


def cache_key(counts: dict[str, int] | None) -> str:
    """A short hash of the built-in writers' source (builtin.py, shards.py) and of ``counts``."""
    from selfsup.data import builtin, shards

    text = inspect.getsource(builtin) + inspect.getsource(shards) + repr(sorted((counts or {}).items()))
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_folder(root: Path, counts: dict[str, int] | None = None) -> Path:
    """The cache folder under ``root`` for built-in sets of ``counts`` samples per split (None: full size)."""
    name = "full" if counts is None else "small-" + "-".join(f"{k}{v}" for k, v in sorted(counts.items()))
    return root / f"{name}-{cache_key(counts)}"


def ensure_builtin(cache: Path, name: str, counts: dict[str, int] | None = None) -> Path:
    """The built-in set ``name`` in ``cache``, written there first unless it is (the first ``counts[split]``
    samples of each split when ``counts`` is given), under a lock so that concurrent callers write it once."""
    from selfsup.data.builtin import MANIFEST, get_builtin
    from selfsup.data.shards import write_shard_set

    builtin = get_builtin(name)
    folder = cache / name
    cache.mkdir(parents=True, exist_ok=True)
    with FileLock(str(cache / f".{name}.lock")):
        if not (folder / MANIFEST).is_file():
            samples = builtin.samples()
            if counts is not None:
                samples = {split: islice(items, counts[split]) for split, items in samples.items()}
            write_shard_set(folder, builtin.manifest(), samples, maxcount=builtin.shard_size, progress=False)
    return folder
