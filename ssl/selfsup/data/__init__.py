"""Data: shard writing and streaming, built-in data sets, view recipes, and the LightningDataModule."""

from selfsup.data.module import SSLDataModule

__all__ = ["SSLDataModule"]
