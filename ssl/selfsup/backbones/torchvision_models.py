"""``torchvision:NAME[,key=value...]``: torchvision's classification models as backbones, built without weights.

The classifier is removed; the dense map is the last feature map before pooling: ``features`` (ConvNeXt,
EfficientNet, MobileNet, VGG, DenseNet, ...), the last stage of a ResNet or RegNet, a Swin's normed map, a ViT's
patch tokens on the grid. For another channel count the first convolution is rebuilt for the data's channels; a
ViT's ``image_size`` is an argument (``torchvision:vit_b_16,image_size=32``).
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import RegNet, ResNet, SwinTransformer, VisionTransformer

from selfsup.backbones.base import register_backbone
from selfsup.backbones.library import LibraryBackbone, call, image_size_check, requested, unknown_model
from selfsup.errors import ConfigError

HEADS = ("fc", "classifier", "heads", "head")  # a classification model's classifier, whichever it has


def classification_models() -> list[str]:
    """torchvision's image classification models (not detection, segmentation or video)."""
    return torchvision.models.list_models(module=torchvision.models)


def first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    """The name and module of the model's first convolution (the one that reads the image)."""
    return next((name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d))


def width(module: nn.Module) -> int:
    """Channels a ``features`` stack ends with: the width of its last convolution, norm or linear layer."""
    for layer in reversed(list(module.modules())):
        for attribute in ("out_channels", "num_features", "out_features"):
            if isinstance(getattr(layer, attribute, None), int):
                return getattr(layer, attribute)
    raise ValueError("no layer with a width")


class TorchvisionBackbone(LibraryBackbone):
    """A torchvision classification model without its classifier; ``forward_features`` is its last feature map."""

    library = "torchvision"

    def __init__(self, name: str, in_channels: int = 3, **args: Any) -> None:
        super().__init__()
        self.model_name, self.arguments, self.in_channels = name, args, in_channels
        try:
            self.model = model = torchvision.models.get_model(name, weights=None, **args)
        except (AssertionError, ValueError) as err:  # e.g. a ViT image_size that is not a multiple of its patch
            raise ConfigError(f"torchvision:{name} refuses {args}: {err}; fix model.backbone_args") from err
        if isinstance(model, (ResNet, RegNet)):
            self.num_features = model.fc.in_features
        elif isinstance(model, VisionTransformer):
            self.num_features = model.hidden_dim
        elif isinstance(model, SwinTransformer):
            self.num_features = model.norm.normalized_shape[0]
        elif isinstance(getattr(model, "features", None), nn.Module):
            self.num_features = width(model.features)
        else:
            raise ConfigError(f"torchvision:{name} has no feature map selfsup can pool; choose a ResNet, RegNet, "
                              "ConvNeXt, EfficientNet, MobileNet, VGG, DenseNet, ViT or Swin, or a timm model")
        for head in HEADS:
            if hasattr(model, head):
                setattr(model, head, nn.Identity())
        if in_channels != 3:
            path, conv = first_conv(model)
            parent, _, child = path.rpartition(".")
            setattr(model.get_submodule(parent), child, self._conv_for(conv))

    def _conv_for(self, conv: nn.Conv2d) -> nn.Conv2d:
        return nn.Conv2d(self.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                         conv.dilation, conv.groups, conv.bias is not None)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        with image_size_check(f"torchvision:{self.model_name}", x):
            return self._features(x)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if isinstance(m, ResNet):
            x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
            return m.layer4(m.layer3(m.layer2(m.layer1(x))))
        if isinstance(m, RegNet):
            return m.trunk_output(m.stem(x))
        if isinstance(m, VisionTransformer):
            return self._vit_features(x)
        if isinstance(m, SwinTransformer):
            return m.norm(m.features(x)).permute(0, 3, 1, 2)
        return m.features(x)

    def _vit_features(self, x: torch.Tensor) -> torch.Tensor:
        m = self.model
        if x.shape[-2:] != (m.image_size, m.image_size):
            raise ConfigError(f"torchvision:{self.model_name} takes {m.image_size}x{m.image_size} px images, got "
                              f"{x.shape[-2]}x{x.shape[-1]}; name it torchvision:{self.model_name},image_size="
                              f"{x.shape[-1]} (a multiple of its patch size {m.patch_size})")
        tokens = m._process_input(x)
        tokens = m.encoder(torch.cat([m.class_token.expand(len(x), -1, -1), tokens], dim=1))[:, 1:]
        side = m.image_size // m.patch_size
        return tokens.transpose(1, 2).reshape(len(x), -1, side, side)

    def loading_lines(self, path: str) -> list[str]:
        lines = [f"model = {call(f'torchvision.models.{self.model_name}', self.arguments)}"]
        if self.in_channels != 3:
            name, conv = first_conv(self.model)
            target = "model" + "".join(f"[{p}]" if p.isdigit() else f".{p}" for p in name.split("."))
            lines.append(f"{target} = torch.nn.{conv!r}")
        lines.append(f"model.load_state_dict(torch.load({path!r}, weights_only=True), strict=False)"
                     "  # all but the classifier")
        return lines


@register_backbone("torchvision:")
def torchvision_backbone(name: str, in_channels: int = 3, **args: Any) -> TorchvisionBackbone:
    """torchvision:NAME[,key=value...]: a torchvision classification model (``selfsup backbones`` lists them)."""
    model, args = requested(name, args)
    if model not in classification_models():
        raise unknown_model("torchvision", model, classification_models())
    return TorchvisionBackbone(model, in_channels, **args)
