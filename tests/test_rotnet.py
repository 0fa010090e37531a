"""RotNet: the rotations and their layout against a per-image loop, the loss, its views and the CLI."""

from __future__ import annotations

import csv

import pytest
import torch
import torch.nn.functional as F

from clirun import REPO, selfsup
from selfsup.data.views import RotationViews, rotate_batch
from selfsup.heads import MLP, LinearClassifier
from selfsup.methods import RotNet


def test_rotate_batch_matches_a_loop_over_images():
    x = torch.randn(3, 2, 5, 5)
    x4, labels = rotate_batch(x)
    expected = [torch.rot90(image, k, dims=(1, 2)) for image in x for k in range(4)]
    assert x4.shape == (12, 2, 5, 5)
    assert torch.equal(x4, torch.stack(expected))
    assert labels.tolist() == [0, 1, 2, 3] * 3


def test_rotation_by_one_is_90_degrees_counter_clockwise():
    image = torch.tensor([[1, 2],
                          [3, 4]])[None, None]
    x4, _ = rotate_batch(image)
    assert x4[1, 0].tolist() == [[2, 4],
                                 [1, 3]]  # the top-right corner moves to the top-left
    assert x4[2, 0].tolist() == [[4, 3], [2, 1]]
    assert x4[3, 0].tolist() == [[3, 1], [4, 2]]


def test_rotate_batch_refuses_non_square_images():
    with pytest.raises(ValueError, match="square"):
        rotate_batch(torch.zeros(1, 1, 4, 5))


def test_rotation_views_crop_once_per_image_to_unit_floats():
    torch.manual_seed(0)
    images = (torch.rand(6, 1, 32, 32) * 255).to(torch.uint8)
    out = RotationViews(28, flip_p=0.5).batch(images)
    assert set(out) == {"images"}
    x = out["images"]
    assert x.shape == (6, 1, 28, 28) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1
    single = RotationViews(28)(images[0])["images"]
    assert single.shape == (1, 28, 28) and 0 <= single.min() and single.max() <= 1


def test_full_crop_without_flip_keeps_the_image():
    images = (torch.rand(2, 3, 16, 16) * 255).to(torch.uint8)
    x = RotationViews(16, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0).batch(images)["images"]
    assert torch.allclose(x, images.float() / 255, atol=1e-5)


@pytest.mark.parametrize("hidden_dim", [None, 8])
def test_loss_is_cross_entropy_of_the_rotation_head(hidden_dim):
    torch.manual_seed(0)
    model = RotNet(hidden_dim=hidden_dim, backbone="resnet18", backbone_args={"width": 4}, in_channels=1)
    assert isinstance(model.head, MLP if hidden_dim else LinearClassifier)
    images = torch.rand(3, 1, 16, 16)
    out = model.ssl_step({"images": images, "label": torch.zeros(3, dtype=torch.long)})

    rotated = torch.cat([torch.stack([torch.rot90(image, k, dims=(1, 2)) for k in range(4)]) for image in images])
    features = model.backbone(rotated)
    logits = model.head(features)
    labels = torch.tensor([0, 1, 2, 3] * 3)
    expected = -logits.log_softmax(1)[torch.arange(12), labels].mean()
    assert torch.allclose(out.loss, expected, atol=1e-5)
    assert torch.allclose(out.loss, F.cross_entropy(logits, labels), atol=1e-5)
    assert torch.allclose(out.features, features[::4], atol=1e-5)  # the probe sees the un-rotated copies
    top1 = (logits.argmax(1) == labels).float().mean()
    assert torch.allclose(out.logs["train/rotation_top1"], top1)


@pytest.mark.slow
def test_fit_of_the_mnist_recipe_logs_rotation_accuracy(mnist5k, tmp_path):
    selfsup("fit", "-c", str(REPO / "experiments/rotnet/mnist5k.yaml"),
            "--model.init_args.backbone_args", "{width: 4}", "--data.init_args.batch_size", "32",
            "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
            "--trainer.log_every_n_steps", "1", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    run = next((tmp_path / "runs/rotnet-mnist5k").glob("version_*"))
    assert (run / "checkpoints/last.ckpt").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    for name in ("train/rotation_top1_step", "train/loss_step", "train/probe_top1_step", "val/rotation_top1",
                 "knn/top1"):
        assert any(row.get(name) for row in rows), name


def test_imagenet_recipe_parses_with_the_vissl_values(tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/rotnet/imagenet-resnet50.yaml"), "--print_config",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("class_path: selfsup.methods.RotNet", "backbone: resnet50", "optimizer: sgd", "lr: 0.1",
                 "weight_decay: 0.0001", "max_epochs: 105", "devices: 8",
                 "class_path: selfsup.data.views.RotationViews"):
        assert line in proc.stdout, line
