"""Swin Transformers on torchvision's ``SwinTransformer`` modules, with SimMIM's mask token.

Parameter names are torchvision's (``features.*``, ``norm``; no ``head``), plus ``mask_token``; ``swin_b`` at 3
channels and window 7 loads torchvision's weights unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models.swin_transformer import SwinTransformer

from selfsup.backbones.base import register_backbone
from selfsup.backbones.masked import MaskedImageBackbone


class Swin(MaskedImageBackbone):
    """Swin over images whose side is a multiple of ``stride`` = patch x 2^(stages - 1); the dense map is the
    last stage's normed tokens (B, C, H/stride, W/stride), ``forward`` their mean. ``window`` is the attention
    window side (7 for 224 px, 6 for SimMIM's 192 px).
    """

    def __init__(self, patch_size: int = 4, embed_dim: int = 128, depths: Sequence[int] = (2, 2, 18, 2),
                 num_heads: Sequence[int] = (4, 8, 16, 32), window: int = 7, mlp_ratio: float = 4.0,
                 stochastic_depth_prob: float = 0.0, in_channels: int = 3) -> None:
        super().__init__()
        swin = SwinTransformer([patch_size, patch_size], embed_dim, list(depths), list(num_heads), [window, window],
                               mlp_ratio, stochastic_depth_prob=stochastic_depth_prob)
        if in_channels != 3:  # the stem conv of features[0] (conv, permute, norm) for the data's channels
            old = swin.features[0][0]
            swin.features[0][0] = nn.Conv2d(in_channels, embed_dim, old.kernel_size, stride=old.stride)
        self.features, self.norm = swin.features, swin.norm
        self._init_mask_token(embed_dim)
        self.depths = list(depths)
        self.patch_size, self.stride = patch_size, patch_size * 2 ** (len(depths) - 1)
        self.num_blocks, self.embed_dim = sum(depths), embed_dim
        self.num_features = embed_dim * 2 ** (len(depths) - 1)

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The last stage's tokens as a (B, C, h, w) map; ``mask`` (B, H/patch, W/patch), 1 = masked, replaces
        those patch embeddings (after the embedding's LayerNorm) by the mask token."""
        if x.shape[-1] % self.stride or x.shape[-2] % self.stride:
            raise ValueError(f"this Swin needs image sides that are multiples of {self.stride}, got "
                             f"{tuple(x.shape[-2:])}")
        tokens = self.features[0](x)  # (B, H/p, W/p, C)
        if mask is not None:
            self.check_mask(x, mask, tuple(tokens.shape[1:3]))
            tokens = self.apply_mask(tokens, mask)
        tokens = self.norm(self.features[1:](tokens))
        return tokens.permute(0, 3, 1, 2)

    def layer_id(self, name: str) -> int:
        parts = name.split(".")
        if parts[0] != "features":
            return 0 if parts[0] == "mask_token" else self.num_blocks + 1  # final norm
        index = int(parts[1])  # features: [embed, stage 0, merge 0, stage 1, merge 1, ..., last stage]
        if index == 0:
            return 0
        stage, is_merge = (index - 1) // 2, (index - 1) % 2 == 1
        before = sum(self.depths[:stage])
        if is_merge:  # patch merging after a stage belongs with that stage's last block
            return before + self.depths[stage]
        return before + int(parts[2]) + 1


@register_backbone("swin")
def swin(**kwargs) -> Swin:
    """swin: a Swin Transformer of any size (keyword arguments as Swin; default Swin-B, window 7)."""
    return Swin(**kwargs)


@register_backbone("swin_b")
def swin_b(window: int = 7, **kwargs) -> Swin:
    """swin_b: Swin-Base (torchvision's architecture): patch 4, width 128, depths 2-2-18-2; SimMIM: window 6."""
    return Swin(4, 128, (2, 2, 18, 2), (4, 8, 16, 32), window, **kwargs)


@register_backbone("swin_tiny")
def swin_tiny(patch_size: int = 2, embed_dim: int = 32, depths: Sequence[int] = (2, 2, 2),
              num_heads: Sequence[int] = (2, 4, 8), window: int = 4, **kwargs) -> Swin:
    """swin_tiny: a CPU-sized Swin for 32 px images (patch 2, width 32, 3 stages: 16 -> 8 -> 4 px grids, stride 8;
    not Swin-T)."""
    return Swin(patch_size, embed_dim, depths, num_heads, window, **kwargs)
