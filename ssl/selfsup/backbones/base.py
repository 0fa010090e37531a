"""Backbone base class and the name -> constructor registry."""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn

from selfsup.errors import ConfigError


class Backbone(nn.Module):
    """A feature extractor with a dense map (``forward_features``) and a pooled vector (``forward``)."""

    num_features: int
    media: ClassVar[str] = "image"  # what it reads: "image" (B, C, H, W) or "video" (B, C, T, H, W)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The dense feature map before pooling: (B, C, h, w) for images, (B, C, t, h, w) for video."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (B, num_features): the mean of the dense map over all space (and time)."""
        return self.forward_features(x).flatten(2).mean(dim=2)


def to_channels_last(module: nn.Module) -> nn.Module:
    """``module`` with its convolution weights in channels-last memory format: NHWC for 2-D convolutions, NDHWC for
    3-D ones; the activations after the first convolution then stay in that format."""
    for layer in module.modules():
        if isinstance(layer, nn.Conv3d):
            layer.to(memory_format=torch.channels_last_3d)
        elif isinstance(layer, nn.Conv2d):
            layer.to(memory_format=torch.channels_last)
    return module


def pooled_features(backbone: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled features (B, D) of images (B, C, H, W) or clips (B, C, T, H, W); for several clips per video
    (B, K, C, T, H, W) the mean of the K clips' features (video evaluation's test-time averaging)."""
    if x.dim() == 6:
        return backbone(x.flatten(0, 1)).unflatten(0, x.shape[:2]).mean(dim=1)
    return backbone(x)


_REGISTRY: dict[str, Callable[..., Backbone]] = {}


def register_backbone(name: str) -> Callable[[Callable[..., Backbone]], Callable[..., Backbone]]:
    """Decorator: make a backbone constructor available to ``build_backbone(name)``."""

    def add(factory: Callable[..., Backbone]) -> Callable[..., Backbone]:
        if name in _REGISTRY:
            raise ValueError(f"backbone {name!r} is registered twice")
        _REGISTRY[name] = factory
        return factory

    return add


def sized_by_image(name: str) -> bool:
    """Whether the registered backbone ``name`` is built for one image size (its ``image_size`` argument: a ViT's
    position table, the raw-pixel baseline)."""
    import inspect

    factory = _REGISTRY.get(name)
    return factory is not None and "image_size" in inspect.signature(factory).parameters


def available_backbones() -> list[str]:
    """Names accepted by ``build_backbone`` (a family of a library's models is listed as ``LIBRARY:``)."""
    return sorted(_REGISTRY)


def build_backbone(name: str, **kwargs) -> Backbone:
    """Build a registered backbone by name, or a library's model (``timm:NAME``, ``torchvision:NAME``, arguments
    after commas); unknown names and arguments raise a ConfigError."""
    family = name.partition(":")[0] + ":" if ":" in name else name
    if family not in _REGISTRY:
        near = difflib.get_close_matches(name, available_backbones(), n=3, cutoff=0.6)
        hint = f" (nearest: {', '.join(near)})" if near else ""
        raise ConfigError(f"unknown backbone {name!r}{hint}; choose one of: {', '.join(available_backbones())} "
                          "(timm:NAME and torchvision:NAME name a library's model; `selfsup backbones` lists them)")
    if family != name:
        try:
            return _REGISTRY[family](name, **kwargs)
        except TypeError as err:
            raise ConfigError(f"backbone {name!r}: {err}; fix model.backbone_args (or the name's key=value)") from err
    for key, value in kwargs.items():  # sizes (width, depth, heads, patch size, ...) are the integer arguments
        values = value if isinstance(value, (list, tuple)) else [value]
        if any(isinstance(v, int) and not isinstance(v, bool) and v < 1 for v in values):
            raise ConfigError(f"backbone {name!r}: {key} must be at least 1, got {value}; fix model.backbone_args")
    try:
        return _REGISTRY[name](**kwargs)
    except TypeError as err:
        raise ConfigError(_refused_argument(name, kwargs, err)) from err


def _refused_argument(name: str, kwargs: dict, err: TypeError) -> str:
    """One line naming the argument backbone ``name`` refused, the nearest it takes and all it takes."""
    from selfsup.signatures import nearest, parameters

    found = re.search(r"(\w+)\.__init__\(\) got an unexpected keyword argument '(\w+)'", str(err))
    known = parameters(found.group(1)) if found else None
    if not known:
        return f"backbone {name!r} does not accept these arguments {sorted(kwargs)}: {err}"
    arg = found.group(2)
    return (f"backbone {name!r} takes no {arg!r}{nearest(arg, known)}; it takes {', '.join(sorted(known))}: fix "
            "model.backbone_args")
