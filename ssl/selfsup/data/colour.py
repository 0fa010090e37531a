"""The colour part of a view, after its crop: jitter, grayscale, blur, solarize and normalisation, on a batch of
fixed-size uint8 crops, with per-image random parameters drawn once (`ColourAugment.draw`) and applied by either
of two backends that give the same views for the same draws:

- ``on_arrays``: OpenCV on uint8 images, one image at a time (loader workers). Brightness, contrast and solarize
  are lookup tables, saturation and grayscale a 3x3 colour matrix, hue an HSV round trip, the blur OpenCV's
  separable Gaussian. Against torchvision's functional ops on float images at the same parameters each op is
  within 1 uint8 step (rounding to uint8 after each op), except the hue shift: by default it turns the hue in
  OpenCV's uint8 HSV (256 hues; 3x faster), PSNR >= 40 dB against torchvision and at most ~12 steps at
  saturated edges; ``exact_hue`` makes it a float32 round trip, within 1 step. See tests/test_colour.py.
- ``on_tensors``: the batched torch ops of `batch_augment` on float images, on any device (``augment_on:
  device``).

The blur kernel of the uint8 path is cut at 4 sigma (``exact_blur=False``): the weights it drops sum to < 1e-4,
under 0.03 uint8 steps, and a sigma-1 blur then costs a 9-tap instead of a 23-tap filter.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from selfsup.data.batch_augment import (
    colour_jitter_with,
    gaussian_blur_with,
    grayscale_where,
    jitter_params,
    normalize,
    solarize_where,
)

LUMA = np.array([0.2989, 0.587, 0.114], dtype=np.float32)  # torchvision's rgb_to_grayscale weights
_LEVELS = np.arange(256, dtype=np.float32)
_SOLARIZE = np.where(_LEVELS >= 128, 255 - _LEVELS, _LEVELS)


@dataclass
class ColourAugment:
    """Colour jitter (brightness, contrast, saturation spreads and hue: ``jitter``, in random order, with p
    ``jitter_p``), grayscale (p ``grayscale_p``), Gaussian blur (``blur_kernel`` taps, sigma ~ U(``blur_sigma``),
    p ``blur_p``; kernel 0: none) and solarize at 128 (p ``solarize_p``), in that order, as SimCLR's and
    PixPro's views make them. ``additive_brightness``: BYOL's brightness, ``+ U[-s, s]`` instead of
    ``x U[1-s, 1+s]``."""

    jitter: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    jitter_p: float = 0.0
    grayscale_p: float = 0.0
    blur_kernel: int = 0
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    exact_blur: bool = False
    exact_hue: bool = False
    additive_brightness: bool = False

    def draw(self, b: int, device: torch.device | str | None = None, repeat: int = 1) -> dict[str, torch.Tensor]:
        """The random parameters of ``b`` images, drawn on ``device``; ``repeat`` > 1: each draw is repeated
        for that many consecutive images (the frames of a clip)."""
        apply, factors, hues, order = jitter_params(b, torch.tensor(self.jitter[:3]), self.jitter_p,
                                                    self.jitter[3], device)
        if not any(self.jitter):
            apply = torch.zeros_like(apply)
        params = {
            "jitter": apply, "factors": factors, "hues": hues, "order": order,
            "gray": torch.rand(b, device=device) < self.grayscale_p,
            "blur": (torch.rand(b, device=device) < self.blur_p) & (self.blur_kernel > 0),
            "sigma": torch.empty(b, device=device).uniform_(*self.blur_sigma),
            "solarize": torch.rand(b, device=device) < self.solarize_p,
        }
        return {k: v.repeat_interleave(repeat, 0) for k, v in params.items()} if repeat > 1 else params

    def on_tensors(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """The augmented batch of float images (B, C, H, W) in [0, 1], with torch (any device)."""
        if self.jitter_p > 0 and any(self.jitter):
            x = colour_jitter_with(x, params["jitter"], params["factors"], params["hues"], params["order"],
                                   additive_brightness=self.additive_brightness)
        x = grayscale_where(x, params["gray"])
        if self.blur_kernel > 0 and self.blur_p > 0:
            x = gaussian_blur_with(x, self.blur_kernel, params["sigma"], params["blur"])
        return solarize_where(x, params["solarize"]) if self.solarize_p > 0 else x

    def on_arrays(self, views: np.ndarray, params: dict[str, torch.Tensor]) -> np.ndarray:
        """The augmented batch of uint8 images (B, H, W, C), with OpenCV, image by image."""
        p, views = {k: v.tolist() for k, v in params.items()}, np.array(views, order="C")
        for i in range(len(views)):
            view = views[i]
            if p["jitter"][i]:
                for op in p["order"][i]:
                    view = self._jitter_op(view, op, p["factors"][i], p["hues"][i])
            if p["gray"][i] and view.shape[2] == 3:
                view = cv2.transform(view, np.tile(LUMA, (3, 1)))
            if p["blur"][i]:
                view = self._blur(view, p["sigma"][i])
            if p["solarize"][i]:
                view = _lut(view, _SOLARIZE)
            views[i] = view.reshape(views[i].shape)
        return views

    def _jitter_op(self, view: np.ndarray, op: int, factors: Sequence[float], hue: float) -> np.ndarray:
        if op == 0:  # brightness
            return _lut(view, _LEVELS + 255 * (factors[0] - 1) if self.additive_brightness else _LEVELS * factors[0])
        if op == 1:  # contrast: blend with the mean luma
            means = cv2.mean(view)[: view.shape[2]]
            mean = float(np.dot(LUMA, means)) if view.shape[2] == 3 else means[0]
            return _lut(view, factors[1] * _LEVELS + (1 - factors[1]) * mean)
        if view.shape[2] != 3:  # saturation and hue need colour
            return view
        if op == 2:  # saturation: blend with the luma, a 3x3 colour matrix
            f = factors[2]
            return cv2.transform(view, f * np.eye(3, dtype=np.float32) + (1 - f) * np.tile(LUMA, (3, 1)))
        if hue == 0:
            return view
        return hue_shift(view, hue) if self.exact_hue else hue_shift_uint8(view, hue)

    def _blur(self, view: np.ndarray, sigma: float) -> np.ndarray:
        kernel = self.blur_kernel if self.exact_blur else min(self.blur_kernel, 2 * math.ceil(4 * sigma) + 1)
        out = cv2.GaussianBlur(view, (kernel, kernel), sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
        return out.reshape(view.shape)

    def views(self, crops: torch.Tensor, on_device: bool, normalization: tuple[Sequence[float], ...] | None,
              repeat: int = 1) -> torch.Tensor:
        """Augmented, normalised float views (B, C, H, W) of uint8 crops (B, H, W, C): with torch on the crops'
        device (``on_device``), else with OpenCV; ``repeat``: one draw per that many consecutive crops."""
        params = self.draw(len(crops) // repeat, crops.device, repeat)
        if on_device:
            x = self.on_tensors(crops.permute(0, 3, 1, 2).float().div_(255), params)
            return normalize(x, *normalization) if normalization else x
        return to_float(torch.from_numpy(self.on_arrays(crops.numpy(), params)), normalization)


def hue_shift_uint8(view: np.ndarray, hue: float) -> np.ndarray:
    """adjust_hue in OpenCV's uint8 HSV (hue in 256 steps): the fast approximation of `hue_shift`."""
    turn = round(hue * 256) % 256
    if turn == 0:
        return view
    table = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1)
    table[:, 0] = (table[:, 0].astype(int) + turn) % 256
    hsv = cv2.LUT(cv2.cvtColor(view, cv2.COLOR_RGB2HSV_FULL), table[:, None, :])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def hue_shift(view: np.ndarray, hue: float) -> np.ndarray:
    """torchvision's adjust_hue of a uint8 RGB image: a float32 HSV round trip with the hue turned by ``hue``
    (a fraction of the circle)."""
    hsv = cv2.cvtColor(view.astype(np.float32) * (1 / 255), cv2.COLOR_RGB2HSV)
    hsv[:, :, 0] = (hsv[:, :, 0] + 360 * hue) % 360
    return np.clip(cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255 + 0.5, 0, 255).astype(np.uint8)


