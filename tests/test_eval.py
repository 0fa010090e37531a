"""Evaluation pieces in-process: checkpoints load weights-only, export round trips, probes stay frozen, dense mIoU."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader

from selfsup.backbones import build_backbone
from selfsup.errors import ConfigError
from selfsup.eval.checkpoint import load_backbone, load_checkpoint
from selfsup.eval.dense import DenseFineTune, DenseProbe, class_ious, confusion_matrix, digit_masks, mean_iou
from selfsup.eval.export import export_backbone
from selfsup.eval.probe import LinearProbe, _FeatureBatches
from selfsup.methods import SimCLR


def _trainer(steps: int) -> L.Trainer:
    return L.Trainer(max_steps=steps, accelerator="cpu", logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)


def saved_simclr(path: Path, backbone: str, in_channels: int, size: int, **backbone_args) -> SimCLR:
    """Two real SimCLR steps on random images (so BN running statistics move), saved by the Trainer."""
    model = SimCLR(backbone=backbone, backbone_args=backbone_args, in_channels=in_channels, batch_size=4,
                   optimizer="sgd", lr=0.1, warmup_epochs=0)
    g = torch.Generator().manual_seed(0)
    batches = [{"views": [torch.rand(4, in_channels, size, size, generator=g) for _ in range(2)],
                "label": torch.zeros(4, dtype=torch.long)} for _ in range(2)]
    trainer = _trainer(2)
    trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None))
    trainer.save_checkpoint(path)
    return model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A width-16, 1-channel, CIFAR-stem ResNet-18 checkpoint: a CPU variant torchvision cannot hold."""
    path = tmp_path_factory.mktemp("tiny") / "tiny.ckpt"
    saved_simclr(path, "resnet18", 1, 16, width=16, cifar_stem=True)
    return path


def test_a_trainer_checkpoint_loads_weights_only(tiny_ckpt):
    ckpt = load_checkpoint(tiny_ckpt)  # torch.load(weights_only=True) inside; it raises on anything pickled
    assert ckpt["hyper_parameters"]["backbone_args"] == {"width": 16, "cifar_stem": True}
    backbone, spec = load_backbone(tiny_ckpt)
    assert str(spec) == "resnet18(cifar_stem=True, width=16, in_channels=1)" and not backbone.training


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_export_loads_into_torchvision_with_the_same_features(name, tmp_path):
    model = saved_simclr(tmp_path / "m.ckpt", name, 3, 32)
    assert model.backbone.bn1.running_mean.abs().sum() > 0  # trained statistics, not the defaults
    report = export_backbone(tmp_path / "m.ckpt", tmp_path / "backbone.pt")
    assert report.loads_into_torchvision, report
    state = torch.load(tmp_path / "backbone.pt", weights_only=True)
    tv = torchvision.models.get_model(name, weights=None)
    missing, unexpected = tv.load_state_dict(state, strict=False)
    assert sorted(missing) == ["fc.bias", "fc.weight"] and not unexpected
    tv.fc = nn.Identity()
    x = torch.rand(2, 3, 64, 64)
    ours, _ = load_backbone(tmp_path / "m.ckpt")
    with torch.no_grad():
        assert torch.allclose(tv.eval()(x), ours(x), atol=1e-5)
        assert torch.allclose(ours(x), model.backbone.eval()(x))


def test_export_of_a_tiny_variant_names_what_torchvision_cannot_take_and_reloads_into_selfsup(tiny_ckpt, tmp_path):
    report = export_backbone(tiny_ckpt, tmp_path / "backbone.pt")
    assert not report.loads_into_torchvision
    assert "conv1.weight" in report.shape_mismatch and "layer4.1.bn2.weight" in report.shape_mismatch
    spec = json.loads((tmp_path / "backbone.json").read_text())
    rebuilt = build_backbone(spec["backbone"], in_channels=spec["in_channels"], **spec["backbone_args"])
    rebuilt.load_state_dict(torch.load(tmp_path / "backbone.pt", weights_only=True))  # strict
    ours, _ = load_backbone(tiny_ckpt)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), ours(x))


