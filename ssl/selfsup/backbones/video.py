"""3-D ResNets for clips (B, C, T, H, W): torchvision's video ResNets and CVRL's R3D-50 (docs/methods/cvrl.md).

``forward_features`` returns the dense map (B, C, t, h, w); ``forward`` (the base class) pools it over time and
space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import video as tv_video

from selfsup.backbones.base import Backbone, register_backbone


class ClipConv3d(nn.Conv3d):
    """A ``Conv3d`` that never hands oneDNN a clip shorter than its temporal kernel.

    On a CPU, torch 2.14's bf16 weight gradient of a 3-frame kernel over a map of 1 or 2 frames (zero padded in
    time) is sometimes NaN: it reads memory it never wrote. So a shorter clip is zero padded in time here instead,
    and a one-frame clip under symmetric padding is convolved with the kernel's centre alone (its other taps only
    ever see padding). Outputs and gradients are those of the plain ``Conv3d``.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kt, pad = self.kernel_size[0], self.padding
        extent = self.dilation[0] * (kt - 1) + 1
        if x.shape[2] >= extent or isinstance(pad, str) or pad[0] == 0 or self.padding_mode != "zeros":
            return super().forward(x)
        spatial = (0, *pad[1:])
        if x.shape[2] == 1 and self.dilation[0] == 1 and kt == 2 * pad[0] + 1:
            centre = self.weight[:, :, pad[0] : pad[0] + 1]
            return F.conv3d(x, centre, self.bias, self.stride, spatial, self.dilation, self.groups)
        x = F.pad(x, (0, 0, 0, 0, pad[0], pad[0]))
        return F.conv3d(x, self.weight, self.bias, self.stride, spatial, self.dilation, self.groups)


def clip_convs(module: nn.Module) -> nn.Module:
    """``module`` with every convolution that runs as a plain ``Conv3d`` made a `ClipConv3d` in place (same
    parameters and names)."""
    for m in module.modules():
        if isinstance(m, nn.Conv3d) and type(m).forward is nn.Conv3d.forward:
            m.__class__ = ClipConv3d
    return module


class TorchvisionVideoResNet(Backbone):
    """torchvision's ``r3d_18`` / ``r2plus1d_18`` / ``mc3_18`` without ``fc`` (parameter names as torchvision's);
    ``in_channels`` other than 3 replaces the stem's first convolution. Convolutions are `ClipConv3d`s."""

    media = "video"

    def __init__(self, name: str = "r3d_18", in_channels: int = 3) -> None:
        super().__init__()
        model = getattr(tv_video, name)()
        if in_channels != 3:
            first = model.stem[0]
            model.stem[0] = nn.Conv3d(in_channels, first.out_channels, first.kernel_size, first.stride,
                                      first.padding, bias=False)
        clip_convs(model)
        self.stem, self.layer1, self.layer2 = model.stem, model.layer1, model.layer2
        self.layer3, self.layer4 = model.layer3, model.layer4
        self.num_features = model.fc.in_features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


def _conv_bn(cin: int, cout: int, kernel: tuple[int, int, int], stride: tuple[int, int, int] = (1, 1, 1)) -> list:
    padding = tuple(k // 2 for k in kernel)
    return [ClipConv3d(cin, cout, kernel, stride, padding, bias=False), nn.BatchNorm3d(cout)]


class Block3d(nn.Module):
    """A residual block whose first convolution has temporal kernel ``kt``; spatial stride ``stride``.

    Bottleneck (``expansion`` 4): (kt,1,1) -> (1,3,3)/stride -> (1,1,1) x4, as CVRL's R3D-50 (SlowOnly-style).
    Basic (``expansion`` 1): (kt,3,3)/stride -> (1,3,3).
    """

    def __init__(self, cin: int, planes: int, stride: int, kt: int, bottleneck: bool) -> None:
        super().__init__()
        self.expansion = 4 if bottleneck else 1
        cout = planes * self.expansion
        s = (1, stride, stride)
        if bottleneck:
            layers = [*_conv_bn(cin, planes, (kt, 1, 1)), nn.ReLU(inplace=True),
                      *_conv_bn(planes, planes, (1, 3, 3), s), nn.ReLU(inplace=True),
                      *_conv_bn(planes, cout, (1, 1, 1))]
        else:
            layers = [*_conv_bn(cin, planes, (kt, 3, 3), s), nn.ReLU(inplace=True), *_conv_bn(planes, cout, (1, 3, 3))]
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(*_conv_bn(cin, cout, (1, 1, 1), s)) if stride != 1 or cin != cout else None
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + (x if self.shortcut is None else self.shortcut(x)))


