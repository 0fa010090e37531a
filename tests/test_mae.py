"""MAE: per-sample random masking (exact count, restore order), patch order, the norm_pix target and the loss by
hand, the decoder's mask token and positions, the fine-tuning options MAE's recipe adds, bad input, recipes."""

from __future__ import annotations

import pytest
import torch

from clirun import REPO, selfsup
from selfsup.backbones.posembed import sincos_2d
from selfsup.data.masking import random_keep, removed_mask, unshuffle
from selfsup.errors import ConfigError
from selfsup.eval.finetune import FineTune
from selfsup.heads import MAEDecoder
from selfsup.losses import mae_loss, normalize_patches, patchify, unpatchify
from selfsup.methods import MAE
from selfsup.methods.mae import decoder_memory

TINY = {"image_size": 16, "patch_size": 4, "num_layers": 2, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16}


def tiny_mae(**kwargs) -> MAE:
    return MAE(**{"backbone": "vit_tiny", "backbone_args": TINY, "in_channels": 1, "decoder_dim": 8,
                  "decoder_depth": 1, "decoder_heads": 2, **kwargs})


@pytest.mark.parametrize("patches, ratio, kept", [(196, 0.75, 49), (64, 0.75, 16), (16, 0.5, 8), (10, 0.75, 2)])
def test_random_keep_keeps_exactly_floor_of_the_rest_per_sample(patches, ratio, kept):
    keep, restore = random_keep(32, patches, ratio, generator=torch.Generator().manual_seed(0))
    mask = removed_mask(restore, keep.shape[1])
    assert keep.shape == (32, kept)
    assert (mask.sum(1) == patches - kept).all()
    for b in range(32):
        assert len(set(keep[b].tolist())) == kept  # distinct patches
        assert mask[b, keep[b]].sum() == 0  # the kept ones are exactly the unmasked ones
    assert not (keep == keep[:1]).all()  # a draw per sample, not one for the batch


def test_unshuffle_inverts_the_shuffle():
    keep, restore = random_keep(4, 12, 0.75, generator=torch.Generator().manual_seed(1))
    shuffle = restore.argsort(dim=1)
    assert torch.equal(shuffle[:, :3], keep)
    x = torch.randn(4, 12, 5)
    shuffled = torch.stack([x[b, shuffle[b]] for b in range(4)])  # the order random_keep drew
    assert torch.equal(unshuffle(shuffled, restore), x)


def test_patchify_orders_rows_columns_then_channels_and_unpatchify_inverts_it():
    x = torch.randn(2, 3, 8, 12)
    patches = patchify(x, 4)
    assert patches.shape == (2, 6, 48)
    b, i, j, p, q, c = 1, 1, 2, 3, 1, 2  # patch (row 1, column 2), pixel (3, 1), channel 2
    assert patches[b, i * 3 + j, (p * 4 + q) * 3 + c] == x[b, c, i * 4 + p, j * 4 + q]
    assert torch.equal(unpatchify(patches, 4, 3, 8, 12), x)


def test_norm_pix_target_by_hand_with_the_unbiased_variance():
    t = torch.randn(2, 3, 7)
    expected = torch.empty_like(t)
    for b in range(2):
        for i in range(3):
            values = t[b, i].tolist()
            mean = sum(values) / 7
            var = sum((v - mean) ** 2 for v in values) / 6  # n - 1
            expected[b, i] = torch.tensor([(v - mean) / (var + 1e-6) ** 0.5 for v in values])
    assert torch.allclose(normalize_patches(t), expected, atol=1e-5)


def test_loss_by_hand_on_masked_patches_only():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]])
    errors = [((pred[b, i] - target[b, i]) ** 2).mean() for b in range(2) for i in range(5) if mask[b, i]]
    assert torch.allclose(mae_loss(pred, target, mask, norm_pix=False), sum(errors) / 4)
    t = normalize_patches(target)
    errors = [((pred[b, i] - t[b, i]) ** 2).mean() for b in range(2) for i in range(5) if mask[b, i]]
    assert torch.allclose(mae_loss(pred, target, mask), sum(errors) / 4)


