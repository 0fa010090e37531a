"""SimMIM (Xie et al. 2022), as in docs/methods/simmim.md."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from selfsup.backbones import MaskedImageBackbone
from selfsup.data.masking import MaskedViews
from selfsup.data.views import ViewRecipe
from selfsup.errors import ConfigError
from selfsup.heads import PixelShuffleDecoder
from selfsup.losses import masked_l1_loss
from selfsup.methods.base import SSLMethod, StepOutput


class SimMIM(SSLMethod):
    """Masked image modeling: a random mask (whole mask patches, ``MaskedViews``) replaces patch embeddings by a
    learned token inside the backbone (ViT or Swin), a one-layer decoder (1x1 conv + PixelShuffle of the
    encoder's stride) predicts the pixels, and the loss is the L1 error on the masked pixels only.

    Optimizer as the official code with ``optimizer: adamw``, ``lr_scaling: linear512``, ``weight_decay: 0.05``
    (no decay for norms, biases, the mask token and position tables) and ``trainer.gradient_clip_val: 5.0``.
    The online probe sees the mean of the masked images' feature map.

    Args:
        mask_patch_size: side of a mask patch of the default views (``data.views`` unset); None: 32 where it
            divides the image size, else the model's patch size.
        mask_ratio: fraction of mask patches masked by the default views.
        **kwargs: the shared options of ``SSLMethod`` (backbone, optimizer, schedule, probe).
    """

    view_kinds = ("masked",)

    def __init__(self, mask_patch_size: int | None = None, mask_ratio: float = 0.6, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not isinstance(self.backbone, MaskedImageBackbone):
            raise ConfigError(f"SimMIM masks patch embeddings, which {self.hparams.backbone!r} has none of; use a "
                              "ViT or Swin: vit, vit_tiny, vit_b_16, swin, swin_tiny, swin_b, or a timm ViT/Swin "
                              "(timm:vit_small_patch16_224, timm:swin_tiny_patch4_window7_224, ...)")
        self.decoder = PixelShuffleDecoder(self.backbone.num_features, self.backbone.stride, self.hparams.in_channels)
        self.mask_patch_size, self.mask_ratio = mask_patch_size, mask_ratio

    def default_views(self, size: int) -> ViewRecipe:
        patch = self.backbone.patch_size
        mask_patch = self.mask_patch_size or (32 if size % 32 == 0 and 32 % patch == 0 else patch)
        return MaskedViews(size, mask_patch, patch, self.mask_ratio)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        views = getattr(self.trainer.datamodule, "views", None) if self._trainer else None
        if stage == "fit" and isinstance(views, MaskedViews):
            if views.masks.model_patch_size != self.backbone.patch_size:
                patch = self.backbone.patch_size
                raise ConfigError(f"data.views.model_patch_size {views.masks.model_patch_size} is not the backbone's "
                                  f"patch size {patch}; set data.views.init_args.model_patch_size: {patch}")
            fixed = getattr(self.backbone, "image_size", None)  # a ViT's position table fixes its input size
            if fixed is not None and views.size != fixed:
                raise ConfigError(f"data.views.size {views.size} is not the backbone's image_size {fixed}; set "
                                  f"model.backbone_args.image_size: {views.size} (or the views' size to {fixed})")
            if views.size % self.backbone.stride:
                raise ConfigError(f"data.views.size {views.size} is not a multiple of the backbone's stride "
                                  f"{self.backbone.stride}; choose an image size that is")

    def reconstructor(self, views: ViewRecipe | None) -> Callable[..., tuple[torch.Tensor, torch.Tensor]]:
        """``f(images, generator) -> (mask, pixels predicted from the masked images (B, C, H, W))`` with masks from
        ``views``' mask generator (the run's MaskedViews: their geometry is the data's, not the model's)."""
        if not isinstance(views, MaskedViews):
            raise ConfigError(f"reconstructions need the SimMIM run's data.views (MaskedViews), but they are "
                              f"{type(views).__name__}; give the SimMIM fit config with -c")

        def reconstruct(images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
            mask = views.masks.batch(len(images), generator).to(images.device)
            return mask, self.decoder(self.backbone(images, mask=mask, dense=True))

        return reconstruct

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        images, mask = batch["images"], batch["mask"]
        z = self.backbone(images, mask=mask, dense=True)
        loss = masked_l1_loss(images, self.decoder(z), mask, self.backbone.patch_size)
        return StepOutput(loss=loss, features=z.flatten(2).mean(dim=2))
