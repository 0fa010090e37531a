"""PixPro: the loss and its positive pairs against docs/methods/pixpro.md, pixel propagation, coordinate-tracking
views, the momentum schedule and update, PixPro's LARS, checkpoints, and the CLI."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn

from clirun import REPO, selfsup
from selfsup.data import SSLDataModule
from selfsup.data.batch_augment import random_solarize, resized_crops
from selfsup.data.coord_views import CoordViews, normalized_boxes
from selfsup.heads import MLP2d, PixelPropagation
from selfsup.losses.pixpro import bin_centres, pixel_consistency, pixpro_loss, positive_pixel_pairs
from selfsup.methods import PixPro
from selfsup.momentum import cosine_momentum, ema_update_, momentum_copy
from selfsup.optim import LARS

S = 7  # feature-map side, as ResNet-50's C5 at 224 px
TINY = {"backbone": "resnet18", "backbone_args": {"width": 4, "cifar_stem": True}, "in_channels": 1,
        "proj_hidden_dim": 16, "proj_dim": 8}


def unit_map(b: int = 2, c: int = 16, s: int = S, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, c, s, s, generator=torch.Generator().manual_seed(seed))


def box(x0: float, y0: float, x1: float, y1: float, b: int = 2) -> torch.Tensor:
    return torch.tensor([[x0, y0, x1, y1]], dtype=torch.float64).repeat(b, 1)


# ---- the loss -----------------------------------------------------------------------------------------------
def test_identical_views_give_minus_two_per_direction():
    x, b = unit_map(), box(0.1, 0.2, 0.8, 0.9)
    mask = positive_pixel_pairs(b, b, S, S)
    assert pixel_consistency(x, x, mask).item() == pytest.approx(-2, abs=1e-5)
    assert pixpro_loss(x, x, x, x, b, b).item() == pytest.approx(-4, abs=1e-5)


def test_identical_crops_pair_only_exactly_aligned_bins():
    b = box(0.1, 0.2, 0.8, 0.9)  # square bins: a side neighbour is 1/sqrt(2) = 0.707 diagonals away
    mask = positive_pixel_pairs(b, b, S, S)
    assert torch.equal(mask, torch.eye(S * S, dtype=torch.bool).expand(2, -1, -1))
    assert positive_pixel_pairs(b, b, S, S, threshold=0.71).sum(dim=(1, 2)).tolist() == [S * S + 4 * S * (S - 1)] * 2


def test_flipped_view_with_swapped_coordinates_gives_minus_two_and_without_the_swap_does_not():
    x, b = unit_map(), box(0.1, 0.2, 0.8, 0.9)
    mirrored = x.flip(-1)  # the map of the mirrored view
    swapped = b[:, [2, 1, 0, 3]]
    assert pixel_consistency(x, mirrored, positive_pixel_pairs(b, swapped, S, S)).item() == pytest.approx(-2, abs=1e-5)
    unswapped = pixel_consistency(x, mirrored, positive_pixel_pairs(b, b, S, S)).item()
    assert unswapped > -1.9
    assert positive_pixel_pairs(b, swapped, S, S)[0].float().argmax(1).tolist() == [
        r * S + (S - 1 - c) for r in range(S) for c in range(S)]  # pixel (r, c) pairs with (r, S-1-c)


def test_image_pair_without_overlap_contributes_zero_but_counts_in_the_mean():
    x = unit_map()
    b1 = box(0.0, 0.0, 0.4, 0.4)
    b2 = torch.cat([box(0.0, 0.0, 0.4, 0.4, 1), box(0.6, 0.6, 1.0, 1.0, 1)])  # image 1: no shared pixels
    mask = positive_pixel_pairs(b1, b2, S, S)
    assert mask[1].sum() == 0
    assert pixel_consistency(x, x, mask).item() == pytest.approx(-1, abs=1e-5)  # (-2 + 0) / 2


def reference_mask(bq: list[float], bk: list[float], s: int, threshold: float) -> torch.Tensor:
    """docs/methods/pixpro.md's positive pairs, pixel by pixel in plain Python."""

    def centres(bx):
        bw, bh = (bx[2] - bx[0]) / s, (bx[3] - bx[1]) / s
        points = [((c + 0.5) * bw + bx[0], (r + 0.5) * bh + bx[1]) for r in range(s) for c in range(s)]
        return points, math.hypot(bw, bh)

    cq, dq = centres(bq)
    ck, dk = centres(bk)
    return torch.tensor([[math.dist(p, q) / max(dq, dk) < threshold for q in ck] for p in cq])