def test_the_loss_ignores_visible_patches():
    torch.manual_seed(0)
    pred, target = torch.randn(2, 5, 4, requires_grad=True), torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 0, 1, 1]])
    loss = mae_loss(pred, target, mask)
    changed = pred.detach().clone()
    changed[0, 1] += 100.0  # a visible patch's prediction
    changed[1, 0] -= 7.0
    assert torch.equal(mae_loss(changed, target, mask), loss.detach())
    loss.backward()
    assert (pred.grad[mask == 0] == 0).all() and (pred.grad[mask == 1] != 0).any()


def test_decoder_fills_removed_slots_with_one_mask_token_and_column_first_positions():
    decoder = MAEDecoder(6, (2, 3), out_dim=5, dim=8, depth=1, num_heads=2)
    assert torch.equal(decoder.pos_embed[0], sincos_2d(8, 2, 3, first="column"))
    seen = {}
    decoder.blocks.register_forward_pre_hook(lambda module, args: seen.setdefault("x", args[0]))
    keep, restore = random_keep(2, 6, 0.5, generator=torch.Generator().manual_seed(0))
    tokens = torch.randn(2, 4, 6)  # cls + 3 visible
    out = decoder(tokens, restore)
    assert out.shape == (2, 6, 5)
    x = seen["x"] - decoder.pos_embed  # the tokens in patch order before the positions
    mask = removed_mask(restore, 3)
    embedded = decoder.embed(tokens)
    for b in range(2):
        assert torch.allclose(x[b, 0], embedded[b, 0], atol=1e-6)  # cls first
        for slot, patch in enumerate(keep[b].tolist()):
            assert torch.allclose(x[b, 1 + patch], embedded[b, 1 + slot], atol=1e-6)
        for patch in mask[b].nonzero().flatten().tolist():
            assert torch.allclose(x[b, 1 + patch], decoder.mask_token[0, 0], atol=1e-6)


def test_step_encodes_only_the_visible_patches_and_scores_the_masked_ones():
    torch.manual_seed(0)
    model = tiny_mae(num_classes=3)
    images = torch.randn(3, 1, 16, 16)
    calls = []
    tokens_fn = model.backbone.tokens
    model.backbone.tokens = lambda x, keep=None, mask=None: calls.append(keep.shape) or tokens_fn(x, keep=keep)
    out = model.ssl_step({"image": images, "label": torch.zeros(3, dtype=torch.long)})
    assert calls == [(3, 4)]  # 4 of 16 patches
    assert out.features.shape == (3, 8) and out.loss.ndim == 0 and torch.isfinite(out.loss)


@pytest.mark.parametrize("ratio", [0.0, 1.0, 1.5, -0.1])
def test_bad_mask_ratio_is_refused(ratio):
    with pytest.raises(ConfigError, match="mask_ratio must be within"):
        tiny_mae(mask_ratio=ratio)


def test_bad_geometry_and_backbones_are_refused():
    with pytest.raises(ConfigError, match="not a multiple of patch_size"):
        MAE(backbone="vit_tiny", backbone_args={**TINY, "image_size": 18}, in_channels=1)
    with pytest.raises(ConfigError, match="needs a ViT with a class token"):
        MAE(backbone="resnet18", backbone_args={"width": 4}, in_channels=1)
    with pytest.raises(ConfigError, match="multiple of decoder_heads"):
        tiny_mae(decoder_heads=3)


def test_a_decoder_too_large_for_memory_names_what_to_lower(monkeypatch):
    monkeypatch.setattr("selfsup.methods.mae.free_memory", lambda: 2**33)
    assert decoder_memory(64, 197, 512, 8, 16) < 2**33 < decoder_memory(4096, 197, 512, 8, 16)  # ViT-B: 64 a GPU
    with pytest.raises(ConfigError, match=r"needs about .* GiB at batch 1000000 .* lower model.decoder_dim, "
                                          r"model.decoder_depth or data.batch_size"):
        tiny_mae(batch_size=1_000_000)
    tiny_mae(batch_size=128)


