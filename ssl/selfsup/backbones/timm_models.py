"""``timm:NAME[,key=value...]``: any of timm's image models as a backbone, built without weights.

The dense map is ``forward_features`` as (B, C, h, w): a ConvNet's last stage as it is, a Swin's NHWC map
permuted, a ViT's patch tokens (class and register tokens dropped) reshaped to the patch grid. Models that take
``dynamic_img_size`` (ViTs, Swins) get it, so they run at the data's image size; ``in_chans`` follows the data.
ViTs and Swins can be masked (SimMIM): a hook on their patch embedding replaces masked patches by the mask token;
ViTs also give their tokens, all or a kept subset, as the built-in ViT does (DINO, iBOT, MAE, I-JEPA).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

from selfsup.backbones.base import register_backbone
from selfsup.backbones.library import LibraryBackbone, call, image_size_check, requested, unknown_model
from selfsup.backbones.masked import MaskedImageBackbone
from selfsup.errors import ConfigError

DYNAMIC = {"dynamic_img_size": True}  # added for the models that accept it (ViTs, Swins)


def create(model: str, in_channels: int, args: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    """timm's ``model`` without classifier or weights, and the arguments of ``timm.create_model`` that built it."""
    import timm

    if not timm.is_model(model):
        raise unknown_model("timm", model, timm.list_models())
    chosen = {"num_classes": 0, "in_chans": in_channels, **args}
    try:
        return timm.create_model(model, pretrained=False, **{**DYNAMIC, **chosen}), {**DYNAMIC, **chosen}
    except TypeError as err:
        if "dynamic_img_size" not in str(err):
            raise
    return timm.create_model(model, pretrained=False, **chosen), chosen


class TimmBackbone(LibraryBackbone):
    """A timm model; ``forward_features`` is its ``forward_features`` as a (B, C, h, w) map."""

    library = "timm"

    def __init__(self, name: str, model: torch.nn.Module, arguments: dict[str, Any]) -> None:
        super().__init__()
        self.model, self.model_name, self.arguments = model, name, arguments
        self.num_features = model.num_features
        size = getattr(getattr(model, "patch_embed", None), "patch_size", None)  # ViTs' and Swins' (int or pair)
        self.patch_size = size if isinstance(size, int) or size is None else size[0]
        self.channels_last_output = getattr(self.model, "output_fmt", "NCHW") == "NHWC"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        self.check_size(x)
        with image_size_check(f"timm:{self.model_name}", x):
            features = self.model.forward_features(x)
        if features.dim() == 4:
            return features.permute(0, 3, 1, 2) if self.channels_last_output else features
        if features.dim() == 3 and self.patch_size:
            h, w = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
            tokens = features[:, getattr(self.model, "num_prefix_tokens", 0):]
            if tokens.shape[1] == h * w:
                return tokens.transpose(1, 2).reshape(len(x), -1, h, w)
        raise ConfigError(f"timm:{self.model_name} returns features of shape {tuple(features.shape)}, not a map "
                          "selfsup can pool (B, C, h, w) or patch tokens (B, N, C); choose a ConvNet, ViT or Swin")

    def check_size(self, x: torch.Tensor) -> None:
        """Refuse images whose sides are not multiples of a ViT's patch size (a Swin pads its own)."""
        p = self.patch_size
        if p and not self.channels_last_output and (x.shape[-1] % p or x.shape[-2] % p):
            raise ConfigError(f"timm:{self.model_name} cuts images into {p}x{p} patches, so it cannot take "
                              f"{x.shape[-2]}x{x.shape[-1]} px images; resize the data to a multiple of {p} "
                              f"(data.image_size and the views' size) or give the model another patch_size")

    def loading_lines(self, path: str) -> list[str]:
        return [f"model = {call('timm.create_model', self.arguments, self.model_name)}",
                f"model.load_state_dict(torch.load({path!r}, weights_only=True), strict=True)"]


