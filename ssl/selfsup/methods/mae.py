"""MAE (He et al. 2022), as in docs/methods/mae.md."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from selfsup.data.masking import random_keep, removed_mask
from selfsup.data.views import IMAGENET_MEAN, IMAGENET_STD, CropViews, ViewRecipe
from selfsup.errors import ConfigError
from selfsup.heads import MAEDecoder
from selfsup.losses.mae import mae_loss, patchify, unpatchify
from selfsup.methods.base import SSLMethod, StepOutput
from selfsup.optim import LRScaling, OptimizerName


def decoder_memory(batch: int, tokens: int, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0) -> int:
    """Bytes a decoder of ``depth`` blocks of width ``dim`` needs at ``batch`` images of ``tokens`` tokens in
    fp32: its weights with their gradients and AdamW's two moments (4 copies), and the activations a block keeps
    for backward (about 8 token-width tensors, the MLP's two hidden ones and the attention weights)."""
    per_block_params = 4 * dim * dim + 2 * mlp_ratio * dim * dim
    per_block_acts = batch * tokens * (8 * dim + 2 * mlp_ratio * dim + heads * tokens)
    return int(4 * depth * (4 * per_block_params + per_block_acts))


def free_memory() -> int | None:
    """Bytes free on the GPU training will use (CUDA), else the host's available memory; None if unknown."""
    if torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


class MAE(SSLMethod):
    """Masked autoencoder: each image keeps a random ``1 - mask_ratio`` of its patches (exactly as many per image,
    ``random_keep``), the ViT encodes only those (``tokens(x, keep=...)``), and a light decoder (``MAEDecoder``:
    its own width, depth and heads, one shared mask token in the removed slots, fixed 2-D sine-cosine positions)
    predicts every patch's pixels. The loss is the mean squared error on the removed patches only, against each
    patch normalised by its own mean and variance (``norm_pix_loss``; ``selfsup.losses.mae_loss``).

    The optimizer defaults are MAE's: AdamW (0.9, 0.95), weight decay 0.05 (not on norms, biases, tokens,
    position tables), lr = ``lr`` x global batch / 256 (``lr`` is the base lr, 1.5e-4), warmup then cosine. The
    online probe sees the mean of the visible tokens.

    Args:
        mask_ratio: fraction of the patches removed (0.75).
        decoder_dim, decoder_depth, decoder_heads: the decoder's width, blocks and attention heads (512, 8, 16).
        norm_pix_loss: normalise each target patch (True, the released models).
        **kwargs: the shared options of ``SSLMethod`` (backbone, probe, ...).
    """

    view_kinds = ("image",)

    def __init__(self, mask_ratio: float = 0.75, decoder_dim: int = 512, decoder_depth: int = 8,
                 decoder_heads: int = 16, norm_pix_loss: bool = True, optimizer: OptimizerName = "adamw",
                 lr: float = 1.5e-4, lr_scaling: LRScaling = "linear", weight_decay: float = 0.05,
                 betas: tuple[float, float] = (0.9, 0.95), warmup_epochs: float = 40.0, **kwargs: Any) -> None:
        if not 0 < mask_ratio < 1:
            raise ConfigError(f"MAE's mask_ratio must be within (0, 1), got {mask_ratio}; MAE's is 0.75")
        if decoder_dim % decoder_heads or decoder_dim % 4:
            raise ConfigError(f"MAE's decoder_dim {decoder_dim} must be a multiple of decoder_heads {decoder_heads} "
                              "and of 4 (its sine-cosine positions); e.g. 512 with 16 heads")
        super().__init__(optimizer=optimizer, lr=lr, lr_scaling=lr_scaling, weight_decay=weight_decay, betas=betas,
                         warmup_epochs=warmup_epochs, **kwargs)
        if not callable(getattr(self.backbone, "tokens", None)) or self.backbone.num_prefix != 1:
            raise ConfigError(f"MAE encodes only the visible patches after one class token, which needs a ViT with a "
                              f"class token and no registers; {self.hparams.backbone!r} is not one: use vit, "
                              "vit_tiny, vit_s_16, vit_b_16 or a timm ViT (timm:vit_small_patch16_224)")
        grid = self.backbone.image_size // self.backbone.patch_size
        self.check_decoder_fits(grid * grid + 1)
        out_dim = self.backbone.patch_size**2 * self.hparams.in_channels
        self.decoder = MAEDecoder(self.backbone.num_features, (grid, grid), out_dim, decoder_dim, decoder_depth,
                                  decoder_heads)

    def check_decoder_fits(self, tokens: int) -> None:
        """ConfigError naming what to lower when the decoder at this batch needs more memory than is free."""
        hp = self.hparams
        need, free = decoder_memory(hp.batch_size, tokens, hp.decoder_dim, hp.decoder_depth, hp.decoder_heads), \
            free_memory()
        if free is not None and need > free:
            raise ConfigError(f"MAE's decoder (width {hp.decoder_dim}, depth {hp.decoder_depth}) needs about "
                              f"{need / 2**30:.1f} GiB at batch {hp.batch_size} of {tokens} tokens, more than the "
                              f"{free / 2**30:.1f} GiB free; lower model.decoder_dim, model.decoder_depth or "
                              "data.batch_size")

    def default_views(self, size: int) -> ViewRecipe:
        """MAE's augmentation: a random resized crop (area 0.2-1) and a flip, ImageNet's normalisation."""
        return CropViews(size, scale=(0.2, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        views = getattr(self.trainer.datamodule, "views", None) if self._trainer else None
        if stage == "fit" and views is not None and views.size != self.backbone.image_size:
            raise ConfigError(f"data.views.size {views.size} is not the backbone's image_size "
                              f"{self.backbone.image_size}; set model.backbone_args.image_size: {views.size} (a "
                              f"multiple of the patch size {self.backbone.patch_size}; a timm ViT's img_size) or the "
                              "views' size to it")

    def forward_masked(self, images: torch.Tensor, generator: torch.Generator | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(encoder tokens (B, 1 + K, C), predicted patches (B, L, p*p*C), mask (B, L), 1 = removed) of a fresh
        random masking of ``images``."""
        patch = self.backbone.patch_size
        num_patches = (images.shape[-2] // patch) * (images.shape[-1] // patch)
        keep, restore = random_keep(len(images), num_patches, self.hparams.mask_ratio, images.device, generator)
        tokens = self.backbone.tokens(images, keep=keep)
        return tokens, self.decoder(tokens, restore), removed_mask(restore, keep.shape[1])

    def reconstructor(self, views: ViewRecipe | None = None) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """``f(images, generator) -> (mask (B, h, w), reconstruction (B, C, H, W))`` for the picture: predicted
        patches where removed (with ``norm_pix_loss``, each shown at its true patch's mean and variance, which the
        prediction does not carry), the input elsewhere."""

        def reconstruct(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            p = self.backbone.patch_size
            _, pred, mask = self.forward_masked(images, generator)
            if self.hparams.norm_pix_loss:
                target = patchify(images, p)
                scale = (target.var(dim=-1, keepdim=True) + 1e-6).sqrt()
                pred = pred * scale + target.mean(dim=-1, keepdim=True)
            h, w = images.shape[-2] // p, images.shape[-1] // p
            return mask.view(-1, h, w), unpatchify(pred, p, images.shape[1], *images.shape[-2:])

        return reconstruct

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        images = batch["image"]
        tokens, pred, mask = self.forward_masked(images)
        loss = mae_loss(pred, patchify(images, self.backbone.patch_size), mask, self.hparams.norm_pix_loss)
        return StepOutput(loss=loss, features=tokens[:, self.backbone.num_prefix:].mean(dim=1))
