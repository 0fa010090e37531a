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
        except ValueError:
            raise ConfigError(f"{Limits.variable(f.name)}={text!r} is not a number; write e.g. 1e8") from None
        if values[f.name] < 1:
            raise ConfigError(f"{Limits.variable(f.name)} must be at least 1, got {text}")
    return Limits(**values)
