"""View recipes: the batched SimCLR augmentation against torchvision's per-image operations."""

import math

import torch
from torchvision.transforms.v2 import functional as TF

from selfsup.data.batch_augment import (
    colour_jitter,
    gaussian_blur,
    random_crop_boxes,
    random_grayscale,
    resized_crops,
)
from selfsup.data.views import CropViews, EvalView, SimCLRViews


def test_crop_boxes_follow_the_scale_and_ratio_ranges():
    torch.manual_seed(0)
    boxes = random_crop_boxes(5000, 28, 28, (0.08, 1.0), (3 / 4, 4 / 3))
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 28).all() and (boxes[:, 3] <= 28).all()
    area = w * h / 28**2
    assert area.min() >= 0.06 and area.max() <= 1.0  # 0.08 up to rounding to whole pixels
    assert 0.45 < area.mean() < 0.6  # U(0.08, 1) has mean 0.54
    assert ((w / h).log().abs() <= math.log(4 / 3) + 0.2).all()


def test_full_box_crop_is_the_identity():
    x = torch.rand(3, 2, 12, 12)
    full = torch.tensor([[0.0, 0.0, 12.0, 12.0]] * 3)
    assert torch.allclose(resized_crops(x, full, 12), x, atol=1e-6)


def test_crop_of_a_box_matches_torchvision_on_a_smooth_image():
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    image = (xx * 0.02 + yy * 0.01)[None, None]  # linear ramp: every interpolation agrees
    box = torch.tensor([[4.0, 6.0, 20.0, 22.0]])
    ours = resized_crops(image, box, 8)
    theirs = TF.resized_crop(image, top=6, left=4, height=16, width=16, size=[8, 8], antialias=False)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_each_jitter_operation_equals_torchvision():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    spread = torch.tensor([0.4, 0.4, 0.4])
    for op, reference in ((0, TF.adjust_brightness), (1, TF.adjust_contrast), (2, TF.adjust_saturation)):
        torch.manual_seed(1)
        # Recreate the factors colour_jitter will draw, then force a single operation by zeroing the others.
        only = torch.zeros(3)
        only[op] = spread[op]
        torch.manual_seed(1)
        out = colour_jitter(x, only, p=1.0, hue=0.0)
        torch.manual_seed(1)
        torch.rand(6)  # apply mask
        factors = 1 + (torch.rand(6, 3) * 2 - 1) * only
        expected = torch.stack([reference(x[i], float(factors[i, op])) for i in range(6)])
        assert torch.allclose(out, expected, atol=1e-5), op


def test_blur_equals_torchvision_for_the_drawn_sigma():
    torch.manual_seed(0)
    x = torch.rand(4, 1, 16, 16)
    torch.manual_seed(3)
    out = gaussian_blur(x, 5, (0.1, 2.0), p=1.0)
    torch.manual_seed(3)
    torch.rand(4)
    sigma = torch.empty(4).uniform_(0.1, 2.0)
    expected = torch.stack([TF.gaussian_blur(x[i], [5, 5], [float(sigma[i])] * 2) for i in range(4)])
    assert torch.allclose(out, expected, atol=1e-5)


def test_batched_and_per_image_views_have_the_same_form():
    images = (torch.rand(16, 1, 28, 28) * 255).to(torch.uint8)
    for batched in (True, False):
        recipe = SimCLRViews(28, flip_p=0, blur_p=0.5, batched=batched)
        view1, view2 = recipe.batch(images)["views"]
        assert view1.shape == view2.shape == (16, 1, 28, 28) and view1.dtype == torch.float32
        assert 0 <= view1.min() and view1.max() <= 1 + 1e-5 and not torch.equal(view1, view2)


def test_grayscale_equals_torchvision_and_leaves_one_channel_alone():
    x = torch.rand(4, 3, 6, 6)
    expected = TF.rgb_to_grayscale(x, num_output_channels=3)
    assert torch.allclose(random_grayscale(x, p=1.0), expected, atol=1e-5)
    gray = torch.rand(4, 1, 6, 6)
    assert random_grayscale(gray, p=1.0) is gray


def test_hue_shift_equals_torchvision_per_image():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 8, 8)
    torch.manual_seed(2)
    out = colour_jitter(x, torch.zeros(3), p=1.0, hue=0.4)
    torch.manual_seed(2)
    torch.rand(6)
    torch.rand(6, 3)
    hues = (torch.rand(6) * 2 - 1) * 0.4
    expected = torch.stack([TF.adjust_hue(x[i], float(hues[i])) for i in range(6)])
    assert torch.allclose(out, expected, atol=1e-5)


def test_crop_and_eval_views_hand_their_normalisation_to_evaluation():
    images = (torch.rand(3, 1, 8, 8) * 255).to(torch.uint8)
    crop = CropViews(8, scale=(1, 1), ratio=(1, 1), flip_p=0, mean=[0.5], std=[0.25])
    assert torch.allclose(crop.batch(images)["image"], (images.float() / 255 - 0.5) / 0.25, atol=1e-4)
    assert crop.normalization == ((0.5,), (0.25,)) and CropViews(8).normalization is None
    assert EvalView(8, normalization=([0.5], [0.25])).normalization == ((0.5,), (0.25,))
    assert EvalView(8).normalization is None
