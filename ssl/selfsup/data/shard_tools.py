"""What ``selfsup shards write`` and ``selfsup shards inspect`` do (the command line is `selfsup.shards_cli`)."""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from selfsup.data.builtin import get_builtin
from selfsup.data.folders import file_samples, list_folder
from selfsup.data.limits import Limits
from selfsup.data.manifest import MANIFEST, Manifest
from selfsup.data.members import (
    IMAGE_EXTENSIONS,
    MASK,
    VIDEO_EXTENSIONS,
    BadSample,
    decode_image,
    decode_label,
    decode_mask,
    load_npy,
    media_member,
    refused_members,
)
from selfsup.data.parts import PartError, ShardPart
from selfsup.data.shards import parse_size, write_shard_set
from selfsup.data.sources import expand_pattern
from selfsup.errors import ConfigError


def write(args: argparse.Namespace) -> None:
    """Write the shards of a built-in data set or an image/video folder, with a manifest; the files it passes
    over (not images or videos, unreadable, images that do not decode) are listed at the end."""
    out = Path(args.out)
    check_write_args(args)
    if out.is_symlink():
        raise ConfigError(f"--out {out} is a symbolic link; give the path of a new folder (links are not followed)")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} already exists and is not empty; remove it or choose another folder")
    limits = {"maxcount": args.maxcount or (100_000_000 if args.maxsize else 1000)}
    if args.maxsize:
        limits["maxsize"] = parse_size(args.maxsize)
    source = args.source.removeprefix("folder:")
    passed_over: list[tuple[Path, str]] = []
    if source.startswith("builtin:"):
        builtin = get_builtin(source.removeprefix("builtin:"))
        manifest = write_shard_set(out, builtin.manifest(), builtin.samples(), progress=not args.quiet, **limits)
    else:
        listing = list_folder(source, val_fraction=args.val_fraction, seed=args.seed)
        passed_over = listing.passed_over
        manifest = Manifest(name=args.name or out.name, channels=args.channels or listing.channels(),
                            classes=listing.classes, media=listing.media)
        samples = {name: checked_samples(files, listing.root, manifest, passed_over)
                   for name, files in listing.splits.items()}
        totals = {name: len(files) for name, files in listing.splits.items()}
        try:
            manifest = write_shard_set(out, manifest, samples, totals=totals, progress=not args.quiet, **limits)
        finally:
            if passed_over:
                print(f"passed over {len(passed_over)} file(s) or folder(s):")
                for path, reason in passed_over:
                    print(f"  {path}: {reason}")
    size = sum(p.stat().st_size for p in out.glob("*.tar"))
    for name, split in manifest.splits.items():
        print(f"{name}: {split.num_samples} samples in {len(split.shards)} shards")
    labels = f"{manifest.num_classes} classes" if manifest.classes else "unlabeled"
    print(f"wrote {out} ({size / 1e6:.1f} MB, {manifest.media}s, {manifest.channels} channel(s), {labels}); "
          f"use it as   source: shards:{out}")


def check_write_args(args: argparse.Namespace) -> None:
    """Refuse numbers ``shards write`` would otherwise ignore or fail on late."""
    if args.maxcount is not None and args.maxcount < 1:
        raise ConfigError(f"--maxcount must be at least 1 sample per shard, got {args.maxcount}")
    if not 0 <= args.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be at least 0 (no val split) and below 1, got {args.val_fraction}")


def checked_samples(files: list[tuple[Path, int]], root: Path, manifest: Manifest,
                    passed_over: list[tuple[Path, str]]) -> Iterator[dict]:
    """The samples of ``files`` that can be read (within the member cap) and, for images, decode; the others
    are appended to ``passed_over`` with the reason."""
    limits = Limits.from_env()
    for entry in files:
        path = entry[0]
        try:
            if path.stat().st_size > limits.max_member_bytes:
                raise BadSample(f"{path.stat().st_size:,} bytes is over {limits.describe('max_member_bytes')}")
            sample = next(file_samples([entry], root))
            if manifest.media == "image":
                decode_image(sample[path.suffix[1:].lower()], manifest.channels, limits)
        except OSError as err:
            passed_over.append((path, f"cannot read it ({err.strerror or err})"))
        except BadSample as err:
            passed_over.append((path, str(err)))
        else:
            yield sample


