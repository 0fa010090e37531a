"""Vision Transformers on torchvision's ``VisionTransformer`` modules, with the options self-supervised methods
need: SimMIM's and iBOT's mask token, MAE's and I-JEPA's kept-token lists, position tables interpolated to any
multiple of the patch size (DINO's local crops), the class token or the patch mean as pooled feature, MoCo v3's
fixed position table and frozen patch projection, and DINOv2's LayerScale, drop path and register tokens.

Parameter names are torchvision's (``conv_proj``, ``class_token``, ``encoder.*``; no ``heads``), plus
``mask_token`` (and ``register_tokens``, ``encoder.layers.*.ls_1/ls_2`` when those options are on);
``vit_b_16`` at 3 channels loads torchvision's weights unchanged.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import EncoderBlock, VisionTransformer

from selfsup.backbones.base import register_backbone
from selfsup.backbones.masked import MaskedImageBackbone
from selfsup.backbones.posembed import sincos_2d
from selfsup.errors import ConfigError


class LayerScale(nn.Module):
    """A learned per-channel scale of a residual branch, initialised to ``init`` (DINOv2: 1e-5)."""

    def __init__(self, dim: int, init: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a residual branch for a random ``rate`` of the samples, scale the rest by
    1 / (1 - rate); the identity at evaluation or rate 0."""
    if rate == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - rate)
    return x * keep / (1 - rate)


def drop_path_rates(rate: float, num_layers: int, uniform: bool = False) -> list[float]:
    """Each block's drop-path rate: rising linearly from 0 at the first block to ``rate`` at the last (or
    ``rate`` everywhere with ``uniform``)."""
    return [rate if uniform or num_layers == 1 else rate * i / (num_layers - 1) for i in range(num_layers)]


class Block(EncoderBlock):
    """torchvision's pre-norm transformer block (same parameter names) with drop path and optional LayerScale on
    both residual branches."""

    def __init__(self, num_heads: int, hidden_dim: int, mlp_dim: int, dropout: float, attention_dropout: float,
                 drop_path: float = 0.0, layer_scale: float | None = None) -> None:
        super().__init__(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout)
        self.drop_path = drop_path
        self.ls_1 = LayerScale(hidden_dim, layer_scale) if layer_scale else nn.Identity()
        self.ls_2 = LayerScale(hidden_dim, layer_scale) if layer_scale else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.ln_1(x)
        y = self.dropout(self.self_attention(y, y, y, need_weights=False)[0])
        x = x + drop_path(self.ls_1(y), self.drop_path, self.training)
        return x + drop_path(self.ls_2(self.mlp(self.ln_2(x))), self.drop_path, self.training)


