"""iBOT: blockwise masks, the masked patch-token loss and its centre (formulas written out here), 2 ranks x N ==
1 rank x 2N."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from selfsup.data.masking import BlockMaskGenerator
from selfsup.errors import ConfigError
from selfsup.losses import centered_targets, masked_patch_loss, updated_center
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
    got = masked_patch_loss(student, targets(teacher, centre, 0.05), masks, student_temp=0.2)
    assert abs(got.item() - reference_loss(student, teacher, masks, centre, 0.05, 0.2)) < 1e-5


def test_only_masked_patches_count_and_an_unmasked_image_adds_0_to_the_batch_mean():
    student, teacher, masks = logits_and_masks()
    for s in student:
        s.requires_grad_(True)
    probs = targets(teacher, torch.zeros(5), 0.07)
    loss = masked_patch_loss(student, probs, masks)
    loss.backward()
    visible = masks[0].flatten(1) == 0
    assert student[0].grad[visible].abs().max() == 0 and student[0].grad[~visible].abs().min() > 0
    # the unmasked image 0 of crop 0 stays in the mean with 0: dropping it would divide by 3, not 4
    kept = masked_patch_loss([student[0][1:]], [probs[0][1:]], [masks[0][1:]])
    alone = masked_patch_loss(student[:1], probs[:1], masks[:1])
    assert abs(alone.item() - kept.item() * 3 / 4) < 1e-6


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
    loss = masked_patch_loss(student(features).unbind(), targets(logits, centre, 0.04), masks)  # one DDP forward
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