def test_positive_pairs_and_masked_mean_match_a_pixel_loop():
    g = torch.Generator().manual_seed(3)
    corners = torch.rand(4, 2, 2, generator=g, dtype=torch.float64).sort(dim=1).values  # (B, [lo, hi], xy)
    bq = torch.cat([corners[:, 0], corners[:, 1]], dim=1)
    bk = (bq + 0.15 * torch.randn(4, 4, generator=g, dtype=torch.float64)).clamp(0, 1)
    bk[1] = bk[1, [2, 1, 0, 3]]  # one mirrored key view
    mask = positive_pixel_pairs(bq, bk, 5, 5)
    for n in range(4):
        assert torch.equal(mask[n], reference_mask(bq[n].tolist(), bk[n].tolist(), 5, 0.7))
    assert mask.any()
    p, k = unit_map(4, 6, 5, seed=1), unit_map(4, 6, 5, seed=2)
    expected = 0.0
    for n in range(4):
        pn, kn = F.normalize(p[n].flatten(1), dim=0), F.normalize(k[n].flatten(1), dim=0)
        m = mask[n].float()
        expected += (m * (pn.T @ kn)).sum() / (m.sum() + 1e-6)
    assert pixel_consistency(p, k, mask).item() == pytest.approx(-2 * expected.item() / 4, abs=1e-5)


def test_bin_centres_of_a_mirrored_box_run_right_to_left():
    c = bin_centres(box(0.0, 0.0, 1.0, 1.0, 1)[:, [2, 1, 0, 3]], 2, 2)[0]
    assert torch.allclose(c, torch.tensor([[0.75, 0.25], [0.25, 0.25], [0.75, 0.75], [0.25, 0.75]], dtype=c.dtype))


# ---- heads ----------------------------------------------------------------------------------------------------
def test_pixel_propagation_matches_a_pixel_loop():
    x = unit_map(2, 5, 3)
    ppm = PixelPropagation(5, transform_layers=1, gamma=2.0)
    out = ppm(x)
    for n in range(2):
        cols = x[n].flatten(1).T  # (9, 5)
        v = F.normalize(ppm.transform(x[n : n + 1]).flatten(2)[0].T, dim=1)
        for i in range(9):
            y = sum(max(0.0, F.cosine_similarity(cols[i], cols[j], dim=0).item()) ** 2 * v[j] for j in range(9))
            assert torch.allclose(out[n].flatten(1)[:, i], F.normalize(y, dim=0), atol=1e-5)


def test_propagation_transforms_and_2d_mlp():
    assert isinstance(PixelPropagation(4, 0).transform, nn.Identity)
    assert isinstance(PixelPropagation(4, 2).transform, MLP2d)
    with pytest.raises(ValueError):
        PixelPropagation(4, 3)
    assert MLP2d([8, 32, 4])(torch.rand(2, 8, 3, 3)).shape == (2, 4, 3, 3)


def conv_mlp2d(dims: list[int]) -> nn.Sequential:
    """The official form of PixPro's 2-D MLP: 1x1 convs with bias, hidden ones followed by BN2d and ReLU."""
    layers: list[nn.Module] = []
    for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Conv2d(d_in, d_out, kernel_size=1))
        if i < len(dims) - 2:
            layers += [nn.BatchNorm2d(d_out), nn.ReLU()]
    return nn.Sequential(*layers)


def test_2d_mlp_equals_the_official_1x1_conv_stack_and_loads_its_checkpoints():
    torch.manual_seed(0)
    conv = conv_mlp2d([8, 32, 32, 4])
    x = torch.randn(3, 8, 4, 5)
    for _ in range(3):  # train mode: batch statistics, and running statistics that include the hidden biases
        conv(x)
    conv.eval()
    mlp = MLP2d([8, 32, 32, 4])
    mlp.load_state_dict(conv.state_dict())  # 4-D weights flattened, hidden biases folded into BN running means
    mlp.eval()
    assert torch.allclose(mlp(x), conv(x), atol=1e-5)
    conv.train(), mlp.train()
    assert torch.allclose(mlp(x), conv(x), atol=1e-5)


