"""Vision Transformers on torchvision's ``VisionTransformer`` modules, with SimMIM's mask token and MoCo v3's
fixed position table and frozen patch projection as options.

Parameter names are torchvision's (``conv_proj``, ``class_token``, ``encoder.*``; no ``heads``), plus
``mask_token``; ``vit_b_16`` at 3 channels loads torchvision's weights unchanged.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from selfsup.backbones.base import register_backbone
from selfsup.backbones.masked import MaskedImageBackbone
from selfsup.backbones.posembed import sincos_2d
from selfsup.errors import ConfigError


class ViT(MaskedImageBackbone):
    """ViT over ``image_size`` px images in ``patch_size`` patches; the dense map is the last layer's (normed)
    patch tokens without the cls token, (B, hidden_dim, image_size/patch, image_size/patch); ``forward`` is
    their mean. The position table is fixed to ``image_size``.

    MoCo v3's options: ``pos_embed: sincos`` makes the position table (``encoder.pos_embedding``) the fixed 2-D
    sine-cosine one (``posembed.sincos_2d``, row index first, zeros at the cls token) instead of a learned one;
    ``freeze_patch_embed`` keeps the patch projection (``conv_proj``) at a random Xavier-uniform initialisation
    (fans of the flattened patch: in_channels * patch_size**2 and hidden_dim; bias 0). Either is a parameter with
    ``requires_grad`` off: out of the optimizer, saved in checkpoints as before.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_layers: int = 12, num_heads: int = 12,
                 hidden_dim: int = 768, mlp_dim: int = 3072, in_channels: int = 3, dropout: float = 0.0,
                 attention_dropout: float = 0.0, pos_embed: Literal["learned", "sincos"] = "learned",
                 freeze_patch_embed: bool = False) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"ViT image_size {image_size} is not a multiple of patch_size {patch_size}")
        vit = VisionTransformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, dropout,
                                attention_dropout)
        self.conv_proj = vit.conv_proj
        if in_channels != 3:
            self.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, stride=patch_size)
            nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / (in_channels * patch_size**2)))
            nn.init.zeros_(self.conv_proj.bias)
        self.class_token, self.encoder = vit.class_token, vit.encoder
        if pos_embed == "sincos":
            grid = image_size // patch_size
            self.encoder.pos_embedding.data.copy_(sincos_2d(hidden_dim, grid, grid, first="row")[None])
            self.encoder.pos_embedding.requires_grad_(False)
        elif pos_embed != "learned":
            raise ConfigError(f"ViT pos_embed {pos_embed!r} is unknown; choose learned or sincos")
        if freeze_patch_embed:
            bound = math.sqrt(6 / (in_channels * patch_size**2 + hidden_dim))
            nn.init.uniform_(self.conv_proj.weight, -bound, bound)
            nn.init.zeros_(self.conv_proj.bias)
            self.conv_proj.requires_grad_(False)
        self._init_mask_token(hidden_dim)
        self.image_size, self.patch_size, self.stride = image_size, patch_size, patch_size
        self.num_blocks, self.num_features, self.embed_dim = num_layers, hidden_dim, hidden_dim

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens of the last layer as a (B, C, h, w) map; ``mask`` (B, h, w), 1 = masked, replaces those
        patch embeddings by the mask token before the cls token and the position table are added."""
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(f"this ViT takes {self.image_size}x{self.image_size} images, got {tuple(x.shape[-2:])}")
        patches = self.conv_proj(x)  # (B, C, h, w)
        b, c, h, w = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if mask is not None:
            self.check_mask(x, mask, (h, w))
            tokens = self.apply_mask(tokens, mask)
        tokens = torch.cat([self.class_token.expand(b, -1, -1), tokens], dim=1)
        tokens = self.encoder(tokens)  # adds the position table, runs the blocks, final LayerNorm
        return tokens[:, 1:].transpose(1, 2).reshape(b, c, h, w)

    def layer_id(self, name: str) -> int:
        if name.startswith("encoder.layers."):
            return int(name.split(".")[2].removeprefix("encoder_layer_")) + 1
        if name.startswith("encoder.ln."):
            return self.num_blocks + 1
        return 0  # conv_proj, class_token, mask_token, encoder.pos_embedding


@register_backbone("vit")
def vit(**kwargs) -> ViT:
    """vit: a ViT of any size (keyword arguments as ViT; default ViT-B/16 at 224 px)."""
    return ViT(**kwargs)


@register_backbone("vit_b_16")
def vit_b_16(image_size: int = 224, **kwargs) -> ViT:
    """vit_b_16: ViT-Base/16 (torchvision's architecture): 12 layers, 12 heads, width 768, MLP 3072."""
    return ViT(image_size, 16, 12, 12, 768, 3072, **kwargs)


@register_backbone("vit_tiny")
def vit_tiny(image_size: int = 28, patch_size: int = 4, num_layers: int = 4, num_heads: int = 4,
             hidden_dim: int = 64, mlp_dim: int = 256, **kwargs) -> ViT:
    """vit_tiny: a CPU-sized ViT for 28-32 px images (patch 4, 4 layers, width 64; not timm's ViT-Ti)."""
    return ViT(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, **kwargs)
