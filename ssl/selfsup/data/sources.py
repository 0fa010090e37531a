"""Data sources named by URL-like strings: ``builtin:NAME``, ``shards:FOLDER_OR_PATTERN`` and ``folder:PATH``."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import braceexpand

from selfsup.data.builtin import Builtin, get_builtin
from selfsup.data.folders import FolderListing, list_folder
from selfsup.data.limits import Limits
from selfsup.data.manifest import Manifest
from selfsup.data.parts import ShardPart, file_parts
from selfsup.data.stream import Part
from selfsup.errors import ConfigError

SCHEMES = ("builtin", "shards", "folder")
USAGE = ("use builtin:NAME (e.g. builtin:mnist5k), shards:FOLDER (a folder with manifest.json), "
         "shards:FOLDER/train-{000000..000007}.tar, or folder:PATH (an image folder)")


def expand_pattern(pattern: str, limits: Limits | None = None) -> list[str]:
    """The names a brace pattern (``train-{000000..000007}.tar``) stands for; ConfigError when it is malformed or
    names more than ``limits.max_pattern_names`` (counted before expanding, so a typo cannot fill the memory)."""
    limits = limits or Limits.from_env()
    count = pattern_size(pattern)
    if count > limits.max_pattern_names:
        raise ConfigError(f"the pattern {pattern!r} names {count:,} files, over {limits.describe('max_pattern_names')}"
                          "; check its braces")
    try:
        return list(braceexpand.braceexpand(pattern))
    except braceexpand.UnbalancedBracesError as err:
        raise ConfigError(f"the pattern {pattern!r} is malformed ({err}); write e.g. train-{{000000..000007}}.tar"
                          ) from None


def pattern_size(pattern: str) -> int:
    """How many names braceexpand makes of ``pattern``, without making them."""
    total, depth, start, pos = 1, 0, 0, 0
    while pos < len(pattern):
        char = pattern[pos]
        if char == "\\":
            pos += 1
        elif char == "{":
            start, depth = (pos, 1) if depth == 0 else (start, depth + 1)
        elif char == "}" and depth:
            depth -= 1
            if depth == 0:
                total *= _expression_size(pattern[start + 1 : pos])
        pos += 1
    return total


def _expression_size(expr: str) -> int:
    """Names made by one top-level ``{expr}``: an integer or letter range, a comma list, or a nested pattern."""
    for regex, index in ((braceexpand.int_range_re, int), (braceexpand.char_range_re, braceexpand.alphabet.index)):
        match = regex.match(expr)
        if match:
            start, end, step = match.groups()
            return abs(index(end) - index(start)) // (int(step or 1) or 1) + 1
    items, depth, start = [], 0, 0
    for pos, char in enumerate(expr):
        depth += (char == "{") - (char == "}")
        if char == "," and depth == 0:
            items.append(expr[start:pos])
            start = pos + 1
    return sum(pattern_size(item) for item in [*items, expr[start:]]) if items else pattern_size(expr)


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

    def label_classes(self, label: str) -> list[str]:
        """The class names of ``label``: ``cls`` (the sample's class) or a json field the data set declares."""
        if label == "cls":
            return self.classes
        declared = self.builtin.labels if self.builtin else {}
        if label not in declared:
            raise ConfigError(f"data source {self.spec!r} has no label {label!r}; its labels: "
                              f"{', '.join(['cls', *declared])}")
        return list(declared[label])

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
            hint = ("; hold one out of train when writing the shards: selfsup shards write --from IMAGES --out OUT "
                    "--val-fraction 0.1" if name == "val" else "")
            raise ConfigError(
                f"data source {self.spec!r} has no {name!r} split (it has: {', '.join(self.split_names())}){hint}"
            )
        if self.scheme == "folder":
            return SplitParts(file_parts(self.listing.root, self.listing.splits[name]))
        counts: dict[str, int] = {}
        for split in self._manifest.splits.values():
            counts.update(zip(split.shards, split.counts))
        if self.pattern is not None and name == "train":
            names = expand_pattern(self.pattern)
            missing = [n for n in names if n not in counts or not (self.folder / n).is_file()]
            if missing:
                raise ConfigError(f"data source {self.spec!r}: {len(missing)} shard(s) not found, e.g. {missing[0]}")
        else:
            names = self._manifest.splits[name].shards
        if not names:
            raise ConfigError(f"data source {self.spec!r}: split {name!r} has no shards; write it again")
        return SplitParts([ShardPart(str(self.folder / n), counts[n]) for n in names])
