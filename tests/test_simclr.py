"""SimCLR's step: NT-Xent, written out here, of the projections of its two views after one backbone forward."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from selfsup.methods import SimCLR


def nt_xent_reference(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Chen et al.'s loss: each of the 2N projections' positive is its other view, its negatives the other
    2N - 2; the mean over all 2N anchors of -log(exp(s_pos / t) / sum over the 2N - 1 others of exp(s / t))."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        logits = torch.stack([z[i] @ z[j] for j in range(2 * n) if j != i]) / temperature
        positive = (i + n) % (2 * n)
        total = total - (logits[positive - (positive > i)] - torch.logsumexp(logits, 0))
    return total / (2 * n)


def test_simclr_step_is_nt_xent_of_the_projected_views_and_features_are_the_first_views():
    torch.manual_seed(0)
    model = SimCLR(backbone="resnet18", backbone_args={"width": 4, "cifar_stem": True}, in_channels=1,
                   temperature=0.2)
    views = [torch.rand(6, 1, 16, 16), torch.rand(6, 1, 16, 16)]
    out = model.ssl_step({"views": views})
    features = model.backbone(torch.cat(views))  # BN in train mode: the same batch gives the same output
    z1, z2 = model.projector(features).chunk(2)
    torch.testing.assert_close(out.loss.double(), nt_xent_reference(z1, z2, 0.2), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out.features, features[:6])
    assert out.loss.requires_grad
