"""One batched, gradient-free pass of a backbone over un-augmented images: what kNN, plots and cached probes share."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn
from tqdm import tqdm

from selfsup.backbones import pooled_features
from selfsup.errors import ConfigError

if TYPE_CHECKING:
    from selfsup.data import SSLDataModule


@torch.no_grad()
def extract_features(
    backbone: nn.Module, loader: Iterable[dict], device: torch.device | str = "cpu", progress: bool = False,
    desc: str = "features",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features (N, D) float32 on the CPU and labels (N,) for every image in ``loader``.

    Videos evaluated as several clips (B, K, C, T, H, W) get the mean of their clips' features. The backbone
    runs in eval mode (BN uses its running statistics) and is put back in its previous mode.
    """
    was_training = backbone.training
    backbone.eval()
    feats, labels = [], []
    try:
        for batch in tqdm(loader, desc=desc, leave=False, disable=None if progress else True):  # None: tty only
            feats.append(pooled_features(backbone, batch["image"].to(device, non_blocking=True)).float().cpu())
            labels.append(batch["label"])
    finally:
        backbone.train(was_training)
    if not feats:
        raise ConfigError(f"the {desc} data holds no usable sample (it is empty, or none of its samples decodes); "
                          "check it with `selfsup shards inspect`, or give data with that split")
    return torch.cat(feats), torch.cat(labels)


def split_features(
    backbone: nn.Module, data: SSLDataModule, split: str, device: torch.device | str = "cpu", progress: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features and labels of every un-augmented image of ``split`` of an ``SSLDataModule`` (all ranks' share)."""
    return extract_features(backbone, data.eval_dataloader(split, all_ranks=True), device, progress, desc=split)