@dataclass
class ShardReport:
    """What reading one shard found."""

    name: str
    expected: int | None
    size: int
    samples: int = 0
    classes: Counter = field(default_factory=Counter)
    members: Counter = field(default_factory=Counter)  # samples holding each member type
    problems: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def check_sample(sample: dict, manifest: Manifest | None, report: ShardReport) -> None:
    """Decode every accepted member of one sample the way a reader would, recording what fails."""
    key = sample["__key__"]
    report.refused += [f"{key}.{ext}" for ext in refused_members(sample)]
    report.members.update(ext for ext in sample if not ext.startswith("__"))
    try:
        if "__error__" in sample:
            raise BadSample(sample["__error__"])
        media = media_member(sample, IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
        if media in IMAGE_EXTENSIONS:
            image = decode_image(sample[media], manifest.channels if manifest else 3)
            if MASK in sample:  # background + the manifest's classes; any 8-bit index without classes
                decode_mask(sample, manifest.num_classes + 1 if manifest and manifest.classes else 256,
                            tuple(image.shape[-2:]))
        elif not sample[media]:
            raise BadSample(f"empty {media} member")
        num_classes = manifest.num_classes if manifest else (1 << 30 if "cls" in sample else 0)
        label = decode_label(sample, num_classes)
        if label >= 0:
            report.classes[label] += 1
        if "json" in sample:
            json.loads(sample["json"])
        if "npy" in sample:
            load_npy(sample["npy"])
    except RecursionError:
        report.problems.append(f"{key}: json member nested too deeply to parse")
    except (BadSample, ValueError) as err:
        report.problems.append(f"{key}: {err}")


def inspect_shard(part: ShardPart, manifest: Manifest | None) -> ShardReport:
    path = Path(part.path)
    report = ShardReport(part.name, part.count if manifest else None, path.stat().st_size if path.is_file() else 0)
    if not path.is_file():
        report.problems.append(f"{path} is missing or not a file; restore it or write the shard set again")
        return report
    try:
        for sample in part.samples():
            report.samples += 1
            check_sample(sample, manifest, report)
    except PartError as err:
        report.problems.append(f"unreadable after {report.samples} samples: {err}")
    if report.expected is not None and report.samples != report.expected:
        report.problems.append(f"{report.samples} samples read, the manifest says {report.expected}")
    return report


def shards_to_inspect(path: Path) -> tuple[Manifest | None, dict[str, list[ShardPart]]]:
    """The manifest (None for loose tar files) and the shards of each split under ``path``."""
    if path.is_dir():
        manifest = Manifest.load(path)
        return manifest, {
            name: [ShardPart(str(path / s), n) for s, n in zip(split.shards, split.counts)]
            for name, split in manifest.splits.items()
        }
    files = [Path(p) for p in expand_pattern(str(path))]
    missing = [p for p in files if not p.is_file()]
    if missing:
        raise ConfigError(f"{missing[0]} does not exist; give a shard folder (with {MANIFEST}) or tar file(s)")
    manifest = Manifest.load(files[0].parent) if (files[0].parent / MANIFEST).is_file() else None
    counts = {}
    for split in manifest.splits.values() if manifest else []:
        counts.update(zip(split.shards, split.counts))
    return manifest, {"files": [ShardPart(str(p), counts.get(p.name, 0)) for p in files]}


def inspect(args: argparse.Namespace) -> int:
    """Print counts, classes, sizes and every unreadable or refused member; 1 if anything is wrong."""
    manifest, splits = shards_to_inspect(Path(args.path))
    if manifest:
        labels = f"{manifest.num_classes} classes" if manifest.classes else "unlabeled"
        print(f"{manifest.name}: {manifest.media}s, {manifest.channels} channel(s), {labels}")
    bad = 0
    for name, parts in splits.items():
        reports = [inspect_shard(p, manifest) for p in tqdm(parts, desc=f"reading {name}", leave=False,
                                                           disable=True if args.quiet else None)]  # None: tty
        samples, size = sum(r.samples for r in reports), sum(r.size for r in reports)
        print(f"{name}: {len(reports)} shards, {samples} samples, {size / 1e6:.1f} MB "
              f"({size / max(samples, 1) / 1e3:.1f} kB per sample)")
        members = sum((r.members for r in reports), Counter())
        print("  members: " + ", ".join(f"{ext} ({n})" for ext, n in sorted(members.items())))
        classes = sum((r.classes for r in reports), Counter())
        if classes:
            names = manifest.classes if manifest else [str(c) for c in range(max(classes) + 1)]
            print("  classes: " + ", ".join(f"{names[c]}: {n}" for c, n in sorted(classes.items())))
        for report in reports:
            for problem in report.problems:
                print(f"  UNREADABLE {report.name}: {problem}")
            for member in report.refused:
                print(f"  REFUSED {report.name}: {member} (not a type selfsup reads; never unpickled)")
            bad += len(report.problems) + len(report.refused)
    print(f"{bad} problem(s) found" if bad else "all members readable")
    return 1 if bad else 0
