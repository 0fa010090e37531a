"""iBOT: blockwise masks, the masked patch-token loss and its centre (formulas written out here), 2 ranks x N ==
1 rank x 2N."""

from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clirun import REPO, printed_config, selfsup
from selfsup.data.masking import BlockMaskGenerator, iBOTViews
from selfsup.errors import ConfigError
from selfsup.losses import centered_targets, masked_patch_loss, updated_center
from selfsup.methods import iBOT
from test_dino import CLI_TINY
from test_distributed import free_port


# ---- blockwise masks ----------------------------------------------------------------------------------------
def masked_counts(masks: torch.Tensor) -> torch.Tensor:
    return masks.flatten(1).sum(dim=1)


@pytest.mark.parametrize(("grid", "ratio"), [(14, 0.1), (14, 0.3), (14, 0.5), (7, 0.3)])
def test_a_fixed_ratio_masks_at_most_its_share_and_close_to_it(grid, ratio):
    masks = BlockMaskGenerator(grid, [ratio], [0.0]).batch(300, torch.Generator().manual_seed(0))
    counts = masked_counts(masks)
    assert masks.shape == (300, grid, grid) and masks.dtype == torch.uint8
    assert counts.max() <= math.floor(ratio * grid * grid)  # never beyond the target
    assert counts.float().mean() >= 0.75 * ratio * grid * grid  # blocks get close to it (measured: 77-99%)


def test_one_block_has_the_drawn_area_and_aspect():
    # area U(16, 16) = 16 and aspect 4 (height / width): an 8 x 2 block masks the whole 16-patch target
    masks = BlockMaskGenerator(14, [16 / 196], [0.0], aspect=(4, 4), min_area=16).batch(
        20, torch.Generator().manual_seed(1))
    for mask in masks:
        rows, cols = mask.nonzero().unbind(1)
        assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (8, 2) and mask.sum() == 16


def test_the_recipe_ratios_leave_about_half_the_images_unmasked_and_mask_the_rest_at_10_to_50_percent():
    masks = BlockMaskGenerator(14).batch(400, torch.Generator().manual_seed(2))
    share = masked_counts(masks) / 196
    assert 0.42 < (share == 0).float().mean() < 0.58  # binomial(400, 0.5): 0.5 +- 3.2 sigma
    masked = share[share > 0]
    assert masked.max() <= 0.5 and masked.min() >= 0.05 and masked.mean() > 0.25  # U(0.1, 0.5), rounded down


