"""Image and video folders as samples: the layout rules shared by ``selfsup shards write`` and ``folder:`` sources.

Layouts (``ROOT`` is the folder given):

- ``ROOT/train/CLASS/*``, ``ROOT/val/CLASS/*`` (ImageNet style): one split per sub-folder named train, val
  or test; the class sub-folders of ``train`` are the labels.
- ``ROOT/CLASS/*``: one ``train`` split, labeled by class sub-folder.
- ``ROOT/*``: one ``train`` split, unlabeled.

A segmentation mask goes beside its image as ``NAME.mask.png`` (for ``NAME.jpg``, ``NAME.png`` ...): an 8-bit
grayscale or palette PNG of class indices, the image's size, 0 for background (255: ignored). It becomes the
sample's ``mask.png`` member, and is not an image of the set itself.

Files are listed in sorted order and shuffled with a fixed seed, so that shards (and a folder source's parts)
mix classes; a random fraction of each class can be held out as ``val``.
"""

from __future__ import annotations

import functools
import os
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from selfsup.data.members import HIGH_DEPTH_MODES, IMAGE_EXTENSIONS, MASK, VIDEO_EXTENSIONS
from selfsup.errors import ConfigError

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class FolderListing:
    """The files of a folder by split, their labels (-1: unlabeled), the class names and the media kind;
    ``passed_over``: (path, reason) of every file that is not an image or video and every folder that could not
    be read."""

    root: Path
    splits: dict[str, list[tuple[Path, int]]]
    classes: list[str]
    media: str  # "image" or "video"
    passed_over: list[tuple[Path, str]] = field(default_factory=list)

    def channels(self, probe: int = 32) -> int:
        """1 if the first ``probe`` images of the train split are all grayscale, else 3 (videos: 3)."""
        if self.media == "video":
            return 3
        for path, _ in self.splits["train"][:probe]:
            try:
                with Image.open(path) as image:
                    if image.mode not in ("1", "L", "LA", *HIGH_DEPTH_MODES):
                        return 3
            except OSError:
                continue  # a broken file is the reader's to count, not a reason to fail the listing
        return 1


MEDIA_EXTENSIONS = (*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS)


def _media_files(folder: Path, passed_over: list[tuple[Path, str]]) -> list[Path]:
    """Image and video files under ``folder``, sorted; the other files and unreadable folders go to
    ``passed_over``."""
    found = []

    def unreadable(err: OSError) -> None:
        passed_over.append((Path(err.filename), f"cannot read the folder ({err.strerror or err})"))

    for top, _, names in os.walk(folder, onerror=unreadable):
        for path in (Path(top, name) for name in names):
            if not path.is_file() or path.name.lower().endswith(f".{MASK}"):
                continue  # a mask travels with its image (`file_samples`)
            if path.suffix[1:].lower() in MEDIA_EXTENSIONS:
                found.append(path)
            else:
                passed_over.append((path, "not an image or video (by its extension)"))
    return sorted(found)


def _labeled(folder: Path, classes: list[str], passed_over: list[tuple[Path, str]]) -> list[tuple[Path, int]]:
    """Files under ``folder``; labeled by their class sub-folder when ``classes`` is not empty."""
    if not classes:
        return [(p, -1) for p in _media_files(folder, passed_over)]
    index = {name: i for i, name in enumerate(classes)}
    files = []
    for path in _media_files(folder, passed_over):
        top = path.relative_to(folder).parts[0]
        if top not in index:
            raise ConfigError(f"{path}: class folder {top!r} is not among the train split's classes")
        files.append((path, index[top]))
    return files


def _hold_out(files: list[tuple[Path, int]], fraction: float) -> tuple[list, list]:
    """(train, val) of shuffled files: round(fraction x n) of the n files in val, shared between the classes in
    proportion to their sizes (largest remainders get the leftover files)."""
    by_class: dict[int, list[Path]] = {}
    for path, label in files:
        by_class.setdefault(label, []).append(path)
    shares = {label: len(paths) * fraction for label, paths in by_class.items()}
    counts = {label: int(share) for label, share in shares.items()}
    leftover = int(round(len(files) * fraction)) - sum(counts.values())
    for label in sorted(shares, key=lambda c: shares[c] - counts[c], reverse=True)[:max(leftover, 0)]:
        counts[label] += 1
    held = {path for label, paths in by_class.items() for path in paths[: counts[label]]}
    return [f for f in files if f[0] not in held], [f for f in files if f[0] in held]


