"""What the hostile-data tests share: tiny labelled shard sets and photo folders, and the real command run in
this process (`cli`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfsup.data.manifest import Manifest
from selfsup.data.shards import encode_png, write_shard_set

SIZE = 10  # image side


def cli(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """The exit code and the printed output (stdout then stderr) of ``selfsup ARGS``, run in this process by the
    function the console script calls (no interpreter start: these rows take well under a second)."""
    from selfsup.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    return code, out.out + out.err


def png(seed: int, size: int = SIZE) -> bytes:
    return encode_png(torch.randint(0, 256, (1, size, size), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(seed)))


def shard_set(root: Path, counts: tuple[int, ...] = (16, 16), extra: dict | None = None) -> Path:
    """A labelled 1-channel shard set of 10x10 PNGs with one shard per count; ``extra`` members join sample 0."""
    def samples():
        for i in range(sum(counts)):
            yield {"__key__": f"s{i:04d}", "png": png(i), "cls": str(i % 2).encode(), **(extra or {} if i == 0 else {})}

    manifest = Manifest(name="hostile", channels=1, classes=["a", "b"])
    write_shard_set(root, manifest, {"train": samples()}, progress=False, maxcount=counts[0])
    return root


def shard(folder: Path, index: int = 0) -> Path:
    return sorted(folder.glob("train-*.tar"))[index]



def photos(root: Path, per_class: int = 3, size: int = SIZE) -> Path:
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(png(10 * c + i, size))
    return root