def test_masks_are_reproducible_from_a_generator():
    make = BlockMaskGenerator(7)
    first, again = (make.batch(16, torch.Generator().manual_seed(3)) for _ in range(2))
    assert torch.equal(first, again)
    assert not torch.equal(first, make.batch(16, torch.Generator().manual_seed(4)))


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"ratio": [0.3], "ratio_var": [0.1, 0.2]}, "one mask ratio_var per mask ratio"),
    ({"ratio": [0.3], "ratio_var": [0.4]}, "must lie in [0, 1)"),
    ({"aspect": [3.0, 0.3]}, "0 < low <= high"),
])
def test_bad_mask_settings_are_named(kwargs, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        BlockMaskGenerator(14, **kwargs)


# ---- the masked patch loss and its centre ---------------------------------------------------------------------
def targets(teacher, centre, temp) -> list[torch.Tensor]:
    return [centered_targets(t, centre, temp) for t in teacher]


def at_masked(tensors, masks) -> list[torch.Tensor]:
    """The (M, K) rows of each (B, N, K) tensor at its crop's masked patches, image by image."""
    return [t[m.flatten(1).bool()] for t, m in zip(tensors, masks)]


def reference_loss(student, teacher, masks, centre, t_temp, s_temp=0.1) -> float:
    """Image by image, patch by patch, in float64."""
    crops = []
    for s_crop, t_crop, m_crop in zip(student, teacher, masks):
        images = []
        for s_img, t_img, m_img in zip(s_crop.double(), t_crop.double(), m_crop.flatten(1)):
            terms = []
            for s_patch, t_patch, masked in zip(s_img, t_img, m_img):
                if masked:
                    target = torch.softmax((t_patch - centre.double()) / t_temp, 0)
                    terms.append(-(target * torch.log_softmax(s_patch / s_temp, 0)).sum().item())
            images.append(sum(terms) / max(len(terms), 1))
        crops.append(sum(images) / len(images))
    return sum(crops) / len(crops)


def logits_and_masks(b: int = 4, h: int = 3, k: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(b, h * h, k, generator=g) for _ in range(2)]
    teacher = [torch.randn(b, h * h, k, generator=g) for _ in range(2)]
    masks = [(torch.rand(b, h, h, generator=g) < 0.4).to(torch.uint8) for _ in range(2)]
    masks[0][0] = 0  # an image without a masked patch
    return student, teacher, masks


def test_the_loss_matches_the_formula_image_by_image():
    student, teacher, masks = logits_and_masks()
    centre = torch.randn(5)
    probs = targets(at_masked(teacher, masks), centre, 0.05)
    got = masked_patch_loss(at_masked(student, masks), probs, masks, student_temp=0.2)
    assert abs(got.item() - reference_loss(student, teacher, masks, centre, 0.05, 0.2)) < 1e-5


def test_an_unmasked_image_adds_0_to_the_batch_mean():
    student, teacher, masks = logits_and_masks()
    student, probs = at_masked(student, masks), targets(at_masked(teacher, masks), torch.zeros(5), 0.07)
    # the unmasked image 0 of crop 0 has no rows but stays in the mean with 0: dropping it would divide by 3, not 4
    rest = masks[0][1:]
    kept = masked_patch_loss([student[0]], [probs[0]], [rest])
    alone = masked_patch_loss(student[:1], probs[:1], masks[:1])
    assert abs(alone.item() - kept.item() * 3 / 4) < 1e-6 and alone > 0


def test_the_patch_centre_is_the_ema_of_the_mean_over_every_teacher_patch():
    _, teacher, _ = logits_and_masks()
    centre = torch.randn(1, 5)
    mean = torch.cat([t.reshape(-1, 5) for t in teacher]).mean(dim=0)
    assert torch.allclose(updated_center(centre, torch.stack(teacher), 0.9), 0.9 * centre + 0.1 * mean, atol=1e-6)


# ---- 2 ranks x N == 1 rank x 2N -------------------------------------------------------------------------------
N, PATCHES, DIM, K = 6, 4, 8, 16


def problem() -> tuple[nn.Module, nn.Module, torch.Tensor, list[torch.Tensor], torch.Tensor]:
    """A student and a fixed teacher head on the patch features of 2 globals of 2N images, masks (image 0 and
    N of each crop unmasked) and a non-zero centre."""
    torch.manual_seed(0)
    student, teacher = nn.Linear(DIM, K), nn.Linear(DIM, K).requires_grad_(False)
    features = torch.randn(2, 2 * N, PATCHES, DIM)
    masks = [(torch.rand(2 * N, 2, 2) < 0.5).to(torch.uint8) for _ in range(2)]
    for m in masks:
        m[[0, N]] = 0
    return student, teacher, features, masks, torch.randn(K)


def step(student, teacher, features, masks, centre) -> tuple[torch.Tensor, torch.Tensor]:
    logits = teacher(features).unbind()
    loss = masked_patch_loss(at_masked(student(features).unbind(), masks), targets(at_masked(logits, masks), centre,
                             0.04), masks)  # one DDP forward
    return loss, updated_center(centre, torch.stack(logits))


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        student, teacher, features, masks, centre = problem()
        rows = slice(rank * N, (rank + 1) * N)
        ddp = DistributedDataParallel(student)  # kept alive: its reducer averages the gradients in backward
        loss, new_centre = step(ddp, teacher, features[:, rows], [m[rows] for m in masks], centre)
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        torch.save({"loss": mean_loss / world, "centre": new_centre, "grads": [p.grad for p in student.parameters()]},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_loss_centre_and_gradients_of_one_rank(tmp_path):
    student, teacher, features, masks, centre = problem()
    loss, new_centre = step(student, teacher, features, masks, centre)
    loss.backward()
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    for result in (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)):
        assert abs(result["loss"].item() - loss.item()) < 1e-5
        assert torch.allclose(result["centre"], new_centre, atol=1e-6)
        for got, p in zip(result["grads"], student.parameters()):
            assert torch.allclose(got, p.grad, rtol=1e-4, atol=1e-7), (got - p.grad).abs().max()
    # a rank's own rows alone would give another centre: the all-reduce matters
    assert not torch.allclose(step(student, teacher, features[:, :N], [m[:N] for m in masks], centre)[1], new_centre)


# ---- the method ------------------------------------------------------------------------------------------------
SMALL = {"backbone": "vit_tiny", "backbone_args": {"image_size": 16, "num_layers": 1, "hidden_dim": 16,
                                                    "mlp_dim": 32, "pool": "cls"},
         "in_channels": 1, "num_classes": 0, "head_hidden_dim": 16, "bottleneck_dim": 8}


def small_ibot(**kwargs) -> iBOT:
    return iBOT(**{"out_dim": 32, "patch_out_dim": 32, **SMALL, **kwargs})


def views_batch(b: int = 6, locals_: int = 2) -> dict:
    views = iBOTViews(4, global_size=16, local_size=8, num_local=locals_, mean=[0.5], std=[0.25])
    images = torch.randint(0, 256, (b, 1, 20, 20), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    torch.manual_seed(0)
    batch = views.batch(images)
    batch["masks"][0][0] = 0
    batch["masks"][0][1, :2, :2] = 1  # image 1 of the first global crop: masked, whatever the draw
    return batch


def spy_tokens(monkeypatch, backbone, calls: list) -> None:
    tokens = backbone.tokens

    def recording(x, mask=None, keep=None):
        calls.append((tuple(x.shape), None if mask is None else mask.clone()))
        return tokens(x, mask, keep)

    monkeypatch.setattr(backbone, "tokens", recording)


def test_the_student_sees_its_globals_masked_the_teacher_unmasked_and_no_local_crop(monkeypatch):
    model, batch = small_ibot(), views_batch()
    student, teacher = [], []
    spy_tokens(monkeypatch, model.backbone, student)
    spy_tokens(monkeypatch, model.momentum_backbone, teacher)
    model.ssl_step(batch)
    assert [shape for shape, _ in teacher] == [(12, 1, 16, 16)] and teacher[0][1] is None  # both globals, unmasked
    assert student[0][0] == (12, 1, 16, 16) and torch.equal(student[0][1], torch.cat(batch["masks"]))
    assert [(shape, mask) for shape, mask in student[1:]] == [((12, 1, 8, 8), None)]  # the locals, one forward


def test_the_loss_is_dinos_plus_the_patch_term_with_last_steps_patch_centre():
    model, batch = small_ibot(teacher_patch_temp=0.05, warmup_teacher_patch_temp=0.05), views_batch()
    centre = torch.randn(1, 32)
    model.patch_center.copy_(centre)
    with torch.no_grad():
        student = model.student_outputs(batch["views"], batch["masks"])
        teacher = model.teacher_outputs(batch["views"][:2])
    out = model.ssl_step(batch)
    probs = targets(at_masked(teacher.patch_logits, batch["masks"]), centre, 0.05)
    want = masked_patch_loss(student.patch_logits, probs, batch["masks"])
    assert out.logs["train/loss_patch"].item() == pytest.approx(want.item(), rel=1e-5)  # the previous centre
    assert out.loss.item() == pytest.approx(out.logs["train/loss_dino"].item() + want.item(), rel=1e-5)
    assert torch.allclose(model.patch_center, updated_center(centre, torch.cat(teacher.patch_logits)), atol=1e-6)
    with torch.no_grad():  # the student's head runs on the masked patches only, as it would on all of them
        full = model.head(model.backbone.tokens(torch.cat(batch["views"][:2]), torch.cat(batch["masks"]))[:, 1:])
    assert torch.allclose(torch.cat(student.patch_logits), full[torch.cat(batch["masks"]).flatten(1).bool()],
                          atol=1e-5)
    assert teacher.patch_logits[0].shape == (6, 16, 32)  # the teacher: every patch of the 4 x 4 grid


def test_an_unmasked_batch_gives_a_zero_patch_term_and_no_gradient_to_the_mask_token():
    model, batch = small_ibot(), views_batch()
    batch["masks"] = [torch.zeros_like(m) for m in batch["masks"]]
    out = model.ssl_step(batch)
    out.loss.backward()
    assert out.logs["train/loss_patch"] == 0 and out.loss > 0
    assert model.backbone.mask_token.grad is None or model.backbone.mask_token.grad.abs().max() == 0


def test_a_separate_patch_layer_is_averaged_into_the_teacher_and_frozen_in_epoch_0():
    model = small_ibot(shared_head=False, patch_out_dim=24, base_momentum=0.5)
    assert model.patch_center.shape == (1, 24) and model.head.patch_layer.weight_v.shape == (24, 8)
    assert not model.momentum_head.patch_layer.weight_v.requires_grad
    model._trainer = SimpleNamespace(current_epoch=0, global_step=0, estimated_stepping_batches=10, world_size=1)
    with torch.no_grad():
        model.head.patch_layer.weight_v.add_(1.0)
    before = model.momentum_head.patch_layer.weight_v.clone()
    out = model.ssl_step(views_batch())
    assert out.logs["train/loss_patch"] > 0
    assert not torch.equal(model.momentum_head.patch_layer.weight_v, before)  # the EMA reached it
    out.loss.backward()
    assert model.head.patch_layer.weight_v.grad is not None
    model.on_before_optimizer_step(None)
    assert model.head.patch_layer.weight_v.grad is None and model.head.last_layer.weight_v.grad is None


@pytest.mark.parametrize(("kwargs", "says"), [
    ({"backbone": "resnet18", "backbone_args": {"width": 4}}, "iBOT masks patch tokens, which 'resnet18' has none"),
    ({"patch_out_dim": 16}, "set patch_out_dim: 32, or shared_head: false"),
    ({"teacher_patch_temp": 0.2}, "model.teacher_patch_temp 0.2 must be in (0, model.student_temp 0.1]"),
    ({"targets": "sinkhorn_knopp"}, "set targets: centering"),
    ({"patch_center_momentum": 1.5}, "model.patch_center_momentum must be in [0, 1]"),
])
def test_bad_options_are_named(kwargs, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        small_ibot(**kwargs)


def test_default_views_mask_the_backbones_patch_grid():
    views = small_ibot().default_views(16)
    batch = views.batch(torch.zeros(3, 1, 16, 16, dtype=torch.uint8))
    assert isinstance(views, iBOTViews) and views.model_patch_size == 4
    assert [m.shape for m in batch["masks"]] == [(3, 4, 4)] * 2 and len(batch["views"]) == 10
    with pytest.raises(ConfigError, match="global_size a multiple of model_patch_size"):
        iBOTViews(16, global_size=28)


# ---- the recipes through the CLI ------------------------------------------------------------------------------
@pytest.mark.slow
def test_mnist_recipe_trains_a_few_steps_and_logs_both_terms(mnist5k, tmp_path):
    selfsup("fit", "-c", str(REPO / "experiments/ibot/mnist5k-vit-tiny.yaml"), *CLI_TINY,
            "--model.init_args.patch_out_dim", "64", cwd=tmp_path)
    run = next((tmp_path / "runs/ibot-mnist5k-vit-tiny").glob("version_*"))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    for name in ("train/loss_dino_step", "train/loss_patch_step", "schedule/teacher_patch_temp"):
        values = [float(r[name]) for r in rows if r.get(name)]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), name
    assert (run / "checkpoints/last.ckpt").is_file()


@pytest.mark.slow
def test_the_paper_recipe_parses_with_the_official_values(tmp_path):
    printed = printed_config("ibot/imagenet-vit-s16", tmp_path)
    for line in ("class_path: selfsup.methods.iBOT", "backbone: vit_s_16", "out_dim: 8192", "shared_head: true",
                 "norm_last_layer: false", "teacher_patch_temp: 0.07", "num_local: 10", "max_epochs: 800"):
        assert line in printed, line
