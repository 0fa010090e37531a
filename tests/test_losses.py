"""NT-Xent against an independent, anchor-by-anchor computation of docs/methods/simclr.md."""

import math

import torch
import torch.nn.functional as F

from selfsup.losses import nt_xent


def naive_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float, negatives: torch.Tensor | None = None) -> float:
    """Mean over all 2N anchors of -log(exp(s_pos) / (sum_{j != i} exp(s_ij) + sum_k exp(s_ik'))), written as
    loops; k' runs over the extra ``negatives``."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    extra = F.normalize(negatives.double(), dim=1) if negatives is not None else z[:0]
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        denom = sum(math.exp(float(z[i] @ z[j]) / tau) for j in range(n2) if j != i)
        denom += sum(math.exp(float(z[i] @ e) / tau) for e in extra)
        total += -math.log(math.exp(float(z[i] @ z[pos]) / tau) / denom)
    return total / n2


def official_simclr(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> torch.Tensor:
    """The official code's layout: [l_ab | l_aa] with a -1e9 self mask, CE summed over both directions."""
    a, b = F.normalize(z1.double(), dim=1), F.normalize(z2.double(), dim=1)
    n = len(a)
    mask = torch.eye(n, dtype=torch.double) * 1e9
    l_aa, l_bb = a @ a.T / tau - mask, b @ b.T / tau - mask
    l_ab, l_ba = a @ b.T / tau, b @ a.T / tau
    t = torch.arange(n)
    return F.cross_entropy(torch.cat([l_ab, l_aa], 1), t) + F.cross_entropy(torch.cat([l_ba, l_bb], 1), t)


def test_nt_xent_matches_the_formula_anchor_by_anchor():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    for tau in (0.1, 0.5):
        assert abs(nt_xent(z1, z2, tau).item() - naive_nt_xent(z1, z2, tau)) < 1e-5


def test_extra_negatives_join_every_anchors_denominator():
    g = torch.Generator().manual_seed(2)
    z1, z2, extra = torch.randn(5, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(3, 4, generator=g)
    assert abs(nt_xent(z1, z2, 0.2, negatives=extra).item() - naive_nt_xent(z1, z2, 0.2, extra)) < 1e-5
    assert nt_xent(z1, z2, 0.2, negatives=extra) > nt_xent(z1, z2, 0.2)  # more negatives, never a lower loss


def test_convention_is_half_the_official_sum_of_two_directions():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    assert torch.allclose(2 * nt_xent(z1, z2, 0.1).double(), official_simclr(z1, z2, 0.1), atol=1e-5)


def test_identical_views_of_orthogonal_images_reach_the_lower_bound():
    # Positives at similarity 1, all 2N-2 negatives at 0: loss = log(1 + (2N-2) exp(-1/tau)).
    z = torch.eye(4)
    tau = 0.5
    expected = math.log(1 + 6 * math.exp(-1 / tau))
    assert abs(nt_xent(z, z.clone(), tau).item() - expected) < 1e-6


def test_nt_xent_is_scale_invariant_and_differentiable():
    z1 = torch.randn(8, 4, requires_grad=True)
    z2 = torch.randn(8, 4)
    loss = nt_xent(z1, z2, 0.2)
    loss.backward()
    assert z1.grad is not None and torch.isfinite(z1.grad).all()
    assert torch.allclose(loss, nt_xent(3 * z1.detach(), 0.5 * z2, 0.2))
