"""Data sources named by URL-like strings: ``builtin:NAME`` and ``shards:FOLDER_OR_PATTERN``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import braceexpand

from selfsup.data.builtin import Builtin, get_builtin
from selfsup.data.manifest import Manifest
from selfsup.errors import ConfigError

SCHEMES = ("builtin", "shards")


@dataclass
class SplitShards:
    """The shard files of one split and how many samples they hold."""

    urls: list[str]
    num_samples: int


class Source:
    """A parsed source string; ``resolve()`` makes sure the shards exist and returns their manifest."""

    def __init__(self, spec: str) -> None:
        scheme, sep, rest = spec.partition(":")
        if not sep or scheme not in SCHEMES or not rest:
            raise ConfigError(
                f"data source {spec!r} is not understood; use builtin:NAME (e.g. builtin:mnist5k) or "
                "shards:FOLDER (a folder with manifest.json) or shards:FOLDER/train-{000000..000007}.tar"
            )
        self.spec, self.scheme, self.rest = spec, scheme, rest
        self.builtin: Builtin | None = get_builtin(rest) if scheme == "builtin" else None
        self.pattern: str | None = None
        if scheme == "shards":
            path = Path(rest)
            self.folder, self.pattern = (path, None) if path.suffix != ".tar" else (path.parent, path.name)
            if not self.folder.is_dir():
                raise ConfigError(
                    f"data source {spec!r}: folder {self.folder} does not exist; give a shard folder with "
                    "manifest.json, or FOLDER/train-{000000..000007}.tar"
                )
            self._manifest = Manifest.load(self.folder)

    @property
    def channels(self) -> int:
        return self.builtin.channels if self.builtin else self._manifest.channels

    @property
    def classes(self) -> list[str]:
        return list(self.builtin.classes) if self.builtin else self._manifest.classes

    def resolve(self) -> Manifest:
        """The manifest, writing a built-in data set's shards first if needed."""
        if self.builtin:
            self.folder = self.builtin.ensure_written()
            self._manifest = Manifest.load(self.folder)
        return self._manifest

    def split(self, name: str) -> SplitShards:
        """Shards of split ``name`` (for a pattern source: the files the pattern names, whatever the split)."""
        manifest = self.resolve()
        counts: dict[str, int] = {}
        for split in manifest.splits.values():
            counts.update(zip(split.shards, split.counts))
        if self.pattern is not None and name == "train":
            names = list(braceexpand.braceexpand(self.pattern))
            missing = [n for n in names if n not in counts or not (self.folder / n).is_file()]
            if missing:
                raise ConfigError(f"data source {self.spec!r}: {len(missing)} shard(s) not found, e.g. {missing[0]}")
        elif name in manifest.splits:
            names = manifest.splits[name].shards
        else:
            raise ConfigError(
                f"data source {self.spec!r} has no {name!r} split (it has: {', '.join(manifest.splits)})"
            )
        return SplitShards([str(self.folder / n) for n in names], sum(counts[n] for n in names))

    def has_split(self, name: str) -> bool:
        return name in self.resolve().splits
