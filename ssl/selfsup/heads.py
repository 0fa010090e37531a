"""Heads shared by the methods: projectors (MLP), prototypes (SwAV), and the linear classifier used by probes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

LastNorm = Literal["none", "bn", "bn_noshift", "bn_noaffine"]


def _batch_norm(dim: int, shift: bool = True, affine: bool = True) -> nn.BatchNorm1d:
    bn = nn.BatchNorm1d(dim, affine=affine)
    if affine and not shift:  # learnable scale, no learnable shift (SimCLR's last projector BN)
        bn.register_parameter("bias", None)
    return bn


class MLP(nn.Sequential):
    """Linear layers ``dims[0] -> dims[1] -> ... -> dims[-1]``.

    Hidden layers are Linear -> BN -> ReLU (Linear -> ReLU with ``hidden_norm=False``); the last layer is a
    Linear followed by ``last_norm``: nothing, BN, BN with scale but no shift, or BN without scale and shift.
    A Linear followed by BN has no bias (BN's shift replaces it); ``last_bias=False`` drops the last Linear's
    bias also without a norm (BYOL, Barlow Twins, VICReg, MoCo v3). Covers SimCLR v1 (``[D, D, 128]``,
    ``last_norm="bn_noshift"``), SimCLR v2 (``[D, D, D, 128]``), SwAV (``[D, 2048, 128]``), CVRL
    (``[D, 2048, 2048, 2048, 128]``), BYOL (``[D, 4096, 256]``, ``last_bias=False``) and MoCo v3's projector
    (``last_norm="bn_noaffine"``).
    """

    def __init__(self, dims: Sequence[int], hidden_norm: bool = True, last_norm: LastNorm = "none",
                 last_bias: bool = True) -> None:
        if len(dims) < 2:
            raise ValueError(f"an MLP needs at least an input and an output size, got {list(dims)}")
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            last = i == len(dims) - 2
            norm = last_norm != "none" if last else hidden_norm
            layers.append(nn.Linear(d_in, d_out, bias=not norm and (last_bias or not last)))
            if norm:
                layers.append(_batch_norm(d_out, shift=not (last and last_norm == "bn_noshift"),
                                          affine=not (last and last_norm == "bn_noaffine")))
            if not last:
                layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        self.dims = list(dims)


class LinearClassifier(nn.Linear):
    """A linear layer from features to class logits (online probe, linear evaluation)."""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__(num_features, num_classes)
        nn.init.zeros_(self.bias)
        nn.init.normal_(self.weight, std=0.01)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return super().forward(features)


class Prototypes(nn.Linear):
    """K learnable prototype vectors of width ``dim`` as a bias-free linear layer: ``scores = z @ W.T`` (SwAV).

    ``normalize_()`` rescales every prototype (row of W) to unit length in place; SwAV calls it before each
    step, so that with unit-length z the scores are cosine similarities.
    """

    def __init__(self, dim: int, num_prototypes: int) -> None:
        super().__init__(dim, num_prototypes, bias=False)

    @torch.no_grad()
    def normalize_(self) -> None:
        """Unit-length rows, in place and outside autograd."""
        self.weight.copy_(F.normalize(self.weight, dim=1))


class MLP2d(MLP):
    """The ``MLP`` applied to every pixel of (B, C, h, w) maps (PixPro's projector and predictor; official:
    1x1 convs ``[2048, 4096, 256]``, hidden ones followed by BN2d and ReLU). BN over the B*h*w pixels is
    BN2d's statistics, so this equals the 1x1-conv stack; as Linear layers over a (B*h*w, C) matrix it runs
    faster than 1x1 convs on small maps. Checkpoints of the former conv form load (see ``_load_from_state_dict``).
    """

    def __init__(self, dims: Sequence[int]) -> None:
        if len(dims) < 2:
            raise ValueError(f"an MLP2d needs at least an input and an output size, got {list(dims)}")
        super().__init__(dims)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        pixels = super().forward(x.permute(0, 2, 3, 1).reshape(b * h * w, -1))
        return pixels.view(b, h, w, -1).permute(0, 3, 1, 2)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        """Converts the 1x1-conv form: (out, in, 1, 1) weights to (out, in), and a hidden conv's bias (which BN
        cancels in training) folded into the next BN's running mean, so eval outputs are unchanged."""
        for i, layer in enumerate(self):
            if not isinstance(layer, nn.Linear):
                continue
            weight, bias = f"{prefix}{i}.weight", f"{prefix}{i}.bias"
            if weight in state_dict and state_dict[weight].dim() == 4:
                state_dict[weight] = state_dict[weight].flatten(1)
            if layer.bias is None and bias in state_dict:
                running_mean = f"{prefix}{i + 1}.running_mean"
                state_dict[running_mean] = state_dict[running_mean] - state_dict.pop(bias)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)


