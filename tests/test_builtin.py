"""A built-in data set is written into the cache the first time a run asks for it, and only then."""

import dataclasses
from itertools import islice

from selfsup.data.builtin import get_builtin
from selfsup.data.manifest import MANIFEST, Manifest


def test_a_missing_builtin_set_is_written_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SELFSUP_CACHE", str(tmp_path))
    mnist = get_builtin("mnist5k")
    tiny = dataclasses.replace(mnist, name="tiny", shard_size=2,
                               samples=lambda: {split: islice(items, 3) for split, items in mnist.samples().items()})
    folder = tiny.ensure_written()
    assert folder == tmp_path / "tiny"
    manifest = Manifest.load(folder)
    assert {name: split.counts for name, split in manifest.splits.items()} == {"train": [2, 1], "val": [2, 1]}
    assert manifest.channels == 1 and manifest.classes == list(mnist.classes)
    written = (folder / MANIFEST).stat().st_mtime_ns
    assert tiny.ensure_written() == folder and (folder / MANIFEST).stat().st_mtime_ns == written  # not again