def _lut(view: np.ndarray, table: np.ndarray) -> np.ndarray:
    """``table`` (256 levels, float) rounded and clamped to uint8, applied to every pixel."""
    out = cv2.LUT(view, (table + 0.5).clip(0, 255).astype(np.uint8))
    return out.reshape(view.shape)


def to_float(crops: torch.Tensor, normalization: tuple[Sequence[float], ...] | None = None) -> torch.Tensor:
    """uint8 images (B, H, W, C) on the CPU as float (B, C, H, W) in [0, 1], or normalised with (mean, std), one
    OpenCV affine colour transform per image; the result is a channels-last view, which a convolution takes as
    it is."""
    channels = crops.shape[-1]
    mean, std = ((0.0,) * channels, (1.0,) * channels) if normalization is None else normalization
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    if len(mean) != channels:  # 3-channel statistics of a 1-channel image: their averages
        mean, std = mean.mean(keepdims=True), std.mean(keepdims=True)
    affine = np.concatenate([np.diag(1 / (255 * std)), (-mean / std)[:, None]], axis=1).astype(np.float32)
    views = crops.numpy()
    out = np.empty(views.shape, np.float32)
    for i in range(len(views)):
        out[i] = cv2.transform(views[i].astype(np.float32), affine).reshape(out[i].shape)
    return torch.from_numpy(out).permute(0, 3, 1, 2)
