"""MoCo v3's ViT options of the built-in ViT: the fixed 2-D sine-cosine position table and the frozen random patch
projection."""

from __future__ import annotations

import csv
import io
import math

import pytest
import torch

from clirun import REPO, selfsup
from selfsup.backbones import build_backbone
from selfsup.backbones.posembed import sincos_2d
from selfsup.errors import ConfigError
from selfsup.methods import MoCoV3
from test_twoview import attach_fake_trainer

VIT = {"image_size": 16, "patch_size": 4, "num_layers": 1, "num_heads": 2, "hidden_dim": 16, "mlp_dim": 32}
MOCO_VIT = {"backbone": "vit_tiny", "in_channels": 1, "proj_layers": 3, "pred_last_norm": True, "proj_dim": 8,
            "proj_hidden_dim": 16, "pred_hidden_dim": 16, "optimizer": "adamw", "lr": 1e-2, "lr_scaling": "none",
            "weight_decay": 0.1, "exclude_norms_and_biases": False, "warmup_epochs": 0,
            "backbone_args": {**VIT, "pos_embed": "sincos", "freeze_patch_embed": True}}


@pytest.mark.parametrize("first", ["row", "column"])
def test_sincos_table_follows_its_formula(first):
    dim, height, width = 16, 3, 5
    table = sincos_2d(dim, height, width, first=first)
    assert table.shape == (1 + height * width, dim) and not table[0].any()  # the cls token's row: zeros
    quarter = dim // 4
    for token in range(height * width):
        row, col = divmod(token, width)
        a, b = (row, col) if first == "row" else (col, row)
        for i in range(quarter):
            omega = 1 / 10000 ** (2 * i / (dim / 2))  # 1 / 10000^(2i/D) with D = dim / 2 channels per axis
            want = [math.sin(a * omega), math.cos(a * omega), math.sin(b * omega), math.cos(b * omega)]
            got = table[1 + token, [i, quarter + i, 2 * quarter + i, 3 * quarter + i]]
            assert got.tolist() == pytest.approx(want, abs=1e-6), (token, i)


def test_sincos_table_needs_a_width_divisible_by_four():
    with pytest.raises(ConfigError, match="divisible by 4, got 18"):
        sincos_2d(18, 2, 2)
    with pytest.raises(ConfigError, match="pos_embed 'rope' is unknown; choose learned or sincos"):
        build_backbone("vit_tiny", **VIT, pos_embed="rope")


def test_vit_options_fix_the_table_and_freeze_a_xavier_patch_projection():
    vit = build_backbone("vit_tiny", **{**VIT, "patch_size": 8}, in_channels=3, pos_embed="sincos",
                         freeze_patch_embed=True)
    assert torch.equal(vit.encoder.pos_embedding[0], sincos_2d(16, 2, 2))
    frozen = {n for n, p in vit.named_parameters() if not p.requires_grad}
    assert frozen == {"encoder.pos_embedding", "conv_proj.weight", "conv_proj.bias"}
    bound = math.sqrt(6 / (3 * 8 * 8 + 16))  # Xavier-uniform over the flattened patch: fans 3*8*8 and 16
    weight = vit.conv_proj.weight
    assert weight.abs().max() <= bound and weight.abs().max() > 0.9 * bound and not vit.conv_proj.bias.any()
    learned = build_backbone("vit_tiny", **VIT)
    assert all(p.requires_grad for p in learned.parameters())


def test_frozen_parts_stay_while_the_rest_learns_and_survive_a_checkpoint():
    torch.manual_seed(0)
    model = attach_fake_trainer(MoCoV3(**MOCO_VIT))
    frozen = {"backbone.conv_proj.weight", "backbone.conv_proj.bias", "backbone.encoder.pos_embedding"}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = model.configure_optimizers()["optimizer"]
    optimized = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert all(id(p) not in optimized for n, p in model.named_parameters() if n in frozen)
    g = torch.Generator().manual_seed(0)
    for _ in range(3):
        batch = {"views": [torch.rand(4, 1, 16, 16, generator=g) for _ in range(2)], "label": torch.zeros(4).long()}
        model.ssl_step(batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    after = dict(model.named_parameters())
    for name in frozen:
        assert torch.equal(after[name], before[name]), name
        assert torch.equal(after["momentum_" + name], before[name]), name  # the EMA leaves frozen copies as well
    trained = {n for n, p in after.items() if n.startswith("backbone.") and p.requires_grad} - {"backbone.mask_token"}
    assert trained and all(not torch.equal(after[n], before[n]) for n in trained)  # (no mask token in MoCo v3)

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    torch.manual_seed(1)
    restored = MoCoV3(**MOCO_VIT)
    restored.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    for name, p in restored.named_parameters():
        assert torch.equal(p, after[name]), name
        assert p.requires_grad == (name not in frozen and not name.startswith("momentum_")), name


@pytest.mark.slow
def test_cpu_vit_recipe_trains_a_few_steps(mnist5k, tmp_path):
    selfsup("fit", "-c", str(REPO / "experiments/mocov3/mnist5k-vit-tiny.yaml"), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1", "--trainer.callbacks=[]",
            "--data.init_args.batch_size", "32", "--data.init_args.num_workers", "0", "--trainer.log_every_n_steps",
            "1", "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    run = next((tmp_path / "runs/mocov3-mnist5k-vit-tiny").glob("version_*"))
    losses = [float(r["train/loss_step"]) for r in csv.DictReader((run / "metrics.csv").open())
              if r.get("train/loss_step")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    ckpt = torch.load(run / "checkpoints/last.ckpt", weights_only=True)["state_dict"]
    assert torch.equal(ckpt["backbone.encoder.pos_embedding"][0], sincos_2d(64, 8, 8))
