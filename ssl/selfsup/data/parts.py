"""Parts: the units a stream splits over ranks and workers. A part is a tar shard or a chunk of a folder's files;
both yield the same raw webdataset samples (``__key__`` plus encoded members)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import webdataset as wds

from selfsup.data.folders import file_samples


class PartError(RuntimeError):
    """A whole part (or its rest) could not be read: a missing, truncated or unreadable shard."""


def _raise(err: Exception) -> bool:
    """webdataset error handler: stop reading this part (webdataset appends `` @ <stream>`` to messages)."""
    raise PartError(str(err.args[0]).split(" @ ")[0] if err.args else repr(err)) from err


@dataclass(frozen=True)
class ShardPart:
    """One tar shard and the number of samples its manifest says it holds."""

    path: str
    count: int

    @property
    def name(self) -> str:
        return Path(self.path).name

    def samples(self) -> Iterator[dict[str, Any]]:
        """Raw samples in tar order; PartError where the file is missing or breaks off."""
        yield from wds.tarfile_samples([{"url": self.path}], handler=_raise)


@dataclass(frozen=True)
class FilePart:
    """A chunk of a folder's files (``folder:`` sources read folders without writing shards)."""

    root: Path
    files: tuple[tuple[Path, int], ...]
    index: int

    @property
    def name(self) -> str:
        return f"{self.root.name}[part {self.index}]"

    @property
    def count(self) -> int:
        return len(self.files)

    def samples(self) -> Iterator[dict[str, Any]]:
        """Raw samples, one per file; a file that cannot be read is yielded with no image member (skipped)."""
        for entry in self.files:
            try:
                yield from file_samples([entry], self.root)
            except OSError as err:
                yield {"__key__": str(entry[0]), "__error__": str(err)}


def file_parts(root: Path, files: list[tuple[Path, int]], size: int = 256) -> list[FilePart]:
    """A folder split cut into parts of ``size`` files."""
    return [FilePart(root, tuple(files[i : i + size]), i // size) for i in range(0, len(files), size)]
