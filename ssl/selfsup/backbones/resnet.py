"""ResNets built from torchvision's blocks, with a CIFAR stem option and a width multiplier.

At the default width (64) the parameter names and shapes are exactly torchvision's ``resnet*`` (minus ``fc``),
so exported weights load into torchvision unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from selfsup.backbones.base import Backbone, register_backbone

_LAYOUTS: dict[int, tuple[type[nn.Module], list[int]]] = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
    101: (Bottleneck, [3, 4, 23, 3]),
}


class ResNet(Backbone):
    """ResNet-{18,34,50,101}; ``width`` is the first stage's channel count (64 in torchvision).

    ``cifar_stem`` swaps the 7x7/2 conv for a 3x3/1 conv (small images such as 28-32 px); ``maxpool`` keeps
    the stem's 3x3/2 max-pool (default: with the ImageNet stem only; a CIFAR stem with it costs a quarter).
    ``width_per_group`` > 64 gives the wide variants (wide_resnet50_2 uses 128).
    """

    def __init__(
        self,
        depth: int = 50,
        width: int = 64,
        in_channels: int = 3,
        cifar_stem: bool = False,
        maxpool: bool | None = None,
        width_per_group: int = 64,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if depth not in _LAYOUTS:
            raise ValueError(f"depth must be one of {sorted(_LAYOUTS)}, got {depth}")
        block, layers = _LAYOUTS[depth]
        self.depth, self.width, self.cifar_stem = depth, width, cifar_stem
        # Bottleneck inner width = planes x width_per_group / 64: proportional to ``width`` already, so
        # ``width_per_group`` is passed as it is (scaling it by width too would shrink narrow nets twice).
        self._inplanes, self._base_width = width, width_per_group
        if cifar_stem:
            self.conv1 = nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False)
        else:
            self.conv1 = nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        use_maxpool = not cifar_stem if maxpool is None else maxpool
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1) if use_maxpool else nn.Identity()
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.num_features = width * 8 * block.expansion
        self._init_weights(zero_init_residual)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * block.expansion),
            )
        # torchvision's Bottleneck scales its inner width by base_width / 64; BasicBlock only accepts 64.
        extra = {"base_width": self._base_width} if block is Bottleneck else {}
        layers = [block(self._inplanes, planes, stride, downsample, **extra)]
        self._inplanes = planes * block.expansion
        layers += [block(self._inplanes, planes, **extra) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                last_bn = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (BasicBlock, Bottleneck)) and last_bn is not None:
                    nn.init.zeros_(last_bn.weight)

    def stages(self) -> list[nn.Module]:
        """The stem and the four stages in order (block 0 to 4), for probes of an inner block; applied in turn
        they are ``forward_features`` (which calls the layers directly: no containers built on every step)."""
        return [nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool),
                self.layer1, self.layer2, self.layer3, self.layer4]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def _family(name: str, depth: int, **fixed) -> None:
    @register_backbone(name)
    def build(**kwargs) -> ResNet:
        return ResNet(depth=depth, **fixed, **kwargs)

    wide = ", bottlenecks twice as wide" if fixed.get("width_per_group") == 128 else ""
    build.__doc__ = f"{name}: ResNet-{depth}{wide} (keyword arguments as ResNet)."


for _depth in _LAYOUTS:
    _family(f"resnet{_depth}", _depth)
_family("wide_resnet50_2", 50, width_per_group=128)
_family("wide_resnet101_2", 101, width_per_group=128)
