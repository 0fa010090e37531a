"""What the cells of a dense map share with their nearest neighbours in other images: the class of what they
show, or only their place in the grid (docs/evaluation.md#dense-probe)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.data.members import IGNORE
from selfsup.training.collapse import rankme


def cell_labels(masks: torch.Tensor, grid: tuple[int, int], segments: int,
                min_share: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """The majority label (B, h, w) of each cell of ``grid`` over masks (B, H, W), and whether it covers at
    least ``min_share`` of the cell (ignored pixels count against it)."""
    values = torch.where(masks == IGNORE, torch.full_like(masks, segments), masks).long()
    shares = F.adaptive_avg_pool2d(F.one_hot(values, segments + 1).permute(0, 3, 1, 2).float(), grid)
    share, label = shares[:, :segments].max(dim=1)
    return label, share >= min_share


def cell_neighbours(maps: torch.Tensor, masks: torch.Tensor, segments: int, k: int = 10, queries: int = 2000,
                    min_share: float = 0.6, seed: int = 0) -> dict[str, float]:
    """For up to ``queries`` cells mostly of one object class (label > 0; 0 is background) of maps (B, C, h, w),
    the share of their ``k`` nearest cells (cosine of centred features, cells of other images that are mostly
    one label) that have the same class (``cells_same_class``) and the same place in the grid
    (``cells_same_place``; chance 1 / hw); and the RankMe of the cell features (``cells_rankme``)."""
    n, c, h, w = maps.shape
    cells = maps.float().permute(0, 2, 3, 1).reshape(-1, c)
    labels, keep = (t.reshape(-1) for t in cell_labels(masks, (h, w), segments, min_share))
    image, place = torch.arange(n).repeat_interleave(h * w), torch.arange(h * w).repeat(n)
    features = F.normalize(cells - cells.mean(0), dim=1)
    bank = torch.nonzero(keep).squeeze(1)
    objects = torch.nonzero(keep & (labels > 0)).squeeze(1)
    if len(objects) == 0 or len(bank) <= k:
        return {}
    generator = torch.Generator().manual_seed(seed)
    chosen = objects[torch.randperm(len(objects), generator=generator)[:queries]]
    same_class, same_place = [], []
    for part in chosen.split(500):
        sims = features[part] @ features[bank].T
        sims[image[part][:, None] == image[bank][None, :]] = -2.0  # neighbours from other images only
        nearest = bank[sims.topk(k, dim=1).indices]
        same_class.append((labels[nearest] == labels[part][:, None]).float())
        same_place.append((place[nearest] == place[part][:, None]).float())
    sample = cells[torch.randperm(len(cells), generator=generator)[:20000]]
    return {"cells_same_class": torch.cat(same_class).mean().item(),
            "cells_same_place": torch.cat(same_place).mean().item(), "cells_rankme": rankme(sample)}