# ---- views ----------------------------------------------------------------------------------------------------
def test_box_normalisation_and_flip_swap():
    pixels = torch.tensor([[2.0, 4.0, 12.0, 10.0]])  # x0, y0, x1, y1 end-exclusive in a 21 x 11 (W x H) image
    got = normalized_boxes(pixels, 11, 21, torch.tensor([False]))
    assert torch.allclose(got, torch.tensor([[2 / 20, 4 / 10, 11 / 20, 9 / 10]]))
    assert torch.allclose(normalized_boxes(pixels, 11, 21, torch.tensor([True])), got[:, [2, 1, 0, 3]])


def plain_views(**kw) -> CoordViews:
    return CoordViews(size=16, jitter_p=0.0, grayscale_p=0.0, blur_p=(0, 0), solarize_p=(0, 0), mean=None,
                      std=None, **kw)


def test_each_view_is_the_crop_its_box_names():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (6, 1, 28, 28), dtype=torch.uint8)
    out = plain_views(scale=(0.2, 1.0), flip_p=0.5).batch(images)
    assert [v.shape for v in out["views"]] == [(6, 1, 16, 16)] * 2 and [b.shape for b in out["boxes"]] == [(6, 4)] * 2
    flips = 0
    for view, boxes in zip(out["views"], out["boxes"]):
        flipped = boxes[:, 0] > boxes[:, 2]
        flips += int(flipped.sum())
        x0, x1 = torch.minimum(boxes[:, 0], boxes[:, 2]), torch.maximum(boxes[:, 0], boxes[:, 2])
        pixels = torch.stack([x0 * 27, boxes[:, 1] * 27, x1 * 27 + 1, boxes[:, 3] * 27 + 1], dim=1).round()
        crops = resized_crops(images.float() / 255, pixels, 16).clamp(0, 1)
        expected = torch.where(flipped[:, None, None, None], crops.flip(-1), crops)
        assert torch.allclose(view, expected, atol=1e-6)
    assert 0 < flips < 12


def test_views_cut_while_decoding_are_the_crops_their_boxes_name_in_images_of_any_size():
    """The fused decode + crop (loader workers): PNGs of three sizes; each view is the uint8 crop of the pixel box
    its normalised coordinates name, mirrored where x0 > x1."""
    import io
    import random

    import numpy as np
    from PIL import Image

    from selfsup.data.crops import collate_crops, crop_resize, decode_crops

    views = plain_views(scale=(0.2, 1.0), flip_p=0.5)
    images, cropped = [], []
    for i, (h, w) in enumerate([(20, 31), (28, 28), (40, 17)]):
        pixels = np.random.default_rng(i).integers(0, 256, (h, w, 1), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(pixels[:, :, 0]).save(buf, "PNG")
        images.append(pixels)
        cropped.append(decode_crops(buf.getvalue(), 1, views.crop_specs, random.Random(i + 3)))
    out = views.from_crops(collate_crops(cropped))
    flips = 0
    for view, boxes in zip(out["views"], out["boxes"]):
        for pixels, v, box in zip(images, view, boxes):
            h, w = pixels.shape[:2]
            flipped = bool(box[0] > box[2])
            flips += flipped
            x0, x1 = sorted((float(box[0]), float(box[2])))
            pixel_box = [round(x0 * (w - 1)), round(float(box[1]) * (h - 1)), round(x1 * (w - 1)) + 1,
                         round(float(box[3]) * (h - 1)) + 1]
            expected, _ = crop_resize(pixels, pixel_box, 16, flipped)
            assert torch.allclose(v, torch.from_numpy(expected).permute(2, 0, 1) / 255, atol=1e-6)
    assert 0 < flips < 6


def test_whole_image_crop_has_the_unit_box_and_a_flip_swaps_x():
    images = torch.randint(0, 256, (3, 1, 16, 16), dtype=torch.uint8)
    kept = plain_views(scale=(1, 1), ratio=(1, 1), flip_p=0.0).batch(images)
    assert torch.equal(kept["boxes"][0], torch.tensor([[0.0, 0, 1, 1]] * 3))
    assert torch.allclose(kept["views"][0], images / 255, atol=1e-6)
    mirrored = plain_views(scale=(1, 1), ratio=(1, 1), flip_p=1.0).batch(images)
    assert torch.equal(mirrored["boxes"][1], torch.tensor([[1.0, 0, 0, 1]] * 3))
    assert torch.allclose(mirrored["views"][1], images.flip(-1) / 255, atol=1e-6)


def test_per_image_call_gives_one_sample_with_its_boxes():
    out = CoordViews(size=16)(torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8))
    assert [v.shape for v in out["views"]] == [(3, 16, 16)] * 2 and [b.shape for b in out["boxes"]] == [(4,)] * 2


