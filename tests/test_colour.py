"""The uint8 (OpenCV) view ops against torchvision's functional ops at the same parameters, and the crop-box
sampler of the fused decode + crop against RandomResizedCrop's."""

import io
import math
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from selfsup.data.colour import ColourAugment, hue_shift, hue_shift_uint8, to_float
from selfsup.data.crops import CropSpec, collate_crops, decode_crops, sample_box


def photo(seed: int = 0, height: int = 48, width: int = 64) -> np.ndarray:
    """A smooth colourful uint8 image (H, W, 3) with some texture: what colour ops are compared on."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 8, generator=g)
    image = torch.nn.functional.interpolate(low, size=(height, width), mode="bicubic", align_corners=False)
    image = image + 0.08 * torch.rand(1, 3, height, width, generator=g)
    return (image.clamp(0, 1)[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()


def max_steps(ours: np.ndarray, reference: torch.Tensor) -> float:
    """Largest difference in uint8 steps between our uint8 image (H, W, C) and a float reference (C, H, W)."""
    return float((torch.from_numpy(ours).permute(2, 0, 1).float() - reference * 255).abs().max())


def one_op(aug: ColourAugment, image: np.ndarray, **params) -> np.ndarray:
    draws = aug.draw(1)
    draws.update({k: torch.as_tensor([v]) for k, v in params.items()})
    return aug.on_arrays(image[None], draws)[0]


@pytest.mark.parametrize("op, reference", [(0, TF.adjust_brightness), (1, TF.adjust_contrast),
                                           (2, TF.adjust_saturation)])
@pytest.mark.parametrize("factor", [0.2, 0.9, 1.7])
def test_each_uint8_jitter_op_is_within_one_step_of_torchvision(op, reference, factor):
    image = photo(op)
    factors = [1.0, 1.0, 1.0]
    factors[op] = factor
    aug = ColourAugment(jitter=(0.8, 0.8, 0.8, 0.0), jitter_p=1.0)
    ours = one_op(aug, image, jitter=True, factors=factors, order=[op, 3, 3, 3], hues=0.0)
    expected = reference(torch.from_numpy(image).permute(2, 0, 1).float() / 255, factor)
    assert max_steps(ours, expected) <= 1.0


@pytest.mark.parametrize("hue", [-0.5, -0.13, 0.07, 0.31])
def test_hue_shift_is_within_one_step_of_torchvision_and_its_fast_approximation_within_40_db(hue):
    image = photo(4)
    expected = TF.adjust_hue(torch.from_numpy(image).permute(2, 0, 1).float() / 255, hue)
    assert max_steps(hue_shift(image, hue), expected) <= 1.0
    fast = torch.from_numpy(hue_shift_uint8(image, hue)).permute(2, 0, 1).float() / 255
    assert psnr(fast, expected) >= 40 and max_steps(hue_shift_uint8(image, hue), expected) <= 16


def psnr(x: torch.Tensor, reference: torch.Tensor) -> float:
    return 10 * math.log10(1 / float(((x - reference) ** 2).mean()))


def test_grayscale_and_solarize_are_within_one_step_of_torchvision():
    image = photo(5)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    aug = ColourAugment(grayscale_p=1.0, solarize_p=1.0)
    gray = one_op(ColourAugment(grayscale_p=1.0), image, gray=True)
    assert max_steps(gray, TF.rgb_to_grayscale(x, num_output_channels=3)) <= 1.0
    both = one_op(aug, image, gray=True, solarize=True)
    reference = TF.solarize(TF.rgb_to_grayscale(x, num_output_channels=3), 127.5 / 255)
    assert max_steps(both, reference) <= 1.0


@pytest.mark.parametrize("sigma", [0.1, 0.7, 1.9])
@pytest.mark.parametrize("exact", [True, False])
def test_blur_is_within_one_step_of_torchvision_also_with_the_kernel_cut_at_4_sigma(sigma, exact):
    image = photo(6)
    aug = ColourAugment(blur_kernel=23, blur_p=1.0, exact_blur=exact)
    ours = one_op(aug, image, blur=True, sigma=sigma)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    assert max_steps(ours, TF.gaussian_blur(x, [23, 23], [sigma, sigma])) <= 1.0


@pytest.mark.parametrize("delta", [-0.35, 0.1, 0.4])
def test_additive_brightness_adds_its_delta_and_clips_on_both_backends(delta):
    """BYOL's brightness: x + delta clipped to [0, 1], delta = factor - 1 ~ U[-s, s] (the multiplicative draw)."""
    image = photo(7)
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    expected = (x + delta).clamp(0, 1)
    aug = ColourAugment(jitter=(0.4, 0.0, 0.0, 0.0), jitter_p=1.0, additive_brightness=True)
    params = aug.draw(1)
    params.update(jitter=torch.tensor([True]), factors=torch.tensor([[1 + delta, 1.0, 1.0]]),
                  order=torch.tensor([[0, 1, 2, 3]]), hues=torch.tensor([0.0]))
    assert max_steps(aug.on_arrays(image[None], params)[0], expected) <= 1.0
    assert torch.allclose(aug.on_tensors(x[None], params)[0], expected, atol=1e-5)


