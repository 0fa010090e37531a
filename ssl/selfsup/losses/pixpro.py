"""PixPro's pixel-to-propagation consistency loss (docs/methods/pixpro.md): positive pixel pairs from the two
views' crop boxes, and -2 x the masked mean cosine of predictions and keys."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bin_centres(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Centres (B, h*w, 2) as (x, y) of the h x w feature-map bins of each view, in the original image's [0, 1]
    frame, row-major like ``flatten(2)``: bin width ``(x1 - x0) / w``, centre ``(col + 0.5) * bin + x0`` (the
    same for y). ``boxes`` (B, 4) are [x0, y0, x1, y1]; a mirrored view has x0 > x1, so its columns run
    right to left."""
    x0, y0, x1, y1 = boxes.unbind(1)
    cols = torch.arange(width, dtype=boxes.dtype, device=boxes.device) + 0.5
    rows = torch.arange(height, dtype=boxes.dtype, device=boxes.device) + 0.5
    cx = x0[:, None] + cols[None] * ((x1 - x0) / width)[:, None]  # (B, w)
    cy = y0[:, None] + rows[None] * ((y1 - y0) / height)[:, None]  # (B, h)
    grid_x = cx[:, None, :].expand(-1, height, -1)
    grid_y = cy[:, :, None].expand(-1, -1, width)
    return torch.stack([grid_x, grid_y], dim=-1).flatten(1, 2)


def bin_diagonal(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Diagonal length (B,) of one feature-map bin of each view, in the [0, 1] frame."""
    return torch.hypot((boxes[:, 2] - boxes[:, 0]) / width, (boxes[:, 3] - boxes[:, 1]) / height)


def positive_pixel_pairs(boxes_q: torch.Tensor, boxes_k: torch.Tensor, height: int, width: int,
                         threshold: float = 0.7) -> torch.Tensor:
    """Boolean mask (B, hw, hw): pixel i of view q and pixel j of view k are positive when the distance of their
    bin centres, divided by the larger of the two views' bin diagonals, is below ``threshold`` (strictly)."""
    distance = torch.cdist(bin_centres(boxes_q, height, width), bin_centres(boxes_k, height, width),
                           compute_mode="donot_use_mm_for_euclid_dist")  # exact: ties at the threshold matter
    scale = torch.maximum(bin_diagonal(boxes_q, height, width), bin_diagonal(boxes_k, height, width))
    return distance / scale[:, None, None] < threshold


def pixel_consistency(pred: torch.Tensor, key: torch.Tensor, mask: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """One direction of the loss: ``-2 * mean_n( sum_ij m_ij cos(pred_i, key_j) / (sum_ij m_ij + eps) )`` for
    maps (B, C, h, w) and a mask (B, hw, hw). An image without positive pairs contributes 0 and still counts
    in the mean over the batch. Computed in float32."""
    p = F.normalize(pred.float().flatten(2), dim=1)
    k = F.normalize(key.float().flatten(2), dim=1)
    m = mask.float()
    cosine = torch.bmm(p.transpose(1, 2), k)  # (B, hw, hw)
    per_image = (cosine * m).sum(dim=(1, 2)) / (m.sum(dim=(1, 2)) + eps)
    return -2 * per_image.mean()


def pixpro_loss(pred1: torch.Tensor, pred2: torch.Tensor, key1: torch.Tensor, key2: torch.Tensor,
                boxes1: torch.Tensor, boxes2: torch.Tensor, threshold: float = 0.7) -> torch.Tensor:
    """Both directions: view 1's propagated predictions against view 2's momentum keys, plus the reverse
    (the official sum: -4 when every prediction equals its positive keys). Keys should carry no gradient."""
    h, w = pred1.shape[-2:]
    mask12 = positive_pixel_pairs(boxes1, boxes2, h, w, threshold)
    return pixel_consistency(pred1, key2, mask12) + pixel_consistency(pred2, key1, mask12.transpose(1, 2))


def instance_consistency(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL-style ``-2 * mean_n cos(pred_n, target_n)`` of pooled vectors (B, C) (PixPro's instance branch)."""
    return -2 * F.cosine_similarity(pred.float(), target.float(), dim=1).mean()
