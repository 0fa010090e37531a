"""Parts: the units a stream splits over ranks and workers. A part is a tar shard or a chunk of a folder's files;
both yield the same raw webdataset samples (``__key__`` plus encoded members)."""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from selfsup.data.folders import file_samples
from selfsup.data.limits import Limits


class PartError(RuntimeError):
    """A whole part (or its rest) could not be read: a missing, truncated, compressed or unreadable shard."""


# Magic bytes of the compressions tarfile would undo on the fly (and a bomb would inflate without bound).
COMPRESSED = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "xz", b"\x28\xb5\x2f\xfd": "zstd"}
_NAME = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's rule: key = path up to the first dot of the name


def tar_samples(path: str, limits: Limits | None = None) -> Iterator[dict[str, Any]]:
    """Raw webdataset samples of a plain tar file, in tar order: ``__key__`` plus each member's bytes under its
    lower-cased extension (members with the same key in a row form one sample).

    PartError if the file cannot be opened, is compressed (refused: see `selfsup.data.limits`) or breaks off.
    A member over ``limits.max_member_bytes`` is never read: its sample carries ``__error__`` (and is skipped).
    """
    limits = limits or Limits.from_env()
    try:
        file = open(path, "rb")  # closed by the `with` below
    except OSError as err:
        raise PartError(f"cannot open it ({err.strerror or err})") from err
    with file:
        head = file.peek(6)[:6]
        kind = next((name for magic, name in COMPRESSED.items() if head.startswith(magic)), None)
        if kind:
            raise PartError(f"it is {kind}-compressed; selfsup reads only plain .tar shards (compressed ones can "
                            "inflate without bound): decompress it, or write the set again with `selfsup shards write`")
        sample: dict[str, Any] = {}
        try:
            with tarfile.open(fileobj=file, mode="r|") as tar:
                for info in tar:
                    match = _NAME.match(info.name)
                    if not info.isreg() or not match or match.group(1).rsplit("/", 1)[-1].startswith("__"):
                        continue
                    key, ext = match.group(1), match.group(2).lower()
                    if key != sample.get("__key__"):
                        if sample:
                            yield sample
                        sample = {"__key__": key}
                    if info.size > limits.max_member_bytes:
                        sample["__error__"] = (f"member {info.name} of {info.size:,} bytes is over "
                                               f"{limits.describe('max_member_bytes')}")
                    elif ext in sample:
                        sample["__error__"] = f"member {info.name} appears twice"
                    else:
                        sample[ext] = tar.extractfile(info).read()
                    tar.members = []  # streaming: keep no history
        except (tarfile.TarError, OSError, EOFError) as err:
            raise PartError(str(err) or type(err).__name__) from err
        if sample:
            yield sample


@dataclass(frozen=True)
class ShardPart:
    """One tar shard and the number of samples its manifest says it holds."""

    path: str
    count: int

    @property
    def name(self) -> str:
        return Path(self.path).name

    def samples(self) -> Iterator[dict[str, Any]]:
        """Raw samples in tar order; PartError where the file is missing, compressed or breaks off."""
        yield from tar_samples(self.path)


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
