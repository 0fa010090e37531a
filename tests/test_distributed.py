"""2 ranks x N == 1 rank x 2N for NT-Xent: the loss and the parameter gradients after DDP averaging."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from selfsup.distributed import gather
from selfsup.losses import nt_xent

N, DIM, TAU = 128, 32, 0.1


def make_problem() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A small projector (no BN: per-device statistics would differ by design) and 2N images x 2 views, with a
    third view of each as extra negatives (CVRL's reversed clips)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(DIM, 64), nn.ReLU(), nn.Linear(64, 16))
    return model, torch.randn(2 * N, DIM), torch.randn(2 * N, DIM), torch.randn(2 * N, DIM)


def loss_of(model: nn.Module, view1: torch.Tensor, view2: torch.Tensor, view3: torch.Tensor) -> torch.Tensor:
    z1, z2, z3 = model(torch.cat([view1, view2, view3])).chunk(3)  # one forward, as SimCLR does
    return nt_xent(z1, z2, TAU) + nt_xent(z1, z2, TAU, negatives=z3)


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, *views = make_problem()
        ddp = DistributedDataParallel(model)
        rows = slice(rank * N, (rank + 1) * N)
        loss = loss_of(ddp, *(v[rows] for v in views))
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        x = torch.arange(3.0).repeat(2, 1) + 10 * rank  # gather order and its gradient routing
        x.requires_grad_(True)
        (gather(x) * torch.arange(1.0, 5.0)[:, None]).sum().backward()
        torch.save({"loss": mean_loss / world, "grads": [p.grad for p in model.parameters()],
                    "gather_grad": x.grad}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_equal_one_rank_with_twice_the_batch(tmp_path):
    model, *views = make_problem()
    single_loss = loss_of(model, *views)
    single_loss.backward()
    single_grads = [p.grad for p in model.parameters()]

    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    for result in ranks:
        assert abs(result["loss"].item() - single_loss.item()) < 1e-6
        for got, want in zip(result["grads"], single_grads):
            assert torch.allclose(got, want, rtol=1e-5, atol=1e-6), (got - want).abs().max()  # float32 sums
    # Rank r's rows are the r-th slice of the gathered tensor, weighted 1,2 (rank 0) and 3,4 (rank 1):
    # each rank's gradient is the sum over both ranks' losses of the weights on its own rows.
    assert torch.equal(ranks[0]["gather_grad"], 2 * torch.tensor([[1.0] * 3, [2.0] * 3]))
    assert torch.equal(ranks[1]["gather_grad"], 2 * torch.tensor([[3.0] * 3, [4.0] * 3]))


def test_gather_is_identity_without_a_process_group():
    x = torch.randn(4, 3)
    assert gather(x) is x
