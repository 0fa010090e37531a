"""A timm ViT's token interface, as the built-in ViT's (what DINO, iBOT, MAE and I-JEPA call): kept-token lists
and masks against timm's own layers run by hand, prefix tokens, other image sizes, and the methods that refuse
what a timm model cannot give."""

from __future__ import annotations

import pytest
import torch
from timm.layers import DropPath

from selfsup.backbones import build_backbone
from selfsup.errors import ConfigError
from selfsup.methods import DINO, IJEPA, MAE, iBOT
from selfsup.methods.ibot import pooled

SMALL = "patch_size=4,img_size=16,embed_dim=16,depth=2,num_heads=2"
VITS = [f"timm:vit_tiny_patch16_224,{SMALL}",  # a class token, position table over it
        f"timm:vit_small_patch14_reg4_dinov2,{SMALL},init_values=1.0",  # 4 registers, table over patches only
        f"timm:vit_tiny_patch16_224,{SMALL},class_token=false,global_pool=avg"]  # patches alone


def by_hand(vit, x: torch.Tensor, mask: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> torch.Tensor:
    """timm's layers one by one: patches (masked ones replaced by the mask token), position table and prefix
    tokens, then only the kept patches (after the prefix) through the blocks and the norm."""
    m = vit.model
    patches = m.patch_embed(x)  # (B, h, w, C): dynamic_img_size keeps the grid
    if mask is not None:
        patches = torch.where(mask.bool().unsqueeze(-1), vit.mask_token.reshape(1, 1, 1, -1), patches)
    sequence = m._pos_embed(patches)
    if keep is not None:
        p = vit.num_prefix
        chosen = sequence[:, p:].gather(1, keep.unsqueeze(-1).expand(-1, -1, sequence.shape[-1]))
        sequence = torch.cat([sequence[:, :p], chosen], dim=1)
    return m.norm(m.blocks(m.norm_pre(sequence)))


@pytest.mark.parametrize("name", VITS)
def test_kept_and_masked_tokens_are_timms_layers_over_those_tokens(name):
    torch.manual_seed(0)
    vit = build_backbone(name, in_channels=1).eval()
    prefix = {"class_token=false": 0, "reg4": 5}
    assert vit.num_prefix == next((n for key, n in prefix.items() if key in name), 1)
    assert (vit.num_heads, vit.embed_dim, vit.image_size, vit.patch_size, vit.pool) == (2, 16, 16, 4, "mean")
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        full = vit.tokens(x)
        assert full.shape == (2, vit.num_prefix + 16, 16) and torch.allclose(full, by_hand(vit, x), atol=1e-6)
        assert torch.allclose(vit.tokens(x, keep=torch.arange(16).expand(2, -1)), full, atol=1e-6)
        keep = torch.stack([torch.randperm(16)[:5], torch.randperm(16)[:5]])
        kept = vit.tokens(x, keep=keep)
        assert kept.shape == (2, vit.num_prefix + 5, 16)
        assert torch.allclose(kept, by_hand(vit, x, keep=keep), atol=1e-6)
        assert not torch.allclose(kept[:, vit.num_prefix:], full[:, vit.num_prefix:].gather(
            1, keep.unsqueeze(-1).expand(-1, -1, 16)), atol=1e-3)  # the others' absence changes the kept ones
        mask = (torch.rand(2, 4, 4) < 0.5).float()
        masked = vit.tokens(x, mask=mask)
        assert torch.allclose(masked, by_hand(vit, x, mask=mask), atol=1e-6)
        assert not torch.allclose(masked, full, atol=1e-3)
        assert torch.allclose(vit.tokens(x, mask=mask, keep=keep), by_hand(vit, x, mask, keep), atol=1e-6)
        # the pooled feature is the patch tokens' mean, as iBOT reads it off the tokens
        assert torch.allclose(vit(x), pooled(vit, full), atol=1e-6)
        assert torch.allclose(vit(x, mask=mask), pooled(vit, masked), atol=1e-6)


def test_other_multiples_of_the_patch_size_resample_the_position_table():
    vit = build_backbone(VITS[0], in_channels=1).eval()
    with torch.no_grad():
        assert vit.tokens(torch.randn(2, 1, 12, 8)).shape == (2, 1 + 6, 16)  # a DINO local crop: 3x2 patches
        assert vit(torch.randn(2, 1, 28, 28)).shape == (2, 16)
    with pytest.raises(ConfigError, match="cuts images into 4x4 patches, so it cannot take 10x16"):
        vit.tokens(torch.randn(1, 1, 10, 16))


def test_methods_take_timm_vits_and_refuse_what_they_cannot_use_in_one_line():
    vit = f"timm:vit_tiny_patch16_224,{SMALL}"
    ijepa = IJEPA(backbone=vit, in_channels=1, pred_dim=8, pred_depth=1)
    assert ijepa.predictor is not None and ijepa.backbone.num_heads == 2  # the predictor's heads: the backbone's
    mae = MAE(backbone=vit, in_channels=1, decoder_dim=8, decoder_depth=1, decoder_heads=1)
    tokens, pred, mask = mae.forward_masked(torch.randn(3, 1, 16, 16))
    assert tokens.shape == (3, 1 + 4, 16) and pred.shape == (3, 16, 16) and mask.sum() == 3 * 12
    swin = "timm:swin_tiny_patch4_window7_224,depths=[1],num_heads=[1]"
    for backbone, method in ((VITS[1], MAE), (swin, IJEPA), (swin, iBOT)):
        with pytest.raises(ConfigError) as caught:
            method(backbone=backbone, in_channels=1)
        assert "timm:vit_small_patch16_224" in str(caught.value) and "\n" not in str(caught.value)


def test_dinos_teacher_runs_a_timm_vit_without_stochastic_depth():
    dino = DINO(backbone=f"timm:vit_tiny_patch16_224,{SMALL},drop_path_rate=0.2", in_channels=1, out_dim=8,
                head_hidden_dim=8, bottleneck_dim=8)
    rates = [(m.drop_prob, t.drop_prob) for m, t in zip(dino.backbone.modules(), dino.momentum_backbone.modules())
             if isinstance(m, DropPath)]
    assert rates and rates[-1] == pytest.approx((0.2, 0.0)) and all(teacher == 0.0 for _, teacher in rates)