_LAYOUTS_3D: dict[int, tuple[bool, list[int]]] = {
    10: (False, [1, 1, 1, 1]), 18: (False, [2, 2, 2, 2]), 50: (True, [3, 4, 6, 3]),
}


class ResNet3d(Backbone):
    """A 3-D ResNet: a stem conv of temporal kernel ``stem_temporal_kernel`` and stride ``stem_temporal_stride``,
    spatially 7x7/2 (``cifar_stem``: 3x3/1, for frames of about 32 px) then a 3x3/2 max-pool (``maxpool``; default:
    with the 7x7/2 stem only, as the 2-D ResNet); four stages of ``Block3d`` with temporal kernels
    ``temporal_kernels`` (CVRL's R3D-50: 5/2 stem, (1, 1, 3, 3)); stage widths width x (1, 2, 4, 8) (x4 for
    bottlenecks), so R3D-50 gives 2048 features."""

    media = "video"

    def __init__(
        self,
        depth: int = 50,
        width: int = 64,
        in_channels: int = 3,
        stem_temporal_kernel: int = 5,
        stem_temporal_stride: int = 2,
        temporal_kernels: tuple[int, int, int, int] = (1, 1, 3, 3),
        cifar_stem: bool = False,
        maxpool: bool | None = None,
    ) -> None:
        super().__init__()
        if depth not in _LAYOUTS_3D:
            raise ValueError(f"depth must be one of {sorted(_LAYOUTS_3D)}, got {depth}")
        bottleneck, blocks = _LAYOUTS_3D[depth]
        k, s = (3, 1) if cifar_stem else (7, 2)
        use_maxpool = not cifar_stem if maxpool is None else maxpool
        self.stem = nn.Sequential(
            *_conv_bn(in_channels, width, (stem_temporal_kernel, k, k), (stem_temporal_stride, s, s)),
            nn.ReLU(inplace=True), nn.MaxPool3d((1, 3, 3), (1, 2, 2), (0, 1, 1)) if use_maxpool else nn.Identity(),
        )
        stages, cin = [], width
        for i, (count, kt) in enumerate(zip(blocks, temporal_kernels)):
            planes = width * 2**i
            stage = []
            for j in range(count):
                stage.append(Block3d(cin, planes, 2 if i > 0 and j == 0 else 1, kt, bottleneck))
                cin = stage[-1].expansion * planes
            stages.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.num_features = cin
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer4(self.layer3(self.layer2(self.layer1(self.stem(x)))))


for _name in ("r3d_18", "r2plus1d_18", "mc3_18"):
    register_backbone(_name)(lambda _n=_name, **kw: TorchvisionVideoResNet(_n, **kw))


@register_backbone("r3d_50")
def r3d_50(**kwargs) -> ResNet3d:
    """CVRL's 3-D ResNet-50 (keyword arguments as ResNet3d)."""
    return ResNet3d(depth=50, **kwargs)


@register_backbone("r3d_tiny")
def r3d_tiny(**kwargs) -> ResNet3d:
    """A 3-D ResNet-10 of width 8 with a 3x7x7 stem (no temporal stride) that trains on a CPU."""
    return ResNet3d(**{"depth": 10, "width": 8, "stem_temporal_kernel": 3, "stem_temporal_stride": 1, **kwargs})
