"""Data sources named by URL-like strings: ``builtin:NAME``, ``shards:FOLDER_OR_PATTERN`` and ``folder:PATH``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import braceexpand

from selfsup.data.builtin import Builtin, get_builtin
from selfsup.data.folders import FolderListing, list_folder
from selfsup.data.manifest import Manifest
from selfsup.data.parts import ShardPart, file_parts
from selfsup.data.stream import Part
from selfsup.errors import ConfigError

SCHEMES = ("builtin", "shards", "folder")
USAGE = ("use builtin:NAME (e.g. builtin:mnist5k), shards:FOLDER (a folder with manifest.json), "
         "shards:FOLDER/train-{000000..000007}.tar, or folder:PATH (an image folder)")


@dataclass
class SplitParts:
    """The parts (shards or folder chunks) of one split."""

    parts: list[Part]

    @property
    def num_samples(self) -> int:
        return sum(part.count for part in self.parts)


class Source:
    """A parsed source string: what the data is (channels, classes, media) and the parts of each split."""

    def __init__(self, spec: str) -> None:
        scheme, sep, rest = spec.partition(":")
        if not sep or scheme not in SCHEMES or not rest:
            raise ConfigError(f"data source {spec!r} is not understood; {USAGE}")
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
        if scheme == "folder":
            self.listing: FolderListing = list_folder(rest)

    @cached_property
    def _folder_channels(self) -> int:
        return self.listing.channels()

    @property
    def channels(self) -> int:
        if self.scheme == "folder":
            return self._folder_channels
        return self.builtin.channels if self.builtin else self._manifest.channels

    @property
    def classes(self) -> list[str]:
        if self.scheme == "folder":
            return self.listing.classes
        return list(self.builtin.classes) if self.builtin else self._manifest.classes

    @property
    def media(self) -> str:
        return self.listing.media if self.scheme == "folder" else self.resolve().media

    def resolve(self) -> Manifest | None:
        """The manifest (None for a folder), writing a built-in data set's shards first if needed."""
        if self.builtin:
            self.folder = self.builtin.ensure_written()
            self._manifest = Manifest.load(self.folder)
        return None if self.scheme == "folder" else self._manifest

    def split_names(self) -> list[str]:
        return list(self.listing.splits) if self.scheme == "folder" else list(self.resolve().splits)

    def has_split(self, name: str) -> bool:
        return name in self.split_names()

    def split(self, name: str) -> SplitParts:
        """The parts of split ``name`` (for a pattern source: the shards the pattern names, whatever the split)."""
        if not self.has_split(name) and not (self.pattern and name == "train"):
            raise ConfigError(
                f"data source {self.spec!r} has no {name!r} split (it has: {', '.join(self.split_names())})"
            )
        if self.scheme == "folder":
            return SplitParts(file_parts(self.listing.root, self.listing.splits[name]))
        counts: dict[str, int] = {}
        for split in self._manifest.splits.values():
            counts.update(zip(split.shards, split.counts))
        if self.pattern is not None and name == "train":
            names = list(braceexpand.braceexpand(self.pattern))
            missing = [n for n in names if n not in counts or not (self.folder / n).is_file()]
            if missing:
                raise ConfigError(f"data source {self.spec!r}: {len(missing)} shard(s) not found, e.g. {missing[0]}")
        else:
            names = self._manifest.splits[name].shards
        if not names:
            raise ConfigError(f"data source {self.spec!r}: split {name!r} has no shards; write it again")
        return SplitParts([ShardPart(str(self.folder / n), counts[n]) for n in names])
