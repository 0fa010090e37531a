"""The shared backbone API and its registry.

Every backbone is an ``nn.Module`` with ``num_features``, ``forward(x) -> (B, num_features)`` (pooled) and
``forward_features(x) -> (B, C, h, w)`` (or ``(B, C, t, h, w)`` for video), the dense map before pooling.
"""

from selfsup.backbones import (  # noqa: F401  (register them all)
    frames,
    pixels,
    resnet,
    swin,
    timm_models,
    torchvision_models,
    video,
    vit,
)
from selfsup.backbones.base import (
    Backbone,
    available_backbones,
    build_backbone,
    pooled_features,
    register_backbone,
    to_channels_last,
)
from selfsup.backbones.masked import MaskedImageBackbone

__all__ = ["Backbone", "MaskedImageBackbone", "available_backbones", "build_backbone", "pooled_features",
           "register_backbone", "to_channels_last"]