def list_folder(root: str | Path, val_fraction: float = 0.0, seed: int = 0) -> FolderListing:
    """List an image or video folder (see the module docstring for the layouts); ConfigError if unusable.
    ``val_fraction``: hold out that fraction of each class of the train split as val (stratified)."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"folder {root} does not exist (or is not a folder)")
    try:
        split_dirs = {name: root / name for name in SPLIT_NAMES if (root / name).is_dir()}
        if split_dirs and "train" not in split_dirs:
            raise ConfigError(f"{root} has {', '.join(split_dirs)} but no train/ sub-folder")
        train_dir = split_dirs.get("train", root)
        classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as err:
        raise ConfigError(f"cannot read the folder {err.filename or root} ({err.strerror or err}); check its "
                          "permissions") from None
    passed_over: list[tuple[Path, str]] = []
    splits = {name: _labeled(folder, classes, passed_over) for name, folder in (split_dirs or {"train": root}).items()}
    if not splits["train"]:
        raise ConfigError(
            f"no image or video files under {train_dir} (looked for {', '.join(MEDIA_EXTENSIONS)})"
        )
    for files in splits.values():
        random.Random(seed).shuffle(files)
    if val_fraction > 0:
        if "val" in splits:
            raise ConfigError(f"{root} already has a val/ split; drop --val-fraction")
        splits["train"], splits["val"] = _hold_out(splits["train"], val_fraction)
    kinds = {"video" if p.suffix[1:].lower() in VIDEO_EXTENSIONS else "image" for f in splits.values() for p, _ in f}
    if len(kinds) > 1:
        raise ConfigError(f"{root} mixes images and videos; put them in separate folders")
    return FolderListing(root, splits, classes, kinds.pop(), passed_over)


def sample_key(path: Path, root: Path) -> str:
    """The ``__key__`` of a file: its path below ``root`` without the extension (with it, as ``NAME_ext``, when
    another image or video of the folder shares the name), each byte that a tar member name or webdataset's
    grouping would change (control characters, ``.``, ``%``, bytes that are not UTF-8) written as ``%XX``, so every
    file is one sample and its name can be read back."""
    relative = path.relative_to(root)
    if _media_stems(path.parent)[path.stem] > 1:
        relative = relative.with_name(f"{path.stem}_{path.suffix[1:]}")
    else:
        relative = relative.with_suffix("")
    return "".join(_escaped(c) for c in os.fsdecode(relative.as_posix()))


def _escaped(char: str) -> str:
    """``char``, or its bytes as ``%XX`` when it is ``.``, ``%``, not printable or a byte that is not UTF-8."""
    if char in ".%" or not char.isprintable() or "\udc80" <= char <= "\udcff":
        return "".join(f"%{b:02X}" for b in os.fsencode(char))
    return char


@functools.lru_cache(maxsize=64)
def _media_stems(folder: Path) -> Counter:
    """How many images and videos of ``folder`` have each name (without extension)."""
    media = {f".{ext}" for ext in IMAGE_EXTENSIONS + VIDEO_EXTENSIONS}
    try:
        return Counter(p.stem for p in folder.iterdir() if p.suffix.lower() in media)
    except OSError:
        return Counter()


def file_samples(files: list[tuple[Path, int]], root: Path) -> Iterator[dict[str, Any]]:
    """Raw webdataset samples of files: ``__key__`` (the path below ``root``), the encoded bytes under the file's
    lower-cased extension, ``cls`` when labeled and ``mask.png`` when the file has a mask beside it. Exactly what
    a shard written from them holds."""
    for path, label in files:
        sample = {"__key__": sample_key(path, root), path.suffix[1:].lower(): path.read_bytes()}
        if label >= 0:
            sample["cls"] = str(label).encode()
        mask = path.with_name(f"{path.stem}.{MASK}")
        if mask.is_file():
            sample[MASK] = mask.read_bytes()
        yield sample
