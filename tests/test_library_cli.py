"""timm backbones through the real CLI on built-in MNIST-5k: a few steps of SimCLR, SwAV, PixPro and SimMIM, of
DINO, iBOT, MAE and I-JEPA on a timm ViT, the dense probe and the export of a timm ConvNet's checkpoint,
`selfsup backbones`, and bad names as one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import timm
import torch

from clirun import REPO, selfsup

# A CPU-sized ConvNeXt (timm's convnext_atto with 4 blocks of widths 8-64 and a 1x1 stem: a 3x3 map of 28 px).
CONVNEXT = ["--model.init_args.backbone", "timm:convnext_atto",
            "--model.init_args.backbone_args", "{dims: [8, 16, 32, 64], depths: [1, 1, 1, 1], patch_size: 1}"]
# A CPU-sized ViT (timm's ViT with 4x4 patches, 2 blocks of width 32) for SimMIM's 32 px views.
VIT = ["--model.init_args.backbone", "timm:vit_tiny_patch16_224",
       "--model.init_args.backbone_args", "{patch_size: 4, depth: 2, embed_dim: 32, num_heads: 2, img_size: 32}"]
FEW_STEPS = ["--data.init_args.batch_size", "32", "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1",
             "--trainer.limit_train_batches", "2", "--trainer.check_val_every_n_epoch", "1",
             "--trainer.limit_val_batches", "1", "--trainer.enable_progress_bar", "false"]


def fit(recipe: str, backbone: list[str], cwd: Path, *extra: str) -> Path:
    """A few steps of ``recipe`` with ``backbone``; the run's last checkpoint."""
    selfsup("fit", "-c", str(REPO / recipe), *backbone, *FEW_STEPS, "--trainer.callbacks", "[]", *extra, cwd=cwd)
    return next(cwd.glob("runs/*/version_*/checkpoints/last.ckpt"))


@pytest.mark.slow
def test_simclr_on_a_timm_convnet_exports_into_timm_and_probes_its_dense_map(mnist5k, tmp_path):
    ckpt = fit("experiments/simclr/mnist5k.yaml", CONVNEXT, tmp_path)
    proc = selfsup("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "convnext.pt"), cwd=tmp_path)
    assert "timm.create_model('convnext_atto', num_classes=0, in_chans=1, dims=(8, 16, 32, 64)" in proc.stdout
    model = timm.create_model("convnext_atto", num_classes=0, in_chans=1, dims=(8, 16, 32, 64), depths=(1, 1, 1, 1),
                              patch_size=1)
    model.load_state_dict(torch.load(tmp_path / "convnext.pt", weights_only=True), strict=True)

    selfsup("fit", "-c", str(REPO / "experiments/eval/dense-mnist5k.yaml"), "--model.init_from", str(ckpt),
            *FEW_STEPS, cwd=tmp_path)
    rows = list(csv.DictReader(next(tmp_path.glob("runs/dense-mnist5k/version_*/metrics.csv")).open()))
    miou = [float(r["val/miou"]) for r in rows if r.get("val/miou")]
    assert len(miou) == 1 and 0 < miou[0] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("recipe", ["experiments/swav/mnist5k.yaml", "experiments/pixpro/mnist5k.yaml"])
def test_swav_and_pixpro_train_a_timm_convnet(recipe, mnist5k, tmp_path):
    ckpt = fit(recipe, CONVNEXT, tmp_path)
    hparams = torch.load(ckpt, weights_only=True)["hyper_parameters"]
    assert hparams["backbone"] == "timm:convnext_atto" and hparams["in_channels"] == 1


@pytest.mark.slow
def test_simmim_masks_a_timm_vit(mnist5k, tmp_path):
    ckpt = fit("experiments/simmim/mnist5k-vit-tiny.yaml", VIT, tmp_path)
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    assert "backbone.mask_token" in state and "backbone.model.cls_token" in state


def tiny_vit(**args) -> list[str]:
    """A one-block timm ViT of width 32 (4x4 patches unless ``args`` say otherwise) at the recipe's image size."""
    spec = ", ".join(f"{k}: {v}" for k, v in {"patch_size": 4, "depth": 1, "embed_dim": 32, "num_heads": 2,
                                               **args}.items())
    return ["--model.init_args.backbone", "timm:vit_tiny_patch16_224", "--model.init_args.backbone_args",
            f"{{{spec}}}"]


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "backbone", "extra"), [
    ("dino/mnist5k-vit-tiny", tiny_vit(img_size=28), ["--model.init_args.out_dim", "64"]),  # 28 and 12 px crops
    ("ibot/mnist5k-vit-tiny", tiny_vit(img_size=28), ["--model.init_args.out_dim", "64",
                                                      "--model.init_args.patch_out_dim", "64"]),
    ("mae/mnist5k-vit-tiny", tiny_vit(img_size=32), []),
    ("ijepa/mnist5k-vit-tiny", tiny_vit(img_size=28, patch_size=2, class_token="false", global_pool="avg"), []),
])
def test_token_methods_train_a_timm_vit(recipe, backbone, extra, mnist5k, tmp_path):
    ckpt = fit(f"experiments/{recipe}.yaml", backbone, tmp_path, *extra)
    saved = torch.load(ckpt, weights_only=True)
    assert saved["hyper_parameters"]["backbone"] == "timm:vit_tiny_patch16_224"
    weights = saved["state_dict"]["backbone.model.blocks.0.attn.qkv.weight"]
    assert weights.shape == (96, 32) and torch.isfinite(weights).all()