def test_jitter_order_is_drawn_per_image_and_every_operation_clips():
    """As BYOL's official jitter: each image draws its own order of the four operations and each clips to [0, 1],
    so brightness +0.4 then contrast 1.4 is not contrast then brightness."""
    aug = ColourAugment(jitter=(0.4, 0.4, 0.0, 0.0), jitter_p=1.0, additive_brightness=True)
    torch.manual_seed(0)
    params = aug.draw(48)
    orders = params["order"].tolist()
    assert len({tuple(o) for o in orders}) >= 12 and all(sorted(o) == [0, 1, 2, 3] for o in orders)
    params["factors"] = torch.tensor([[1.4, 1.4, 1.0]]).expand(48, 3)
    x = (torch.from_numpy(photo(8)).permute(2, 0, 1).float() / 255).expand(48, 3, 48, 64)
    out = aug.on_tensors(x, params)

    def reference(y: torch.Tensor, order: list[int]) -> torch.Tensor:
        for op in order:  # saturation (factor 1) and hue (shift 0) leave the image as it is
            if op == 0:
                y = (y + 0.4).clamp(0, 1)
            elif op == 1:
                mean = (0.2989 * y[0] + 0.587 * y[1] + 0.114 * y[2]).mean()
                y = (1.4 * y - 0.4 * mean).clamp(0, 1)
        return y

    for image, order in zip(out, orders):
        assert torch.allclose(image, reference(x[0], order), atol=1e-5), order
    brightness_first = torch.tensor([o.index(0) < o.index(1) for o in orders])
    assert (out[brightness_first][0] - out[~brightness_first][0]).abs().max() > 0.05


@pytest.mark.parametrize("additive_brightness", [False, True])
def test_both_backends_make_the_same_views_from_the_same_draws(additive_brightness):
    """Workers (OpenCV, uint8) and the device split (torch, float) apply the same parameters: views agree to
    PSNR >= 40 dB, so moving augmentation to the device does not change what the model sees."""
    crops = torch.from_numpy(np.stack([photo(s) for s in range(16)]))
    aug = ColourAugment(jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8, grayscale_p=0.2, blur_kernel=23, blur_p=0.5,
                        solarize_p=0.2, additive_brightness=additive_brightness)
    torch.manual_seed(0)
    params = aug.draw(16)
    ours = to_float(torch.from_numpy(aug.on_arrays(crops.numpy(), params)))
    theirs = aug.on_tensors(crops.permute(0, 3, 1, 2).float() / 255, params)
    assert psnr(ours, theirs) >= 40
    assert params["jitter"].any() and params["blur"].any() and params["gray"].any()


def test_normalised_floats_of_uint8_crops():
    crops = torch.randint(0, 256, (2, 5, 5, 3), dtype=torch.uint8)
    x = to_float(crops, ((0.5, 0.4, 0.3), (0.2, 0.25, 0.5)))
    expected = (crops.permute(0, 3, 1, 2).float() / 255 - torch.tensor([0.5, 0.4, 0.3])[:, None, None]) / \
        torch.tensor([0.2, 0.25, 0.5])[:, None, None]
    assert x.shape == (2, 3, 5, 5) and torch.allclose(x, expected, atol=1e-5)
    gray = crops[..., :1]
    assert torch.allclose(to_float(gray), gray.permute(0, 3, 1, 2) / 255, atol=1e-6)
    assert torch.allclose(to_float(gray, ((0.5, 0.4, 0.3), (0.2, 0.25, 0.5))), (gray.permute(0, 3, 1, 2) / 255
                          - 0.4) / (0.95 / 3), atol=1e-5)