def test_solarize_inverts_values_at_or_above_half():
    x = torch.tensor([0.0, 0.3, 0.5, 0.9]).view(1, 1, 1, 4)
    assert torch.allclose(random_solarize(x, 1.0), torch.tensor([0.0, 0.3, 0.5, 0.1]).view(1, 1, 1, 4))
    assert torch.equal(random_solarize(x, 0.0), x)


# ---- momentum -------------------------------------------------------------------------------------------------
def test_momentum_schedule_at_start_middle_and_end():
    k = 1000
    assert cosine_momentum(0, k) == pytest.approx(0.99)
    assert cosine_momentum(k // 2, k) == pytest.approx(0.995)
    assert cosine_momentum(k, k) == pytest.approx(1.0)
    assert cosine_momentum(k // 4, k) == pytest.approx(1 - 0.01 * (math.cos(math.pi / 4) + 1) / 2)


def test_ema_averages_parameters_and_leaves_buffers_alone():
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    target = momentum_copy(online)
    assert all(not p.requires_grad for p in target.parameters())
    with torch.no_grad():
        for p in online.parameters():
            p.add_(1.0)
    target[1].running_mean.fill_(7.0)
    before = [p.clone() for p in target.parameters()]
    ema_update_(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o)
    assert torch.equal(target[1].running_mean, torch.full((4,), 7.0))


def attach_fake_trainer(model: PixPro, **attrs) -> PixPro:
    model._trainer = SimpleNamespace(**{"world_size": 1, "current_epoch": 0, "global_step": 0,
                                        "estimated_stepping_batches": 10, **attrs})
    return model


def fake_batch(b: int = 4, size: int = 16) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"views": [torch.rand(b, 1, size, size, generator=g) for _ in range(2)],
            "boxes": [box(0.0, 0.0, 1.0, 1.0, b).float(), box(0.1, 0.1, 0.9, 0.9, b).float()],
            "label": torch.zeros(b, dtype=torch.long)}


@pytest.mark.parametrize("instance_weight", [0.0, 1.0])
def test_step_updates_the_momentum_copies_first_and_sends_no_gradient_to_them(instance_weight):
    model = attach_fake_trainer(PixPro(instance_weight=instance_weight, **TINY), global_step=5)
    with torch.no_grad():
        for p in [*model.backbone.parameters(), *model.projector.parameters()]:
            p.add_(0.05)
    pairs = model.momentum_pairs()
    assert len(pairs) == (3 if instance_weight else 2)
    expected = [[0.0 + cosine_momentum(5, 10) * t + (1 - cosine_momentum(5, 10)) * o
                 for t, o in zip(target.parameters(), online.parameters())] for target, online in pairs]
    out = model.ssl_step(fake_batch())
    for (target, _), want in zip(pairs, expected):
        for t, w in zip(target.parameters(), want):
            assert torch.allclose(t, w)
    out.loss.backward()
    assert out.logs["train/momentum"].item() == pytest.approx(0.995)
    assert all(p.grad is None for target, _ in pairs for p in target.parameters())
    assert model.backbone.conv1.weight.grad is not None and model.propagation.transform.weight.grad is not None
    assert out.features.shape == (4, model.backbone.num_features)
    assert ("train/instance_loss" in out.logs) == bool(instance_weight)


def test_accumulated_micro_batches_of_one_optimizer_step_average_the_copies_once():
    model = attach_fake_trainer(PixPro(**TINY), global_step=5)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.05)
    tau = cosine_momentum(5, 10)
    once = [tau * t + (1 - tau) * o for t, o in zip(model.momentum_backbone.parameters(), model.backbone.parameters())]
    for _ in range(3):  # three micro-batches, no optimizer step between them
        model.ssl_step(fake_batch())
    assert all(torch.allclose(t, w) for t, w in zip(model.momentum_backbone.parameters(), once))
    model._trainer.global_step = 6  # the optimizer stepped: the next micro-batch averages again
    model.ssl_step(fake_batch())
    assert not torch.allclose(next(model.momentum_backbone.parameters()), once[0])


