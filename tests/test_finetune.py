"""FineTune: layer-wise lr decay from the backbone's block structure, weights from a checkpoint, the whole
backbone trained."""

from __future__ import annotations

import pytest
import torch

from selfsup.errors import ConfigError
from selfsup.eval import FineTune
from selfsup.optim import apply_lr_scale, build_optimizer

VIT = {"backbone": "vit_tiny", "in_channels": 1, "num_classes": 10}


def test_layer_decay_gives_each_block_its_power_of_the_decay():
    model = FineTune(**VIT, layer_decay=0.5, weight_decay=0.05)
    opt = build_optimizer("adamw", model.parameter_groups(), 1.0, 0.9, 0.05)
    apply_lr_scale(opt)
    lr_of = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    named = dict(model.named_parameters())
    expected = {  # 4 blocks: embedding depth 0, block i depth i, final norm and head depth 5
        "backbone.conv_proj.weight": (0.5**5, 0.05), "backbone.mask_token": (0.5**5, 0.0),
        "backbone.encoder.pos_embedding": (0.5**5, 0.0),
        "backbone.encoder.layers.encoder_layer_0.mlp.0.weight": (0.5**4, 0.05),
        "backbone.encoder.layers.encoder_layer_3.self_attention.in_proj_weight": (0.5**1, 0.05),
        "backbone.encoder.layers.encoder_layer_3.ln_1.bias": (0.5**1, 0.0),
        "backbone.encoder.ln.weight": (1.0, 0.0), "head.weight": (1.0, 0.05), "head.bias": (1.0, 0.0),
    }
    for name, (lr, wd) in expected.items():
        assert lr_of[id(named[name])] == pytest.approx((lr, wd)), name
    assert sum(len(g["params"]) for g in opt.param_groups) == len(named)  # every parameter once


def test_weights_come_from_the_checkpoint_and_all_of_them_train(tmp_path):
    source = FineTune(**VIT)
    state = {f"backbone.{k}": v + 1 for k, v in source.backbone.state_dict().items()}
    ckpt = tmp_path / "pretrained.ckpt"
    torch.save({"state_dict": state, "hyper_parameters": {"backbone": "vit_tiny", "backbone_args": {},
                                                          "in_channels": 1}}, ckpt)
    model = FineTune(init_from=str(ckpt), **VIT)
    for k, v in model.backbone.state_dict().items():
        assert torch.equal(v, state[f"backbone.{k}"]), k
    assert all(p.requires_grad for p in model.parameters())
    logits = model(torch.randn(2, 1, 28, 28))
    logits.sum().backward()
    assert logits.shape == (2, 10) and model.backbone.conv_proj.weight.grad is not None


def test_an_architecture_mismatch_and_layer_decay_on_a_resnet_are_refused(tmp_path):
    ckpt = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "hyper_parameters": {"backbone": "vit_tiny", "backbone_args": {"num_layers": 2},
                                                       "in_channels": 1}}, ckpt)
    with pytest.raises(ConfigError, match="holds a vit_tiny"):  # backbone_args given: must be the checkpoint's
        FineTune(init_from=str(ckpt), backbone_args={}, **VIT)
    with pytest.raises(ConfigError, match="set model.layer_decay: 1.0"):
        FineTune(backbone="resnet18", backbone_args={"width": 4}, num_classes=10, layer_decay=0.75)
    FineTune(backbone="resnet18", backbone_args={"width": 4}, num_classes=10, layer_decay=1.0).parameter_groups()
