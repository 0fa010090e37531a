"""What ViT and Swin share for masked image modeling: a learned mask token, a dense forward through ``__call__``,
and per-parameter layer ids for layer-wise lr decay."""

from __future__ import annotations

import torch
from torch import nn

from selfsup.backbones.base import Backbone


class MaskedImageBackbone(Backbone):
    """A patch-based backbone whose ``forward_features(x, mask)`` replaces masked patch embeddings by a learned
    token right after patch embedding.

    Subclasses set ``patch_size`` (pixels per patch side), ``stride`` (pixels per side of one cell of the final
    map), ``num_blocks`` (transformer blocks, for layer-wise lr decay) and ``embed_dim`` (width of the patch
    embedding, the mask token's width), and implement ``forward_features`` and ``layer_id``.
    """

    patch_size: int
    stride: int
    num_blocks: int

    def _init_mask_token(self, embed_dim: int) -> None:
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)

    def apply_mask(self, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``tokens * (1 - w) + mask_token * w`` with w the mask (1: masked) of each patch; tokens are
        (B, ..., C) with the mask's shape (B, ...) in front, e.g. (B, N, C) with (B, h, w) flattened."""
        if mask is None:
            return tokens
        w = mask.reshape(tokens.shape[:-1]).unsqueeze(-1).to(tokens.dtype)
        return tokens * (1 - w) + self.mask_token.to(tokens.dtype) * w

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, dense: bool = False) -> torch.Tensor:
        """Pooled features (B, num_features), the mean of the dense map; ``dense=True`` returns the map itself
        (what SimMIM decodes; going through ``__call__`` lets module hooks see the pass)."""
        features = self.forward_features(x, mask)
        return features if dense else features.flatten(2).mean(dim=2)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def layer_id(self, name: str) -> int:
        """Depth of parameter ``name`` for layer-wise lr decay: 0 for the patch embedding (and the mask token,
        position tables), i for the i-th transformer block (1..num_blocks), num_blocks + 1 after the last."""
        raise NotImplementedError

    def check_mask(self, x: torch.Tensor, mask: torch.Tensor, grid: tuple[int, int]) -> None:
        if mask.shape != (x.shape[0], *grid):
            raise ValueError(f"mask of shape {tuple(mask.shape)} does not match the {grid[0]}x{grid[1]} patch grid "
                             f"of {x.shape[0]} images of {x.shape[-2]}x{x.shape[-1]} px (patch {self.patch_size})")
