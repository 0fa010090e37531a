"""The manifest written beside a shard set: classes, channels and per-shard sample counts for each split."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from selfsup.errors import ConfigError

MANIFEST = "manifest.json"
FORMAT = "selfsup-shards/1"


@dataclass
class Split:
    """One split of a shard set: shard file names (relative to the set's folder) and samples in each."""

    shards: list[str]
    counts: list[int]

    @property
    def num_samples(self) -> int:
        return sum(self.counts)


@dataclass
class Manifest:
    """What readers need to know without scanning the shards."""

    name: str
    channels: int
    classes: list[str] = field(default_factory=list)  # empty: unlabeled
    splits: dict[str, Split] = field(default_factory=dict)
    media: str = "image"  # or "video": members are encoded clips (mp4, webm, avi ...)
    format: str = FORMAT

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def save(self, folder: Path) -> None:
        (Path(folder) / MANIFEST).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST
        if not path.is_file():
            raise ConfigError(
                f"no {MANIFEST} in {folder}: not a selfsup shard set; write one with "
                f"`selfsup shards write --from DIR --out {folder}`"
            )
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as err:
            raw, problem = None, f"{type(err).__name__}: {err}"
        else:
            if isinstance(raw, dict) and raw.get("format") != FORMAT:
                raise ConfigError(f"{path} has format {raw.get('format')!r}, expected {FORMAT!r}")
            problem = _problem(raw)
        if problem:
            raise ConfigError(f"{path} is not a valid selfsup manifest ({problem}); write the shard set again with "
                              "`selfsup shards write`, or restore its manifest.json")
        raw["splits"] = {name: Split(**s) for name, s in raw["splits"].items()}
        return cls(**{f.name: raw[f.name] for f in fields(cls) if f.name in raw})


def _problem(raw: object) -> str | None:
    """What makes a parsed manifest unusable, or None."""
    if not isinstance(raw, dict):
        return f"a JSON {type(raw).__name__}, not an object"
    for key, kind in (("name", str), ("channels", int), ("splits", dict)):
        if not isinstance(raw.get(key), kind):
            return f"{key!r} is missing or not a {kind.__name__}"
    if raw["channels"] not in (1, 3):
        return f"channels is {raw['channels']}, not 1 or 3"
    if not isinstance(raw.get("classes", []), list) or not all(isinstance(c, str) for c in raw.get("classes", [])):
        return "'classes' is not a list of names"
    if raw.get("media", "image") not in ("image", "video"):
        return f"media is {raw.get('media')!r}, not 'image' or 'video'"
    for name, split in raw["splits"].items():
        shards, counts = (split.get("shards"), split.get("counts")) if isinstance(split, dict) else (None, None)
        if not (isinstance(shards, list) and all(isinstance(x, str) and x for x in shards)
                and isinstance(counts, list) and all(type(n) is int and n >= 0 for n in counts)
                and len(shards) == len(counts)):
            return f"split {name!r} needs 'shards' (file names) and 'counts' (sample counts >= 0) of equal length"
    return None
