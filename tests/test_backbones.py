"""The backbone API: shapes, torchvision compatibility, width and stem options, clear errors."""

import pytest
import torch
import torchvision

from selfsup.backbones import available_backbones, build_backbone
from selfsup.errors import ConfigError


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_default_width_is_torchvision_exactly(name):
    ours, theirs = build_backbone(name).eval(), getattr(torchvision.models, name)().eval()
    state = {k: v for k, v in theirs.state_dict().items() if not k.startswith("fc.")}
    ours.load_state_dict(state, strict=True)
    theirs.fc = torch.nn.Identity()
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


def test_tiny_cifar_variant_shapes():
    net = build_backbone("resnet18", width=16, cifar_stem=True, in_channels=1)
    x = torch.randn(3, 1, 28, 28)
    assert net.num_features == 128
    assert net.forward_features(x).shape == (3, 128, 4, 4)
    assert net(x).shape == (3, 128)
    assert torch.allclose(net(x), net.forward_features(x).mean(dim=(2, 3)), atol=1e-6)


def test_bottleneck_and_wide_feature_widths():
    assert build_backbone("resnet50", width=16).num_features == 512
    wide = build_backbone("wide_resnet50_2")
    assert wide.num_features == 2048 and wide.layer1[0].conv1.out_channels == 128


def test_unknown_backbone_names_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown backbone 'resnet19'.*resnet18"):
        build_backbone("resnet19")
    with pytest.raises(ConfigError, match="takes no .colour.; it takes cifar_stem, depth"):
        build_backbone("resnet18", colour="blue")
    assert "resnet50" in available_backbones()


def test_narrow_bottleneck_resnets_keep_their_inner_width():
    net = build_backbone("resnet50", width=4, in_channels=1, cifar_stem=True)
    assert net.layer1[0].conv2.out_channels == 4 and net.num_features == 4 * 8 * 4
    assert build_backbone("wide_resnet50_2", width=8).layer1[0].conv2.out_channels == 16
    assert net(torch.rand(2, 1, 16, 16)).shape == (2, 128)