class MaskedTimmBackbone(TimmBackbone, MaskedImageBackbone):
    """A timm ViT or Swin that SimMIM can mask: a forward hook on ``patch_embed`` mixes the mask token into the
    masked patches' embeddings, before position embeddings and blocks (as the built-in ViT and Swin do)."""

    def __init__(self, name: str, model: torch.nn.Module, arguments: dict[str, Any]) -> None:
        super().__init__(name, model, arguments)
        self.embed_dim = self.model.embed_dim
        self._init_mask_token(self.embed_dim)
        self.stages = [len(layer.blocks) for layer in getattr(self.model, "layers", [])]  # Swin's
        self.num_blocks = sum(self.stages) or len(self.model.blocks)
        self.stride = self.patch_size * 2 ** max(len(self.stages) - 1, 0)
        self.image_size = self.model.patch_embed.img_size[0]  # what the position table was made for
        self._mask: torch.Tensor | None = None
        self.model.patch_embed.register_forward_hook(self._mask_patches)

    def _mask_patches(self, module: torch.nn.Module, inputs: Any, tokens: torch.Tensor) -> torch.Tensor:
        return self.apply_mask(tokens, self._mask)

    @contextmanager
    def masking(self, x: torch.Tensor, mask: torch.Tensor | None) -> Iterator[None]:
        """Within it, the model's passes over ``x`` see ``mask`` (B, h, w), 1 = masked (None: nothing masked)."""
        if mask is not None:
            self.check_mask(x, mask, (x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size))
        self._mask = mask
        try:
            yield
        finally:
            self._mask = None

    def forward_features(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        with self.masking(x, mask):
            return super().forward_features(x)

    def layer_id(self, name: str) -> int:
        parts = name.removeprefix("model.").split(".")
        if parts[0] == "blocks":  # ViT
            return int(parts[1]) + 1
        if parts[0] == "layers":  # Swin: a stage's downsampling belongs with the previous stage's last block
            stage = int(parts[1])
            before = sum(self.stages[:stage])
            return before + int(parts[3]) + 1 if parts[2] == "blocks" else before
        if parts[0] in ("norm", "fc_norm", "head"):
            return self.num_blocks + 1
        return 0  # patch embedding, class/register tokens, position table, mask token


class TimmViTBackbone(MaskedTimmBackbone):
    """A timm ViT (``VisionTransformer``: ViT, DeiT, DINOv2, with registers...) with the built-in ViT's token
    interface, what DINO, iBOT, MAE and I-JEPA call: ``tokens(x, mask, keep)``, ``num_prefix`` (class and register
    tokens), ``num_heads``, ``pool`` (``mean``: the pooled feature is the patch tokens' mean). A pre-hook on
    ``patch_drop`` (right after the position table is added) keeps only the ``keep`` patches; timm resamples the
    position table for other image sizes (``dynamic_img_size``)."""

    pool = "mean"

    def __init__(self, name: str, model: torch.nn.Module, arguments: dict[str, Any]) -> None:
        super().__init__(name, model, arguments)
        self.num_prefix = self.model.num_prefix_tokens
        self.num_heads = self.model.blocks[0].attn.num_heads
        self._keep: torch.Tensor | None = None
        self.model.patch_drop.register_forward_pre_hook(self._keep_patches)

    def _keep_patches(self, module: torch.nn.Module, inputs: tuple[torch.Tensor, ...]) -> Any:
        if self._keep is None:
            return None
        tokens = inputs[0]
        patches = tokens[:, self.num_prefix:].gather(1, self._keep.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
        return (torch.cat([tokens[:, :self.num_prefix], patches], dim=1), *inputs[1:])

    def tokens(self, x: torch.Tensor, mask: torch.Tensor | None = None,
               keep: torch.Tensor | None = None) -> torch.Tensor:
        """All tokens of the last layer after its norm, (B, num_prefix + N, C), as the built-in ViT's ``tokens``:
        ``mask`` (B, h, w), 1 = masked, replaces those patch embeddings by the mask token before the position
        table; ``keep`` (B, K), indices into the row-major patch grid, runs the blocks over those patches only."""
        self.check_size(x)
        self._keep = keep
        try:
            with self.masking(x, mask):
                return self.model.forward_features(x)
        finally:
            self._keep = None


def backbone_class(model: torch.nn.Module) -> type[TimmBackbone]:
    """What ``model`` can do as a backbone: a ViT gives tokens, a ViT or Swin can be masked (SimMIM), the rest
    give a feature map."""
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return TimmViTBackbone
    return MaskedTimmBackbone if isinstance(model, SwinTransformer) else TimmBackbone


@register_backbone("timm:")
def timm_backbone(name: str, in_channels: int = 3, **args: Any) -> TimmBackbone:
    """timm:NAME[,key=value...]: any timm image model (``selfsup backbones --search`` lists them)."""
    model, args = requested(name, args)
    module, arguments = create(model, in_channels, args)
    return backbone_class(module)(model, module, arguments)
