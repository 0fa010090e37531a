"""Data: shard writing and streaming, built-in data sets, view recipes, and the LightningDataModule."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from selfsup.data.module import SSLDataModule

__all__ = ["SSLDataModule"]


def __getattr__(name: str) -> object:
    """``SSLDataModule`` is imported on first use: shard tools that never build one do without Lightning."""
    if name == "SSLDataModule":
        from selfsup.data.module import SSLDataModule

        return SSLDataModule
    raise AttributeError(f"module 'selfsup.data' has no attribute {name!r}")