def _image_batches(n: int, channels: int = 1, size: int = 16, classes: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(1)
    return [{"image": torch.rand(8, channels, size, size, generator=g),
             "label": torch.randint(0, classes, (8,), generator=g)} for _ in range(n)]


def test_linear_probe_trains_only_its_head_and_keeps_bn_statistics(tiny_ckpt):
    probe = LinearProbe(init_from=str(tiny_ckpt), backbone="resnet18", backbone_args={"width": 16, "cifar_stem": True},
                        in_channels=1, num_classes=3, batch_size=8)
    before = {k: v.clone() for k, v in probe.backbone.state_dict().items()}
    head_before = probe.head.weight.clone()
    _trainer(3).fit(probe, train_dataloaders=DataLoader(_image_batches(3), batch_size=None))
    after = probe.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN running statistics
    assert not torch.equal(head_before, probe.head.weight)
    assert not probe.train().backbone.training and probe.head.training
    ours, _ = load_backbone(tiny_ckpt)
    assert all(torch.equal(v, after[k]) for k, v in ours.state_dict().items())


def test_a_probe_refuses_a_checkpoint_of_another_architecture(tiny_ckpt):
    with pytest.raises(ConfigError, match=r"holds a resnet18\(cifar_stem=True, width=16, in_channels=1\) backbone, "
                                          r"but the config asks for resnet18\(width=16, in_channels=1\)"):
        LinearProbe(init_from=str(tiny_ckpt), backbone="resnet18", backbone_args={"width": 16}, in_channels=1,
                    num_classes=10)


def test_a_probe_needs_labels():
    with pytest.raises(ConfigError, match="LinearProbe needs labels, but the data has no classes"):
        LinearProbe(backbone="resnet18", backbone_args={"width": 4}, num_classes=0)


def test_cached_feature_batches_split_a_fresh_permutation_over_ranks():
    features, labels = torch.arange(20.0)[:, None], torch.arange(20)
    ranks = [_FeatureBatches(features, labels, 3, rank, 2, seed=0) for rank in range(2)]
    epoch1 = [torch.cat([b["label"] for b in r]) for r in ranks]
    assert [len(r) for r in ranks] == [3, 3] and all(len(e) == 9 for e in epoch1)
    assert not set(epoch1[0].tolist()) & set(epoch1[1].tolist())  # disjoint shares of one permutation
    assert all(torch.equal(b["features"][:, 0].long(), b["label"]) for b in ranks[0])  # rows stay paired
    epoch2 = torch.cat([b["label"] for b in ranks[0]])
    assert not torch.equal(epoch1[0], epoch2)


def test_digit_masks_and_miou_by_hand():
    images = torch.tensor([[[[0.0, 0.9], [0.6, 0.2]]], [[[1.0, 0.4], [0.0, 0.0]]]])  # (2, 1, 2, 2)
    masks = digit_masks(images, torch.tensor([3, 0]), threshold=0.5)
    assert masks.tolist() == [[[0, 4], [4, 0]], [[1, 0], [0, 0]]]
    target = torch.tensor([0, 0, 1, 1, 2])
    pred = torch.tensor([0, 1, 1, 1, 0])
    confusion = confusion_matrix(pred, target, 4)
    assert confusion.tolist() == [[1, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    # IoU: class 0: 1 / (2 + 2 - 1) = 1/3; class 1: 2 / (3 + 2 - 2) = 2/3; class 2: 0 / 1; class 3 absent
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)


def test_ignored_pixels_leave_the_confusion_and_ious_are_per_class():
    target = torch.tensor([0, 0, 1, 255, 255])
    confusion = confusion_matrix(torch.tensor([0, 1, 1, 1, 2]), target, 3)
    assert confusion.sum() == 3  # the two ignored pixels are not counted
    ious = class_ious(confusion)
    assert ious[:2].tolist() == [pytest.approx(1 / 2), pytest.approx(1 / 2)] and ious[2].isnan()


def test_dense_probe_learns_from_mask_members_and_logs_per_class_iou(tiny_ckpt):
    probe = DenseProbe(init_from=str(tiny_ckpt), backbone="resnet18", backbone_args={"width": 16, "cifar_stem": True},
                       in_channels=1, num_classes=0, segments=3, batch_size=8, feature_bn=True,  # no image labels
                       cell_neighbours=True)
    g = torch.Generator().manual_seed(2)
    batches = [{"image": torch.rand(8, 1, 16, 16, generator=g), "label": torch.full((8,), -1),
                "mask": torch.randint(0, 3, (8, 2, 2), generator=g).repeat_interleave(8, 1).repeat_interleave(8, 2)}
               for _ in range(2)]  # one label per 8 x 8 cell of the stride-8 map
    batches[0]["mask"][:, 0] = 255  # ignored pixels
    trainer = _trainer(2)
    trainer.fit(probe, train_dataloaders=DataLoader(batches, batch_size=None),
                val_dataloaders=DataLoader(batches, batch_size=None))
    metrics = trainer.callback_metrics
    assert probe.num_segments == 3 and {"val/iou_bg", "val/miou", "val/cells_same_class"} <= set(metrics)
    assert 0 <= float(metrics["val/cells_same_place"]) <= 1 and float(metrics["val/cells_rankme"]) >= 1
    assert not probe.head[0].affine and probe.head[0].running_mean.abs().sum() > 0  # standardised maps
    assert all(0 <= float(metrics[k]) <= 1 for k in metrics if k.startswith("val/iou"))


def test_dense_probe_predicts_every_pixel_and_reports_miou(tiny_ckpt):
    probe = DenseProbe(init_from=str(tiny_ckpt), backbone="resnet18", backbone_args={"width": 16, "cifar_stem": True},
                       in_channels=1, num_classes=3, batch_size=8, threshold=0.5)
    assert probe(torch.rand(2, 1, 16, 16)).shape == (2, 4, 16, 16)
    trainer = _trainer(2)
    trainer.limit_val_batches = 2
    batches = DataLoader(_image_batches(2), batch_size=None)
    trainer.fit(probe, train_dataloaders=batches, val_dataloaders=batches)
    assert 0 <= float(trainer.callback_metrics["val/miou"]) <= 1


def test_dense_fine_tuning_trains_the_backbone_at_its_share_of_the_lr(tiny_ckpt):
    args = {"init_from": str(tiny_ckpt), "backbone": "resnet18", "backbone_args": {"width": 16, "cifar_stem": True},
            "in_channels": 1, "num_classes": 0, "segments": 3, "batch_size": 8, "feature_bn": True}
    g = torch.Generator().manual_seed(2)
    batches = [{"image": torch.rand(8, 1, 16, 16, generator=g), "label": torch.full((8,), -1),
                "mask": torch.randint(0, 3, (8, 16, 16), generator=g)} for _ in range(2)]
    changed = {}
    for cls in (DenseProbe, DenseFineTune):
        model = cls(**args)
        before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
        trainer = _trainer(2)
        trainer.fit(model, train_dataloaders=DataLoader(batches, batch_size=None),
                    val_dataloaders=DataLoader(batches, batch_size=None))
        changed[cls] = [k for k, v in model.backbone.state_dict().items() if not torch.equal(v, before[k])]
        assert 0 <= float(trainer.callback_metrics["val/miou"]) <= 1
    assert changed[DenseProbe] == []  # frozen: weights and BN statistics as loaded
    assert any(k.endswith("weight") for k in changed[DenseFineTune])
    assert any(k.endswith("running_mean") for k in changed[DenseFineTune])  # the backbone's BN trains too
    head = {id(p) for p in model.head.parameters()}
    groups = trainer.optimizers[0].param_groups
    head_lrs = {g["initial_lr"] for g in groups if id(g["params"][0]) in head}
    backbone_lrs = {g["initial_lr"] for g in groups if id(g["params"][0]) not in head}
    assert len(head_lrs) == len(backbone_lrs) == 1  # default backbone_lr_scale 0.1
    assert backbone_lrs.pop() == pytest.approx(0.1 * head_lrs.pop())
    with pytest.raises(ConfigError, match="cache_features"):
        DenseFineTune(cache_features=True, **args)


def test_evaluations_feed_a_backbone_the_normalisation_it_was_pretrained_with(tiny_ckpt, tmp_path):
    """A checkpoint records its views' mean/std; kNN's data, the probes' and fine-tuning's default views apply it,
    and views that set their own keep theirs (SwAV's MNIST recipe lost 0.03 kNN when `selfsup knn` forgot it)."""
    from selfsup.data import SSLDataModule
    from selfsup.data.views import EvalView
    from selfsup.eval.checkpoint import backbone_spec
    from selfsup.eval.finetune import FineTune
    from selfsup.eval_commands import _backbone_for

    norm = ((0.1307,), (0.3081,))
    ckpt = load_checkpoint(tiny_ckpt)
    ckpt["eval_transform"] = {"media": "image", "channels": 1, "size": 16, "resize": 16, "mean": [0.1307],
                              "std": [0.3081]}
    path = tmp_path / "normalised.ckpt"
    torch.save(ckpt, path)
    assert backbone_spec(load_checkpoint(path)).normalization == norm
    assert backbone_spec(load_checkpoint(tiny_ckpt)).normalization is None  # SimCLR's [0, 1] inputs

    data = SSLDataModule("builtin:mnist5k", num_workers=0)
    assert data.eval_transform().normalization is None
    _backbone_for(path, data)
    assert data.eval_transform().normalization == norm
    data.views = EvalView(28, normalization=((0.5,), (0.5,)))
    assert data.eval_transform().normalization == ((0.5,), (0.5,))  # the config's own wins

    probe = LinearProbe(init_from=str(path), in_channels=1, num_classes=10)
    assert probe.default_views(28).normalization == norm
    tune = FineTune(init_from=str(path), in_channels=1, num_classes=10, layer_decay=1.0)
    assert tune.default_views(28).normalization == norm
    assert LinearProbe(init_from=str(tiny_ckpt), in_channels=1, num_classes=10).default_views(28).normalization is None


def test_a_block_probe_reads_the_pooled_map_of_that_block_and_adds_no_state(tiny_ckpt):
    from selfsup.eval.blocks import BlockFeatures

    probe = LinearProbe(init_from=str(tiny_ckpt), in_channels=1, num_classes=3, block=2, block_grid=2)
    assert probe.features.num_features == 32 * 2 * 2  # stage 2 of a width-16 ResNet-18: 32 channels
    pooled = LinearProbe(init_from=str(tiny_ckpt), in_channels=1, num_classes=3)
    assert probe.state_dict().keys() == pooled.state_dict().keys()  # the backbone once, and the head
    x = torch.rand(2, 1, 16, 16)
    b = probe.backbone
    with torch.no_grad():
        expected = b.layer2(b.layer1(b.maxpool(b.relu(b.bn1(b.conv1(x))))))
        assert torch.allclose(probe.features(x), torch.nn.functional.adaptive_avg_pool2d(expected, 2).flatten(1))
    assert probe(x).shape == (2, 3)
    _trainer(2).fit(probe, train_dataloaders=DataLoader(_image_batches(2), batch_size=None))
    with pytest.raises(ConfigError, match="model.block must be 0 .the stem. to 4"):
        BlockFeatures(b, 5)
    with pytest.raises(ConfigError, match="model.block needs a ResNet backbone"):
        BlockFeatures(build_backbone("vit_tiny", in_channels=1, image_size=16, patch_size=4), 1)