class PixelPropagation(nn.Module):
    """PixPro's pixel propagation module on a (B, C, h, w) map x (docs/methods/pixpro.md)::

        A_ij = max(0, cos(x_i, x_j)) ** gamma            (all pixel pairs of one image)
        y_i  = sum_j A_ij * normalize(g(x_j))             (no division by sum_j A_ij)

    and returns ``normalize(y)`` per pixel. ``transform_layers`` picks g: 0 identity, 1 a 1x1 conv (the
    official default), 2 an ``MLP2d([C, C, C])``.
    """

    def __init__(self, dim: int, transform_layers: int = 1, gamma: float = 2.0) -> None:
        super().__init__()
        if transform_layers == 0:
            self.transform: nn.Module = nn.Identity()
        elif transform_layers == 1:
            self.transform = nn.Conv2d(dim, dim, kernel_size=1)
        elif transform_layers == 2:
            self.transform = MLP2d([dim, dim, dim])
        else:
            raise ValueError(f"transform_layers must be 0, 1 or 2, got {transform_layers}")
        self.gamma = gamma

    def similarity(self, x: torch.Tensor) -> torch.Tensor:
        """A (B, hw, hw): clamped cosine similarity of every pixel pair, to the power gamma."""
        flat = F.normalize(x.flatten(2), dim=1)
        return torch.bmm(flat.transpose(1, 2), flat).clamp(min=0).pow(self.gamma)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = F.normalize(self.transform(x), dim=1).flatten(2)  # (B, C, hw)
        y = torch.bmm(values, self.similarity(x).transpose(1, 2))  # y[:, :, i] = sum_j A_ij v_j
        return F.normalize(y, dim=1).view_as(x)


class PixelShuffleDecoder(nn.Sequential):
    """SimMIM's one-layer decoder: a 1x1 conv from the encoder's map (B, C, h, w) to ``channels x s x s`` and
    PixelShuffle(s), i.e. (B, channels, h s, w s) pixels, with s the encoder's total stride."""

    def __init__(self, in_dim: int, stride: int, channels: int = 3) -> None:
        super().__init__(nn.Conv2d(in_dim, channels * stride**2, kernel_size=1), nn.PixelShuffle(stride))
        self.stride, self.channels = stride, channels


class WeightNormLinear(nn.Module):
    """A bias-free linear layer with weight normalisation, ``W = g * V / ||V||`` row by row: ``weight_v`` (K, D)
    and ``weight_g`` (K, 1), g filled with 1. ``norm_last_layer``: g stays 1 (``requires_grad`` off), so every
    output is a cosine similarity to a learned direction (DINO's head)."""

    def __init__(self, in_dim: int, out_dim: int, norm_last_layer: bool = True) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=not norm_last_layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight_g * F.normalize(self.weight_v, dim=1, eps=0.0))


class DINOHead(nn.Module):
    """DINO's projection head: ``layers`` Linear layers (GELU between, BN after the hidden ones with ``use_bn``)
    from ``in_dim`` through ``hidden_dim`` to a ``bottleneck_dim`` output, L2-normalised, then a weight-normalised
    bias-free ``last_layer`` to ``out_dim`` (K) logits. Linears truncated-normal (std 0.02), biases 0. Works on
    any leading dimensions (pooled features or all tokens of a ViT)."""

    def __init__(self, in_dim: int, out_dim: int = 65536, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 layers: int = 3, norm_last_layer: bool = True, use_bn: bool = False) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (max(layers, 1) - 1) + [bottleneck_dim]
        modules: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            linear = nn.Linear(d_in, d_out)
            nn.init.trunc_normal_(linear.weight, std=0.02)
            nn.init.zeros_(linear.bias)
            modules.append(linear)
            if i < len(dims) - 2:
                modules += [nn.BatchNorm1d(d_out), nn.GELU()] if use_bn else [nn.GELU()]
        self.mlp = nn.Sequential(*modules)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, norm_last_layer)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalised bottleneck output (..., bottleneck_dim)."""
        return F.normalize(self.mlp(x), dim=-1, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.embed(x))