# ---- crop boxes ------------------------------------------------------------------------------------------

def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance."""
    grid = np.sort(np.concatenate([a, b]))
    cdf = lambda s: np.searchsorted(np.sort(s), grid, side="right") / len(s)  # noqa: E731
    return float(np.abs(cdf(a) - cdf(b)).max())


@pytest.mark.parametrize("height, width, scale", [(375, 500, (0.08, 1.0)), (40, 300, (0.08, 1.0)),
                                                  (28, 28, (0.05, 0.14))])
def test_crop_boxes_follow_random_resized_crops_sampler(height, width, scale):
    """Area fraction, log aspect and position of 3,000 boxes against torchvision's get_params (KS distance,
    fixed seeds); the 40 x 300 strip exercises the centre-crop fallback."""
    ratio = (3 / 4, 4 / 3)
    rng = random.Random(0)
    ours = np.array([sample_box(height, width, scale, ratio, rng) for _ in range(3000)], dtype=float)
    torch.manual_seed(0)
    image = torch.zeros(1, height, width)
    params = [v2.RandomResizedCrop.get_params(image, list(scale), list(ratio)) for _ in range(3000)]
    theirs = np.array([(j, i, j + w, i + h) for i, j, h, w in params], dtype=float)

    def stats(boxes):
        w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        return w * h / (height * width), np.log(w / h), (boxes[:, 0] + w / 2) / width

    for a, b in zip(stats(ours), stats(theirs)):
        assert ks_statistic(a, b) < 0.05  # the 0.1% critical value for n = m = 3000 is 0.050


def encoded(image: np.ndarray | Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image)).save(buf, fmt, **kw)
    return buf.getvalue()


def test_views_of_a_draft_decoded_jpeg_are_the_views_of_the_full_image():
    """A large JPEG decoded at 1/4 or 1/8 scale (the crops are small): each view equals the crop of the fully
    decoded image within a few steps, and its box is in the original's pixels."""
    big = np.asarray(Image.fromarray(photo(7, 60, 80)).resize((1600, 1200), Image.BICUBIC))
    data = encoded(big, "JPEG", quality=95)
    spec = CropSpec(32, (0.3, 1.0), (3 / 4, 4 / 3))
    cropped = decode_crops(data, 3, [spec] * 4, random.Random(1))
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    assert (cropped.height, cropped.width) == (1200, 1600)
    for view, (x0, y0, x1, y1) in zip(cropped.views, cropped.boxes):
        assert 0 <= x0 < x1 <= 1600 and 0 <= y0 < y1 <= 1200
        reference = np.asarray(Image.fromarray(full[y0:y1, x0:x1]).resize((32, 32), Image.BOX))
        assert view.shape == (32, 32, 3) and np.abs(view.astype(int) - reference).mean() < 3


@pytest.mark.parametrize("mode, fmt, channels", [("RGB", "PNG", 3), ("L", "JPEG", 3), ("RGB", "JPEG", 1),
                                                 ("CMYK", "JPEG", 3), ("L", "PNG", 1)])
def test_every_format_and_mode_gives_views_of_the_asked_channels(mode, fmt, channels):
    data = encoded(Image.fromarray(photo(8, 30, 20)).convert(mode), fmt)
    spec = CropSpec(24, (0.5, 1.0), (3 / 4, 4 / 3), flip_p=0.5)  # larger than the 20 x 30 image
    batch = collate_crops([decode_crops(data, channels, [spec, spec], random.Random(s)) for s in range(3)])
    assert [tuple(v.shape) for v in batch["views"]] == [(3, 24, 24, channels)] * 2
    assert batch["boxes"].shape == (3, 2, 4) and batch["sizes"].tolist() == [[30.0, 20.0]] * 3