def test_pixpro_lars_matches_a_hand_update_over_three_steps():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 4, dtype=torch.double))
    bias = nn.Parameter(torch.randn(4, dtype=torch.double))
    opt = LARS([{"params": [w], "adapt": True, "weight_decay": 1e-2},
                {"params": [bias], "adapt": False, "weight_decay": 0.0}], lr=0.5, variant="pixpro")
    ref, buf = w.detach().clone(), torch.zeros(3, 4, dtype=torch.double)
    ref_b, buf_b = bias.detach().clone(), torch.zeros(4, dtype=torch.double)
    for lr in (0.5, 0.25, 0.1):  # a schedule: the lr multiplies the buffer
        for group in opt.param_groups:
            group["lr"] = lr
        g, gb = torch.randn(3, 4, dtype=torch.double), torch.randn(4, dtype=torch.double)
        w.grad, bias.grad = g.clone(), gb.clone()
        opt.step()
        decayed = g + 1e-2 * ref
        buf = 0.9 * buf + decayed * 1e-3 * ref.norm() / (decayed.norm() + 1e-8)
        ref = ref - lr * buf
        buf_b = 0.9 * buf_b + gb  # 1-D: no decay, no adaptation
        ref_b = ref_b - lr * buf_b
        assert torch.allclose(w.detach(), ref, atol=1e-12)
        assert torch.allclose(bias.detach(), ref_b, atol=1e-12)


# ---- training, checkpoints, CLI ---------------------------------------------------------------------------------
def fit_tiny(tmp_path, max_epochs: int, ckpt_path: str | None = None) -> tuple[PixPro, L.Trainer]:
    L.seed_everything(0)
    model = PixPro(batch_size=8, optimizer="lars_pixpro", lr=1.0, warmup_epochs=1, warmup_start_factor=0.01, **TINY)
    views = CoordViews(size=16, scale=(0.3, 1), mean=None, std=None)
    data = SSLDataModule("builtin:mnist5k", batch_size=8, num_workers=0, views=views)
    trainer = L.Trainer(max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)])
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return model, trainer


@pytest.mark.slow
def test_momentum_copies_stay_out_of_the_optimizer_and_survive_a_checkpoint(mnist5k, tmp_path):
    model, trainer = fit_tiny(tmp_path, max_epochs=1)
    optimized = {id(p) for group in trainer.optimizers[0].param_groups for p in group["params"]}
    momentum = [p for target, _ in model.momentum_pairs() for p in target.parameters()]
    assert optimized.isdisjoint(id(p) for p in momentum)
    assert optimized >= {id(p) for p in model.backbone.parameters()}
    assert not torch.equal(model.momentum_backbone.conv1.weight, model.backbone.conv1.weight)  # moved slowly
    state = torch.load(tmp_path / "ckpt/last.ckpt", weights_only=False)["state_dict"]
    for name, value in model.momentum_backbone.state_dict().items():
        assert torch.equal(state[f"momentum_backbone.{name}"], value), name
    resumed, _ = fit_tiny(tmp_path, max_epochs=1, ckpt_path="last")  # restores, nothing left to train
    assert torch.equal(resumed.momentum_backbone.conv1.weight, model.momentum_backbone.conv1.weight)
    assert torch.equal(resumed.momentum_projector[0].weight, model.momentum_projector[0].weight)


@pytest.mark.slow
def test_fit_of_the_mnist_recipe_logs_the_pixel_loss_and_knn(mnist5k, tmp_path):
    selfsup("fit", "-c", str(REPO / "experiments/pixpro/mnist5k.yaml"),
            "--model.init_args.backbone_args", "{width: 4, cifar_stem: true}", "--data.init_args.batch_size", "32",
            "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
            "--trainer.log_every_n_steps", "1", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    run = next((tmp_path / "runs/pixpro-mnist5k").glob("version_*"))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    for name in ("train/pixel_loss_step", "train/momentum_step", "train/probe_top1_step", "knn/top1"):
        assert any(row.get(name) for row in rows), name
    losses = [float(row["train/pixel_loss_step"]) for row in rows if row.get("train/pixel_loss_step")]
    assert len(losses) == 3 and all(-4 <= v <= 4 for v in losses)


def test_imagenet_recipe_parses_with_the_official_values(tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/pixpro/imagenet-resnet50.yaml"), "--print_config",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("class_path: selfsup.methods.PixPro", "backbone: resnet50", "optimizer: lars_pixpro", "lr: 1.0",
                 "weight_decay: 1.0e-05", "max_epochs: 400", "batch_size: 128", "devices: 8", "warmup_epochs: 5.0",
                 "warmup_start_factor: 0.01", "proj_hidden_dim: 4096",
                 "class_path: selfsup.data.coord_views.CoordViews"):
        assert line in proc.stdout, line