@pytest.mark.slow
def test_simmim_refuses_a_timm_convnet_naming_the_backbones_it_can_mask(mnist5k, tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/simmim/mnist5k-vit-tiny.yaml"), *CONVNEXT, *FEW_STEPS,
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "SimMIM masks patch embeddings" in proc.stderr
    assert "timm:vit_small_patch16_224" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "message"), [
    ("timm:convnext_tiyn", "timm has no model 'convnext_tiyn'; nearest: timm:convnext_tiny"),
    ("timm:resnet18,pretrained=true", "pretrained=true is refused"),
])
def test_bad_library_backbones_are_one_line_exit_2(backbone, message, tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), "--model.init_args.backbone", backbone,
                   "--model.init_args.backbone_args", "{}", "--trainer.fast_dev_run", "true", cwd=tmp_path, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("selfsup: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0]
    assert errors[0] == proc.stderr.strip().splitlines()[-1]  # no traceback after it


@pytest.mark.slow
def test_backbones_lists_builtins_and_searches_the_libraries(tmp_path):
    listing = selfsup("backbones", cwd=tmp_path, fresh=True).stdout
    assert "resnet18" in listing and "vit_tiny" in listing and "timm:NAME" in listing and "torchvision:NAME" in listing
    found = selfsup("backbones", "--search", "convnext_at", cwd=tmp_path).stdout
    assert "timm:convnext_atto" in found and "torchvision:convnext_tiny" not in found
    assert "nearest: timm:efficientnet_b0" in selfsup("backbones", "--search", "efficinetnet_b0", cwd=tmp_path).stdout


@pytest.mark.slow
def test_bench_measures_a_timm_backbone_in_bf16_and_channels_last(mnist5k, tmp_path):
    out = tmp_path / "bench.json"
    selfsup("bench", "--methods", "SimCLR", "PixPro", "--backbone", CONVNEXT[1], "--backbone-args", CONVNEXT[3],
            "--batch-size", "8", "--repeats", "1", "--warmup", "1", "--precision", "bf16-mixed", "--channels-last",
            "--repo", str(REPO), "--out", str(out), cwd=tmp_path)
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["SimCLR"]["backbone_images"] == 16 and rows["PixPro"]["backbone_calls"] == ["forward_features"] * 2
    assert all(r["step_ms"] > 0 and r["floor_ms"] > 0 for r in rows.values())