@pytest.mark.slow
def test_cli_refuses_bad_input_in_one_line(mnist5k, tmp_path):
    for flag, message in ((["--model.init_args.mask_ratio", "1.0"], "mask_ratio must be within (0, 1), got 1.0"),
                          (["--model.init_args.backbone_args.image_size", "30"], "not a multiple of patch_size 4")):
        proc = selfsup("fit", "-c", str(REPO / "experiments/mae/mnist5k-vit-tiny.yaml"), *flag,
                       "--trainer.max_epochs", "1", cwd=tmp_path, check=False)
        errors = [line for line in proc.stderr.splitlines() if line.startswith("selfsup: error:")]
        assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
        assert "Traceback" not in proc.stderr and not list(tmp_path.rglob("*.ckpt"))


def test_finetune_adds_drop_path_pool_norm_and_head_init():
    model = FineTune(backbone="vit_tiny", backbone_args=TINY, in_channels=1, num_classes=10, drop_path=0.2,
                     pool_norm=True, head_init_std=2e-5)
    assert [b.drop_path for b in model.backbone.encoder.layers] == [0.0, 0.2]
    assert model.head.weight.std() < 1e-4
    assert model(torch.randn(2, 1, 16, 16)).shape == (2, 10)
    groups = model.parameter_groups()
    top = max(g["layer"] for g in groups)
    assert {id(p) for p in model.pool_norm.parameters()} <= {id(p) for g in groups if g["layer"] == top
                                                              for p in g["params"]}
    with pytest.raises(ConfigError, match="model.drop_path needs one of selfsup's ViTs"):
        FineTune(backbone="resnet18", backbone_args={"width": 4}, num_classes=10, drop_path=0.1, layer_decay=1.0)


@pytest.mark.parametrize("recipe, lines", [
    ("imagenet-vit-base.yaml", ["backbone: vit_b_16", "max_epochs: 1600", "size: 224"]),
    ("imagenet-vit-large.yaml", ["backbone: vit", "num_layers: 24", "hidden_dim: 1024", "max_epochs: 800"]),
])
def test_paper_recipes_parse_with_the_paper_values(recipe, lines, tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/mae" / recipe), "--print_config", cwd=tmp_path)
    for line in [*lines, "mask_ratio: 0.75", "decoder_dim: 512", "decoder_depth: 8", "decoder_heads: 16",
                 "norm_pix_loss: true", "lr: 0.00015", "lr_scaling: linear", "weight_decay: 0.05",
                 "optimizer: adamw", "- 0.95", "warmup_epochs: 40"]:
        assert line in proc.stdout, line


@pytest.mark.slow
def test_fit_of_the_mnist_recipe_lowers_the_loss_and_writes_the_picture(mnist5k, tmp_path):
    import csv

    selfsup("fit", "-c", str(REPO / "experiments/mae/mnist5k-vit-tiny.yaml"), "--trainer.max_epochs", "2",
            "--trainer.limit_train_batches", "12", "--trainer.log_every_n_steps", "1",
            "--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks=[]", "--trainer.callbacks+=selfsup.eval.ReconstructionGrid",
            "--trainer.callbacks.every_n_epochs", "1", cwd=tmp_path)
    run = next((tmp_path / "runs/mae-mnist5k-vit-tiny").glob("version_*"))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 24 and sum(losses[-4:]) < sum(losses[:4])
    assert (run / "reconstruction-epoch2.png").stat().st_size > 1000
    ckpt = str(run / "checkpoints/last.ckpt")
    for method in ("mae", "simmim"):  # the picture from MAE's config; SimMIM's refuses the checkpoint
        proc = selfsup("reconstruct", "--ckpt", ckpt, "-c", str(REPO / f"experiments/{method}/mnist5k-vit-tiny.yaml"),
                       "--out", str(tmp_path / f"{method}.png"), "--num-images", "4", cwd=tmp_path, check=False)
        if method == "mae":
            assert proc.returncode == 0 and (tmp_path / "mae.png").stat().st_size > 1000, proc.stderr[-2000:]
        else:
            assert proc.returncode == 2 and "not a SimMIM checkpoint" in proc.stderr
