"""2 ranks x N == 1 rank x 2N for every loss that reads other ranks' samples (NT-Xent, BYOL, MoCo v3, Barlow
Twins, VICReg): the loss averaged over ranks and the parameter gradients after DDP averaging. One spawned pair of
ranks computes them all."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from selfsup.distributed import gather
from selfsup.losses import barlow_twins_loss, byol_loss, moco_v3_loss, nt_xent, vicreg_terms

N, DIM, TAU = 128, 32, 0.1


def make_problem() -> tuple[nn.Module, nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small projector (no BN: per-device statistics would differ by design), a fixed target network (BYOL's
    and MoCo v3's momentum encoder) and 2N images x 2 views, with a third view of each as extra negatives (CVRL's
    reversed clips)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 16))
    target = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 16)).requires_grad_(False)
    return model, target, torch.randn(2 * N, DIM), torch.randn(2 * N, DIM), torch.randn(2 * N, DIM)


def nt_xent_losses(model, target, view1, view2, view3) -> torch.Tensor:
    z1, z2, z3 = model(torch.cat([view1, view2, view3])).chunk(3)  # one forward, as SimCLR does
    return nt_xent(z1, z2, TAU) + nt_xent(z1, z2, TAU, negatives=z3)


def byol(model, target, view1, view2, view3) -> torch.Tensor:
    return byol_loss(model(view1), model(view2), target(view1), target(view2))


def moco_v3(model, target, view1, view2, view3) -> torch.Tensor:
    return moco_v3_loss(model(view1), model(view2), target(view1), target(view2), temperature=0.2)


def barlow_twins(model, target, view1, view2, view3) -> torch.Tensor:
    return barlow_twins_loss(model(view1), model(view2), lambd=0.05)


def vicreg(model, target, view1, view2, view3) -> torch.Tensor:
    invariance, variance, covariance = vicreg_terms(model(view1), model(view2))
    return 25 * invariance + 25 * variance + covariance


LOSSES: dict[str, Callable[..., torch.Tensor]] = {
    "nt_xent": nt_xent_losses, "byol": byol, "moco_v3": moco_v3, "barlow_twins": barlow_twins, "vicreg": vicreg}


def loss_and_grads(model: nn.Module, loss: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss.backward()
    return loss.detach().clone(), [p.grad.clone() for p in model.parameters()]


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, target, *views = make_problem()
        ddp = DistributedDataParallel(model)
        rows = slice(rank * N, (rank + 1) * N)
        results = {}
        for name, loss_of in LOSSES.items():
            loss, grads = loss_and_grads(model, loss_of(ddp, target, *(v[rows] for v in views)))
            dist.all_reduce(loss)
            results[name] = {"loss": loss / world, "grads": grads}
        x = torch.arange(3.0).repeat(2, 1) + 10 * rank  # gather order and its gradient routing
        x.requires_grad_(True)
        (gather(x) * torch.arange(1.0, 5.0)[:, None]).sum().backward()
        torch.save({"losses": results, "gather_grad": x.grad}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    mp.spawn(_rank_main, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.mark.parametrize("name", list(LOSSES))
def test_two_ranks_equal_one_rank_with_twice_the_batch(two_ranks, name):
    model, target, *views = make_problem()
    single_loss, single_grads = loss_and_grads(model, LOSSES[name](model, target, *views))
    assert any(g.abs().max() > 0 for g in single_grads)
    for result in (r["losses"][name] for r in two_ranks):
        assert abs(result["loss"].item() - single_loss.item()) < 1e-5 * max(1.0, abs(single_loss.item()))
        for got, want in zip(result["grads"], single_grads):
            assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), (got - want).abs().max()  # float32 sums


def test_gather_routes_each_rank_its_summed_gradient(two_ranks):
    # Rank r's rows are the r-th slice of the gathered tensor, weighted 1,2 (rank 0) and 3,4 (rank 1):
    # each rank's gradient is the sum over both ranks' losses of the weights on its own rows.
    assert torch.equal(two_ranks[0]["gather_grad"], 2 * torch.tensor([[1.0] * 3, [2.0] * 3]))
    assert torch.equal(two_ranks[1]["gather_grad"], 2 * torch.tensor([[3.0] * 3, [4.0] * 3]))


def test_gather_is_identity_without_a_process_group():
    x = torch.randn(4, 3)
    assert gather(x) is x