class ViT(MaskedImageBackbone):
    """ViT in ``patch_size`` patches whose position table is learned at ``image_size`` px and interpolated
    (bicubic) for any other multiple of the patch size. The dense map is the last layer's (normed) patch tokens,
    (B, hidden_dim, H/patch, W/patch); ``forward`` pools it (``pool: mean``) or returns the normed class token
    (``pool: cls``, DINO's feature).

    MoCo v3's options: ``pos_embed: sincos`` makes the position table (``encoder.pos_embedding``) the fixed 2-D
    sine-cosine one (``posembed.sincos_2d``, row index first, zeros at the cls token) instead of a learned one;
    ``freeze_patch_embed`` keeps the patch projection (``conv_proj``) at a random Xavier-uniform initialisation
    (fans of the flattened patch: in_channels * patch_size**2 and hidden_dim; bias 0). Either is a parameter with
    ``requires_grad`` off: out of the optimizer, saved in checkpoints as before.

    DINOv2's options: ``drop_path`` (the largest rate, reached at the last block; ``drop_path_uniform`` gives
    every block that rate), ``layer_scale`` (the initial value of each branch's scale, e.g. 1e-5; 0 = off) and
    ``num_registers`` learned tokens inserted after the class token once the position table is added, left out
    of the dense map.

    ``class_token: false`` builds it without the class token (I-JEPA's encoders): only the patch tokens (and any
    registers) run through the blocks, ``num_prefix`` counts the registers alone and ``pool`` must be ``mean``.
    """

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_layers: int = 12, num_heads: int = 12,
                 hidden_dim: int = 768, mlp_dim: int = 3072, in_channels: int = 3, dropout: float = 0.0,
                 attention_dropout: float = 0.0, pos_embed: Literal["learned", "sincos"] = "learned",
                 freeze_patch_embed: bool = False, pool: Literal["mean", "cls"] = "mean", drop_path: float = 0.0,
                 drop_path_uniform: bool = False, layer_scale: float = 0.0, num_registers: int = 0,
                 class_token: bool = True) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ConfigError(f"ViT image_size {image_size} is not a multiple of patch_size {patch_size}; "
                              "choose sizes where the patch divides the image")
        if pool not in ("mean", "cls"):
            raise ConfigError(f"ViT pool {pool!r} is unknown; choose mean (of the patch tokens) or cls")
        if pool == "cls" and not class_token:
            raise ConfigError("ViT pool cls needs the class token; set class_token: true or pool: mean")
        if not 0.0 <= drop_path < 1.0:
            raise ConfigError(f"ViT drop_path must be in [0, 1), got {drop_path}")
        vit = VisionTransformer(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, dropout,
                                attention_dropout)
        self.conv_proj = vit.conv_proj
        if in_channels != 3:
            self.conv_proj = nn.Conv2d(in_channels, hidden_dim, patch_size, stride=patch_size)
            nn.init.trunc_normal_(self.conv_proj.weight, std=math.sqrt(1 / (in_channels * patch_size**2)))
            nn.init.zeros_(self.conv_proj.bias)
        self.encoder = vit.encoder
        if class_token:
            self.class_token = vit.class_token
        rates = drop_path_rates(drop_path, num_layers, drop_path_uniform)
        self.encoder.layers = nn.Sequential(OrderedDict(
            (f"encoder_layer_{i}", Block(num_heads, hidden_dim, mlp_dim, dropout, attention_dropout, rate,
                                         layer_scale or None)) for i, rate in enumerate(rates)))
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
        if num_registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, num_registers, hidden_dim))
            nn.init.normal_(self.register_tokens, std=1e-6)
        self._init_mask_token(hidden_dim)
        self.image_size, self.patch_size, self.stride = image_size, patch_size, patch_size
        self.num_blocks, self.num_features, self.embed_dim = num_layers, hidden_dim, hidden_dim
        self.num_heads = num_heads
        self.pool, self.num_prefix = pool, int(class_token) + num_registers

    def set_drop_path(self, rate: float, uniform: bool = False) -> None:
        """Give the blocks drop-path rates as ``drop_path`` does at construction (fine-tuning a pretrained ViT)."""
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"ViT drop_path must be in [0, 1), got {rate}")
        for block, r in zip(self.encoder.layers, drop_path_rates(rate, self.num_blocks, uniform)):
            block.drop_path = r

    def position_table(self, h: int, w: int) -> torch.Tensor:
        """The (1, 1 + h*w, C) position table for an h x w patch grid: the stored one, or its patch part resized
        bicubically (the cls token's row unchanged)."""
        table = self.encoder.pos_embedding
        grid = self.image_size // self.patch_size
        if (h, w) == (grid, grid):
            return table
        patches = table[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches.float(), size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([table[:, :1], patches.to(table.dtype).flatten(2).transpose(1, 2)], dim=1)

    def tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None,
               keep: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens of the last layer after its norm, (B, num_prefix + N, C): the class token (if any), the
        register tokens, then the patch tokens in row-major order. ``mask`` (B, h, w), 1 = masked, replaces those patch
        embeddings by the mask token before the position table is added (SimMIM, iBOT); ``keep`` (B, K), indices
        into the row-major patch grid, runs the blocks over only those patches, in that order (MAE, I-JEPA)."""
        if x.shape[-1] % self.patch_size or x.shape[-2] % self.patch_size:
            raise ValueError(f"this ViT takes images whose sides are multiples of its patch size {self.patch_size}, "
                             f"got {tuple(x.shape[-2:])}")
        patches = self.conv_proj(x)  # (B, C, h, w)
        b, c, h, w = patches.shape
        tokens = patches.flatten(2).transpose(1, 2)  # (B, h*w, C)
        if mask is not None:
            self.check_mask(x, mask, (h, w))
            tokens = self.apply_mask(tokens, mask)
        table = self.position_table(h, w)
        tokens = tokens + table[:, 1:]
        if keep is not None:
            tokens = tokens.gather(1, keep.unsqueeze(-1).expand(-1, -1, c))
        prefix = [self.class_token.expand(b, -1, -1) + table[:, :1]] if hasattr(self, "class_token") else []
        if hasattr(self, "register_tokens"):
            prefix.append(self.register_tokens.expand(b, -1, -1))
        tokens = self.encoder.dropout(torch.cat([*prefix, tokens], dim=1))
        return self.encoder.ln(self.encoder.layers(tokens))

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens of the last layer as a (B, C, h, w) map; ``mask`` as in ``tokens``."""
        tokens = self.tokens(x, mask)[:, self.num_prefix:]
        h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        return tokens.transpose(1, 2).reshape(x.shape[0], -1, h, w)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, dense: bool = False) -> torch.Tensor:
        """Pooled features (B, num_features): the patch tokens' mean, or the class token with ``pool: cls``;
        ``dense=True`` returns the (B, C, h, w) map."""
        if dense or self.pool == "mean":
            return super().forward(x, mask, dense)
        return self.tokens(x, mask)[:, 0]

    def layer_id(self, name: str) -> int:
        if name.startswith("encoder.layers."):
            return int(name.split(".")[2].removeprefix("encoder_layer_")) + 1
        if name.startswith("encoder.ln."):
            return self.num_blocks + 1
        return 0  # conv_proj, class_token, register_tokens, mask_token, encoder.pos_embedding


@register_backbone("vit")
def vit(**kwargs) -> ViT:
    """vit: a ViT of any size (keyword arguments as ViT; default ViT-B/16 at 224 px)."""
    return ViT(**kwargs)


@register_backbone("vit_b_16")
def vit_b_16(image_size: int = 224, **kwargs) -> ViT:
    """vit_b_16: ViT-Base/16 (torchvision's architecture): 12 layers, 12 heads, width 768, MLP 3072."""
    return ViT(image_size, 16, 12, 12, 768, 3072, **kwargs)


@register_backbone("vit_s_16")
def vit_s_16(image_size: int = 224, **kwargs) -> ViT:
    """vit_s_16: ViT-Small/16 (DINO's): 12 layers, 6 heads, width 384, MLP 1536."""
    return ViT(image_size, 16, 12, 6, 384, 1536, **kwargs)


@register_backbone("vit_tiny")
def vit_tiny(image_size: int = 28, patch_size: int = 4, num_layers: int = 4, num_heads: int = 4,
             hidden_dim: int = 64, mlp_dim: int = 256, **kwargs) -> ViT:
    """vit_tiny: a CPU-sized ViT for 28-32 px images (patch 4, 4 layers, width 64; not timm's ViT-Ti)."""
    return ViT(image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim, **kwargs)
