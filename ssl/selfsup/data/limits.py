"""Caps on what one piece of data may cost to read, so a hostile or broken file cannot exhaust memory.

Past a cap the sample is skipped and counted (``data/skipped``) with the cap in its message, or, for a shard
pattern, the command stops with one line. Each cap is set by an environment variable, which reaches every
command and its loader workers alike:

- ``SELFSUP_MAX_PIXELS`` (default 64,000,000): width x height of one image, checked from its header before
  decoding.
- ``SELFSUP_MAX_VIDEO_PIXELS`` (default 128,000,000): frames x width x height of one video, checked from its
  stream metadata before decoding and again while decoding.
- ``SELFSUP_MAX_MEMBER_BYTES`` (default 1,000,000,000): bytes of one tar member, checked from its header
  before it is read, and of one file that ``shards write`` stores.
- ``SELFSUP_MAX_PATTERN_NAMES`` (default 100,000): names a brace pattern (``train-{000000..000099}.tar``) may
  expand to, counted before expanding.

- ``SELFSUP_MAX_BACKBONE_WIDTH`` (default 16,384), ``SELFSUP_MAX_IN_CHANNELS`` (default 1,024) and
  ``SELFSUP_MAX_IMAGE_SIDE`` (default 8,192): a backbone's widths (``width``, ``hidden_dim``, ``mlp_dim``,
  ``embed_dim``, ...), its input channels, and an image or evaluation size, from a command line, a config, a
  checkpoint's hyper-parameters or a ``backbone.json`` (``check_sizes``), before anything is allocated.

Compressed shards (gzip, bzip2, xz, zstd) are refused outright: selfsup writes plain tars, and a few hundred
kilobytes of xz can inflate to gigabytes.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass, fields

from selfsup.errors import ConfigError


@dataclass(frozen=True)
class Limits:
    """The caps in force (see the module docstring); ``Limits.from_env()`` reads the environment's."""

    max_pixels: int = 64_000_000
    max_video_pixels: int = 128_000_000
    max_member_bytes: int = 1_000_000_000
    max_pattern_names: int = 100_000
    max_backbone_width: int = 16_384
    max_in_channels: int = 1_024
    max_image_side: int = 8_192

    @staticmethod
    def variable(name: str) -> str:
        """The environment variable that sets cap ``name``."""
        return f"SELFSUP_{name.upper()}"

    def describe(self, name: str) -> str:
        """``the cap of N (SELFSUP_...)``: how a message names a cap and how to raise it."""
        return f"the cap of {getattr(self, name):,} (raise it with {self.variable(name)})"

    @classmethod
    def from_env(cls) -> Limits:
        return _from_env(tuple(map(os.environ.get, _VARIABLES)))


_VARIABLES = tuple(Limits.variable(f.name) for f in fields(Limits))


@functools.lru_cache(maxsize=8)
def _from_env(texts: tuple[str | None, ...]) -> Limits:
    """Limits from the variables' values (cached: every decoded sample asks)."""
    values = {}
    for f, text in zip(fields(Limits), texts):
        if text is None:
            continue
        try:
            values[f.name] = int(float(text))
        except (ValueError, OverflowError):
            raise ConfigError(f"{Limits.variable(f.name)}={text!r} is not a finite number; write e.g. 1e8") from None
        if values[f.name] < 1:
            raise ConfigError(f"{Limits.variable(f.name)} must be at least 1, got {text}")
    return Limits(**values)


# Sizes a backbone, an image or an evaluation transform may ask for, by argument name, and their cap.
SIZE_CAPS = {"width": "max_backbone_width", "width_per_group": "max_backbone_width", "hidden_dim": "max_backbone_width",
             "mlp_dim": "max_backbone_width", "embed_dim": "max_backbone_width", "in_channels": "max_in_channels",
             "channels": "max_in_channels", "image_size": "max_image_side", "size": "max_image_side",
             "resize": "max_image_side"}


def check_sizes(values: dict, where: str) -> None:
    """Refuse a size in ``values`` (a backbone's arguments, an evaluation transform) over its cap, or not a whole
    number of at least 1, naming ``where`` it was read, the cap and how to raise it."""
    limits = Limits.from_env()
    for key, cap in SIZE_CAPS.items():
        value = values.get(key) if isinstance(values, dict) else None
        if value is None or isinstance(value, (list, tuple)):
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{where}: {key} must be at least 1, got {value!r} (a whole number)")
        if value > getattr(limits, cap):
            raise ConfigError(f"{where}: {key} {value:,} is over {limits.describe(cap)}; a size this large would "
                              "not fit in memory")
