"""Fixed 2-D sine-cosine position tables for ViTs (MoCo v3's encoder; MAE's decoder)."""

from __future__ import annotations

from typing import Literal

import torch

from selfsup.errors import ConfigError


def sincos_2d(dim: int, height: int, width: int, first: Literal["row", "column"] = "row",
              cls_token: bool = True, temperature: float = 10000.0) -> torch.Tensor:
    """The (1 + height * width, dim) table of a ``height`` x ``width`` patch grid (row-major, as the tokens), a
    zero row in front for the cls token (``cls_token``). Each axis gets ``dim / 2`` channels, ``[sin(p w),
    cos(p w)]`` over ``dim / 4`` frequencies ``w_i = temperature ** (-i / (dim / 4))``; the ``first`` axis' half
    comes first (MoCo v3: the row index, MAE: the column index)."""
    if dim % 4:
        raise ConfigError(f"a 2-D sine-cosine position table needs a width divisible by 4, got {dim}")
    if first not in ("row", "column"):
        raise ValueError(f"first must be 'row' or 'column', got {first!r}")
    omega = temperature ** -(torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                                indexing="ij")
    axes = (rows, cols) if first == "row" else (cols, rows)
    halves = [torch.outer(axis.flatten(), omega) for axis in axes]
    table = torch.cat([f(h) for h in halves for f in (torch.sin, torch.cos)], dim=1)
    if cls_token:
        table = torch.cat([table.new_zeros(1, dim), table])
    return table.float()
