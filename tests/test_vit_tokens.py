"""The built-in ViT's token interface: position tables interpolated to other image sizes, kept-token lists,
register tokens, class-token pooling, drop path and LayerScale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from selfsup.backbones import build_backbone
from selfsup.backbones.vit import drop_path
from selfsup.errors import ConfigError

VIT = {"image_size": 16, "patch_size": 4, "num_layers": 2, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32,
       "in_channels": 1}


def test_other_image_sizes_get_the_table_resized_bicubically():
    torch.manual_seed(0)
    vit = build_backbone("vit", **VIT).eval()
    assert vit.position_table(4, 4) is vit.encoder.pos_embedding
    table = vit.position_table(2, 3)
    grid = vit.encoder.pos_embedding[:, 1:].reshape(1, 4, 4, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(grid, size=(2, 3), mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
    assert table.shape == (1, 7, 16)
    assert torch.equal(table[:, 0], vit.encoder.pos_embedding[:, 0])
    assert torch.allclose(table[:, 1:], expected)
    assert vit.forward_features(torch.randn(2, 1, 8, 12)).shape == (2, 16, 2, 3)
    with pytest.raises(ValueError, match="multiples of its patch size 4"):
        vit(torch.randn(1, 1, 10, 16))


def test_kept_tokens_are_the_full_pass_over_those_patches_only():
    torch.manual_seed(0)
    vit = build_backbone("vit", **VIT).eval()
    x = torch.randn(2, 1, 16, 16)
    order = torch.stack([torch.randperm(16), torch.randperm(16)])
    full, shuffled = vit.tokens(x), vit.tokens(x, keep=order)
    # every patch kept in another order: the same tokens, permuted (attention does not care about order)
    assert torch.allclose(shuffled[:, 1:], full[:, 1:].gather(1, order.unsqueeze(-1).expand(-1, -1, 16)), atol=1e-5)
    # a subset: the same as a ViT pass over a sequence holding only those patches (their own positions)
    keep = order[:, :4]
    part = vit.tokens(x, keep=keep)
    embedded = vit.conv_proj(x).flatten(2).transpose(1, 2) + vit.encoder.pos_embedding[:, 1:]
    picked = embedded.gather(1, keep.unsqueeze(-1).expand(-1, -1, 16))
    cls = (vit.class_token + vit.encoder.pos_embedding[:, :1]).expand(2, -1, -1)
    expected = vit.encoder.ln(vit.encoder.layers(torch.cat([cls, picked], dim=1)))
    assert part.shape == (2, 5, 16) and torch.allclose(part, expected, atol=1e-6)


def test_registers_and_cls_pooling():
    torch.manual_seed(0)
    vit = build_backbone("vit", **VIT, num_registers=3, pool="cls").eval()
    x = torch.randn(2, 1, 16, 16)
    tokens = vit.tokens(x)
    assert tokens.shape == (2, 1 + 3 + 16, 16) and vit.num_prefix == 4
    assert torch.allclose(vit(x), tokens[:, 0])
    assert torch.allclose(vit.forward_features(x).flatten(2).transpose(1, 2), tokens[:, 4:])
    assert vit.layer_id("register_tokens") == 0
    with pytest.raises(ConfigError, match="pool 'max'"):
        build_backbone("vit", **VIT, pool="max")


def test_drop_path_grows_linearly_with_depth_and_layer_scale_starts_small():
    vit = build_backbone("vit", **{**VIT, "num_layers": 3}, drop_path=0.2, layer_scale=1e-5)
    assert [block.drop_path for block in vit.encoder.layers] == pytest.approx([0.0, 0.1, 0.2])
    uniform = build_backbone("vit", **{**VIT, "num_layers": 3}, drop_path=0.2, drop_path_uniform=True)
    assert [block.drop_path for block in uniform.encoder.layers] == pytest.approx([0.2] * 3)
    assert torch.equal(vit.encoder.layers[0].ls_1.gamma, torch.full((16,), 1e-5))
    torch.manual_seed(0)
    x = torch.ones(10000, 1, 1)
    dropped = drop_path(x, 0.25, training=True)
    kept = dropped != 0
    assert torch.allclose(dropped[kept], torch.tensor(1 / 0.75)) and abs(kept.float().mean() - 0.75) < 0.02
    assert torch.equal(drop_path(x, 0.25, training=False), x)
