"""The manifest written beside a shard set: classes, channels and per-shard sample counts for each split."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
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
        raw = json.loads(path.read_text())
        if raw.get("format") != FORMAT:
            raise ConfigError(f"{path} has format {raw.get('format')!r}, expected {FORMAT!r}")
        raw["splits"] = {name: Split(**s) for name, s in raw["splits"].items()}
        return cls(**raw)
