"""Projector shapes as docs/methods/simclr.md describes SimCLR v1/v2."""

import torch
from torch import nn

from selfsup.heads import MLP, LinearClassifier


def layers_of(mlp, kind):
    return [m for m in mlp if isinstance(m, kind)]


def test_simclr_v1_projector():
    mlp = MLP([512, 512, 128], last_norm="bn_noshift")
    linears, norms = layers_of(mlp, nn.Linear), layers_of(mlp, nn.BatchNorm1d)
    assert [(layer.in_features, layer.out_features) for layer in linears] == [(512, 512), (512, 128)]
    assert all(layer.bias is None for layer in linears)  # BN follows every Linear
    assert norms[0].bias is not None and norms[1].bias is None and norms[1].weight is not None
    assert len(layers_of(mlp, nn.ReLU)) == 1  # no ReLU after the last layer
    assert mlp(torch.randn(4, 512)).shape == (4, 128)


def test_simclr_v2_projector_has_three_layers():
    mlp = MLP([2048, 2048, 2048, 128], last_norm="bn_noshift")
    assert len(layers_of(mlp, nn.Linear)) == 3 and len(layers_of(mlp, nn.ReLU)) == 2


def test_plain_last_layer_keeps_its_bias():
    mlp = MLP([16, 32, 8])
    assert mlp[-1].bias is not None and isinstance(mlp[-1], nn.Linear)


def test_linear_classifier():
    assert LinearClassifier(16, 10)(torch.randn(3, 16)).shape == (3, 10)
