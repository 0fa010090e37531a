"""SwAV: Sinkhorn-Knopp and the swapped loss against docs/methods/swav.md, 2 ranks against 1, multi-crop views,
the queue (use, checkpoint, resume), prototype freezing, and the CLI."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from clirun import REPO, selfsup
from selfsup.data import SSLDataModule
from selfsup.data.views import EvalView, MultiCropViews
from selfsup.errors import ConfigError
from selfsup.heads import Prototypes
from selfsup.losses import sinkhorn, swapped_prediction_loss
from selfsup.methods import SwAV
from test_distributed import free_port

N, DIM, K, CROPS = 64, 24, 30, 4
TINY = {"backbone": "resnet18", "backbone_args": {"width": 4}, "in_channels": 1, "proj_hidden_dim": 32}


def attach_fake_trainer(model: SwAV, **attrs) -> SwAV:
    """Give a module the trainer attributes its hooks read (epoch, step, world size), without a Trainer."""
    model._trainer = SimpleNamespace(**{"world_size": 1, "current_epoch": 0, "global_step": 0, **attrs})
    return model


def unit_scores(b: int, k: int, seed: int = 0) -> torch.Tensor:
    """Cosine similarities of random unit embeddings and unit prototypes (what SwAV feeds to Sinkhorn)."""
    g = torch.Generator().manual_seed(seed)
    z = F.normalize(torch.randn(b, 128, generator=g), dim=1)
    w = F.normalize(torch.randn(k, 128, generator=g), dim=1)
    return z @ w.T


def reference_sinkhorn(scores: torch.Tensor, eps: float, iterations: int) -> torch.Tensor:
    """docs/methods/swav.md's Sinkhorn-Knopp on one process, written as alternating marginal scalings in float64."""
    p = torch.exp(scores.double() / eps)
    p = p / p.sum()
    b, k = p.shape
    for _ in range(iterations):
        p = p / p.sum(dim=0, keepdim=True) / k  # each prototype: mass 1/K
        p = p / p.sum(dim=1, keepdim=True) / b  # each sample: mass 1/B
    return p * b


# ---- Sinkhorn-Knopp ---------------------------------------------------------------------------------------
def test_codes_rows_sum_to_one_and_prototype_shares_are_uniform():
    scores = unit_scores(256, K)
    codes = sinkhorn(scores, eps=0.05, iterations=3)
    assert codes.shape == (256, K) and codes.dtype == torch.float32 and (codes >= 0).all()
    assert torch.allclose(codes.sum(dim=1), torch.ones(256), atol=1e-5)
    shares = codes.sum(dim=0) / 256
    assert (shares - 1 / K).abs().max() < 1e-3  # each prototype gets 1/K of the samples
    assert torch.allclose(codes.double(), reference_sinkhorn(scores, 0.05, 3), atol=1e-5)


def test_more_iterations_make_the_prototype_shares_more_uniform():
    scores = unit_scores(256, K, seed=1)
    error = [(sinkhorn(scores, 0.05, n).sum(0) * K / 256 - 1).abs().max().item() for n in (1, 3, 10)]
    assert error[0] > error[1] > error[2] and error[2] < 1e-4


def test_sinkhorn_is_float32_and_finite_for_scores_that_overflow_fp16():
    scores = (0.6 + unit_scores(32, K)).half()  # exp(0.6 / 0.05) = 162755 > 65504, fp16's max
    assert not torch.isfinite(torch.exp(scores / 0.05)).all()
    codes = sinkhorn(scores)
    assert codes.dtype == torch.float32 and torch.isfinite(codes).all()
    assert torch.allclose(codes.sum(1), torch.ones(32), atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert sinkhorn(scores.bfloat16()).dtype == torch.float32


def test_sinkhorn_stays_finite_and_exact_where_exp_of_scores_over_eps_leaves_float32():
    scores = unit_scores(64, K, seed=2) + 0.8  # exp(1.1 / 0.005) overflows float32, exp(0.5 / 0.005) too
    assert not torch.isfinite(torch.exp(scores / 0.005)).all()
    codes = sinkhorn(scores, eps=0.005, iterations=3)
    assert torch.isfinite(codes).all() and torch.allclose(codes.sum(1), torch.ones(64), atol=1e-5)
    assert torch.allclose(codes.double(), reference_sinkhorn(scores, 0.005, 3), atol=1e-5)


# ---- the swapped prediction loss --------------------------------------------------------------------------
def test_swapped_loss_matches_the_formula_crop_by_crop():
    torch.manual_seed(0)
    scores = [torch.randn(8, 5) for _ in range(4)]
    codes = {0: torch.softmax(torch.randn(8, 5), 1), 1: torch.softmax(torch.randn(8, 5), 1)}
    expected = 0.0
    for c, q in codes.items():
        for v in range(4):
            if v != c:
                for b in range(8):
                    expected += -sum(q[b, k] * torch.log_softmax(scores[v][b] / 0.1, 0)[k] for k in range(5)) / 8 / 3
    assert torch.allclose(swapped_prediction_loss(scores, codes, 0.1), expected / 2, atol=1e-5)


def test_loss_at_random_init_is_close_to_ln_k():
    torch.manual_seed(0)
    model = SwAV(num_prototypes=3000, backbone="resnet18", backbone_args={"width": 16}, in_channels=1)
    views = MultiCropViews([28, 14], [2, 4], [(0.14, 1), (0.05, 0.14)], flip_p=0, mean=[0.13], std=[0.31])
    batch = views.batch((torch.rand(64, 1, 28, 28) * 255).to(torch.uint8))
    loss = model.ssl_step(batch).loss.item()
    # Above ln K by about 1 / (2 d tau^2) = 0.39 (the spread of random cosines over prototypes); within 5%.
    assert abs(loss / math.log(3000) - 1) < 0.05, loss


# ---- 2 ranks x N == 1 rank x 2N ---------------------------------------------------------------------------
class Toy(nn.Module):
    """A projector without BN (per-device statistics would differ by design) and prototypes."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.projector = nn.Sequential(nn.Linear(DIM, 32), nn.ReLU(), nn.Linear(32, 16))
        self.prototypes = Prototypes(16, K)

    def forward(self, crops: torch.Tensor) -> torch.Tensor:  # (V, n, DIM) -> loss
        self.prototypes.normalize_()
        z = F.normalize(self.projector(crops.flatten(0, 1)), dim=1)
        scores = self.prototypes(z).chunk(CROPS)
        codes = {c: sinkhorn(scores[c].detach()) for c in (0, 1)}
        return swapped_prediction_loss(scores, codes, 0.1)


def toy_crops() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(CROPS, 2 * N, DIM)


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        rows = slice(rank * N, (rank + 1) * N)
        codes = sinkhorn(unit_scores(2 * N, K)[rows])
        model = Toy()
        ddp = DistributedDataParallel(model)  # kept alive: its reducer averages the gradients in backward
        loss = ddp(toy_crops()[:, rows])
        loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        torch.save({"codes": codes, "loss": mean_loss / world, "grads": [p.grad for p in model.parameters()]},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_give_the_codes_loss_and_gradients_of_one_rank(tmp_path):
    single_codes = sinkhorn(unit_scores(2 * N, K))
    model = Toy()
    single_loss = model(toy_crops())
    single_loss.backward()

    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    assert torch.allclose(torch.cat([r["codes"] for r in ranks]), single_codes, atol=1e-6)
    # a rank's own rows alone would give other codes: the all-reduces matter
    assert not torch.allclose(sinkhorn(unit_scores(2 * N, K)[:N]), ranks[0]["codes"], atol=1e-3)
    for result in ranks:
        assert abs(result["loss"].item() - single_loss.item()) < 1e-5
        for got, p in zip(result["grads"], model.parameters()):
            assert torch.allclose(got, p.grad, rtol=1e-4, atol=1e-7), (got - p.grad).abs().max()


# ---- heads, views, backbone passes ------------------------------------------------------------------------
def test_projector_and_prototypes_follow_the_official_model():
    model = SwAV(num_prototypes=7, proj_dim=8, **TINY)
    linears = [m for m in model.projector if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(model.backbone.num_features, 32), (32, 8)]
    assert [type(m).__name__ for m in model.projector] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    assert model.prototypes.bias is None and model.prototypes.weight.shape == (7, 8)
    model.ssl_step({"views": [torch.rand(4, 1, 16, 16)] * 2})
    assert torch.allclose(model.prototypes.weight.norm(dim=1), torch.ones(7), atol=1e-6)  # re-normalised


def test_multicrop_views_sizes_order_and_normalisation():
    images = (torch.rand(5, 3, 40, 40) * 255).to(torch.uint8)
    recipe = MultiCropViews([32, 16], [2, 3], [(0.14, 1), (0.05, 0.14)])
    crops = recipe.batch(images)["views"]
    assert [tuple(c.shape) for c in crops] == [(5, 3, 32, 32)] * 2 + [(5, 3, 16, 16)] * 3
    assert crops[0].min() < 0  # normalised with SwAV's mean and std
    single = recipe(images[0])["views"]
    assert [tuple(c.shape) for c in single] == [(3, 32, 32)] * 2 + [(3, 16, 16)] * 3
    plain = MultiCropViews([8], [2], [(1, 1)], ratio=(1, 1), mean=None, std=None, flip_p=0, jitter_p=0,
                           grayscale_p=0, blur_p=0)
    x = plain.batch(images[:, :, :8, :8])["views"][0]
    assert torch.allclose(x, images[:, :, :8, :8].float() / 255, atol=1e-5)


def test_evaluation_images_get_the_training_normalisation():
    recipe = MultiCropViews([8, 4], [2, 2], [(0.5, 1), (0.1, 0.5)], mean=[0.5], std=[0.25])
    image = torch.full((1, 8, 8), 255, dtype=torch.uint8)
    assert torch.allclose(EvalView(8, normalization=recipe.normalization)(image)["image"], torch.full((1, 8, 8), 2.0))
    assert EvalView(8)(image)["image"].max() == 1.0


@pytest.mark.parametrize("kwargs", [{"counts": [2]}, {"counts": [1, 0]}, {"counts": [1], "sizes": [8],
                                                                            "scales": [(0.1, 1)]}])
def test_bad_multicrop_layouts_are_refused(kwargs):
    with pytest.raises(ConfigError, match="MultiCropViews"):
        MultiCropViews(**kwargs)


def test_one_backbone_forward_per_crop_size():
    model = SwAV(num_prototypes=7, **TINY).eval()  # BN with fixed statistics: features comparable across calls
    seen = []
    model.backbone.register_forward_pre_hook(lambda _, inputs: seen.append(tuple(inputs[0].shape)))
    crops = [torch.rand(4, 1, 16, 16)] * 2 + [torch.rand(4, 1, 8, 8)] * 3
    features = model.backbone_by_size(crops)
    assert seen == [(8, 1, 16, 16), (12, 1, 8, 8)] and features.shape == (20, model.backbone.num_features)
    assert torch.allclose(features[8:12], model.backbone(crops[2]), atol=1e-5)


# ---- the queue --------------------------------------------------------------------------------------------
def step_with_queue(model: SwAV, n: int = 4) -> None:
    model.ssl_step({"views": [torch.rand(n, 1, 16, 16) for _ in range(3)]})


def test_queue_is_filled_newest_first_and_used_only_when_full(monkeypatch):
    torch.manual_seed(0)
    model = SwAV(num_prototypes=7, **TINY)
    model.queue, model.queue_filled = torch.zeros(2, 8, 128), 0
    seen_rows = []
    real = sinkhorn

    def spy(scores, *args):
        seen_rows.append(len(scores))
        return real(scores, *args)

    monkeypatch.setattr("selfsup.methods.swav.sinkhorn", spy)
    for _ in range(3):
        step_with_queue(model)
    assert seen_rows == [4, 4, 4, 4, 12, 12]  # batches of 4; the queue of 8 is full after two steps
    z_seen = model.queue.clone()
    step_with_queue(model)
    assert torch.equal(model.queue[:, 4:], z_seen[:, :4])  # shifted by one batch, newest at the front
    assert torch.allclose(model.queue.norm(dim=2), torch.ones(2, 8), atol=1e-5)  # unit-length z, not scores


def test_queue_length_is_rounded_to_the_global_batch_and_starts_on_its_epoch():
    model = attach_fake_trainer(SwAV(num_prototypes=7, queue_length=100, queue_start_epoch=2, batch_size=32, **TINY))
    model.on_train_epoch_start()
    assert model.queue is None  # epoch 0 < queue_start_epoch
    model.trainer.current_epoch = 2
    model.on_train_epoch_start()
    assert model.queue.shape == (2, 96, 128) and model.queue_filled == 0
    small = attach_fake_trainer(SwAV(num_prototypes=7, queue_length=16, queue_start_epoch=0, batch_size=32, **TINY))
    with pytest.raises(ConfigError, match="queue_length 16 is shorter than the global batch 32"):
        small.on_train_epoch_start()


class Recorder(L.Callback):
    """The queue as the training epochs start and end."""

    def __init__(self) -> None:
        self.at_start: dict[int, tuple[torch.Tensor | None, int]] = {}
        self.at_end: dict[int, tuple[torch.Tensor | None, int]] = {}

    @staticmethod
    def _copy(module: SwAV) -> tuple[torch.Tensor | None, int]:
        return (None if module.queue is None else module.queue.clone(), module.queue_filled)

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self.at_start.setdefault(trainer.current_epoch, self._copy(module))

    def on_train_epoch_end(self, trainer, module) -> None:
        self.at_end[trainer.current_epoch] = self._copy(module)


def fit_tiny(tmp_path: Path, max_epochs: int, ckpt_path: str | None = None) -> Recorder:
    L.seed_everything(0)
    model = SwAV(num_prototypes=7, queue_length=64, queue_start_epoch=1, batch_size=8, **TINY)
    views = MultiCropViews([16, 8], [2, 1], [(0.3, 1), (0.1, 0.3)], flip_p=0, mean=None, std=None)
    data = SSLDataModule("builtin:mnist5k", batch_size=8, num_workers=0, views=views)
    recorder = Recorder()
    trainer = L.Trainer(max_epochs=max_epochs, limit_train_batches=3, limit_val_batches=0, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True), recorder])
    trainer.fit(model, data, ckpt_path=ckpt_path)
    return recorder


@pytest.mark.slow
def test_queue_survives_checkpoint_and_resume(mnist5k, tmp_path):
    first = fit_tiny(tmp_path, max_epochs=2)
    assert first.at_start[0][0] is None  # not created before queue_start_epoch
    saved, filled = first.at_end[1]
    assert saved is not None and filled == 24 and saved.abs().sum() > 0  # 3 steps of 8 into a queue of 64
    ckpt = torch.load(tmp_path / "ckpt/last.ckpt", weights_only=False)
    assert torch.equal(ckpt["swav_queue"]["queues"][0], saved)

    resumed = fit_tiny(tmp_path, max_epochs=3, ckpt_path="last")
    queue, filled_again = resumed.at_start[2]
    assert torch.equal(queue, saved) and filled_again == 24


# ---- prototype freezing ---------------------------------------------------------------------------------
def test_prototypes_get_no_gradient_while_frozen():
    model = attach_fake_trainer(SwAV(num_prototypes=7, freeze_prototypes_iters=2, **TINY), global_step=1)
    model.ssl_step({"views": [torch.rand(4, 1, 16, 16)] * 2}).loss.backward()
    model.on_before_optimizer_step(None)
    assert model.prototypes.weight.grad is None and model.projector[0].weight.grad is not None
    model.ssl_step({"views": [torch.rand(4, 1, 16, 16)] * 2}).loss.backward()
    model.trainer.global_step = 2  # iterations, not epochs
    model.on_before_optimizer_step(None)
    assert model.prototypes.weight.grad is not None


# ---- collapse diagnostics -----------------------------------------------------------------------------------
def test_loss_minus_ln_k_is_not_reported_while_the_prototypes_are_frozen():
    """Frozen random prototypes make every prediction nearly uniform (the recipe's first epoch: loss - ln K =
    0.008): reporting it then made the collapse monitor warn on healthy runs."""
    model = attach_fake_trainer(SwAV(num_prototypes=7, freeze_prototypes_iters=2, **TINY), global_step=1)
    scores, loss = torch.rand(4, 7), torch.tensor(math.log(7))
    assert set(model._prototype_use(scores, loss)) == {"train/prototypes_used"}
    model.trainer.global_step = 2
    logs = model._prototype_use(scores, loss)
    assert logs["train/loss_minus_lnK"].item() == pytest.approx(0.0) and logs["train/prototypes_used"].item() >= 1


def test_health_logs_read_one_for_collapsed_embeddings_and_agreeing_codes():
    model = SwAV(num_prototypes=5, **TINY)
    same = F.normalize(torch.ones(6, 128), dim=1)
    codes = {0: torch.eye(5)[[0, 1, 2, 3, 4, 0]], 1: torch.eye(5)[[0, 1, 2, 3, 4, 1]]}
    logs = model._health(same, codes)
    assert logs["train/z_mean_cos"].item() == pytest.approx(1.0, abs=1e-5)
    assert logs["train/code_agreement"].item() == pytest.approx(5 / 6)
    orthogonal = torch.eye(128)[:6]  # pairwise cosine 0
    assert model._health(orthogonal, codes)["train/z_mean_cos"].item() == pytest.approx(0.0, abs=1e-6)


# ---- the command line -------------------------------------------------------------------------------------
@pytest.mark.slow
def test_fit_swav_by_short_name_with_its_default_views(mnist5k, tmp_path):
    selfsup("fit", "--model", "SwAV", "--model.backbone", "resnet18", "--model.backbone_args", "{width: 4}",
            "--model.num_prototypes", "20", "--model.proj_hidden_dim", "32", "--data.batch_size", "16",
            "--data.num_workers", "0", "--trainer.fast_dev_run", "2", cwd=tmp_path)


@pytest.mark.slow
def test_fit_of_the_mnist_recipe_logs_loss_and_knn(mnist5k, tmp_path):
    selfsup("fit", "-c", str(REPO / "experiments/swav/mnist5k.yaml"),
            "--model.init_args.backbone_args", "{width: 4}", "--data.init_args.batch_size", "32",
            "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
            "--trainer.log_every_n_steps", "1", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.limit_val_batches", "2", "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    run = next((tmp_path / "runs/swav-mnist5k").glob("version_*"))
    assert (run / "checkpoints/last.ckpt").is_file()
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    for name in ("train/loss_step", "train/probe_top1_step", "val/probe_top1", "knn/top1", "train/z_mean_cos_step",
                 "train/code_agreement_step"):
        assert any(row.get(name) for row in rows), name


def test_imagenet_recipe_parses_with_the_paper_values(tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/swav/imagenet-resnet50.yaml"), "--print_config",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("class_path: selfsup.methods.SwAV", "backbone: resnet50", "num_prototypes: 3000",
                 "sinkhorn_eps: 0.05", "optimizer: larc", "lr: 4.8", "max_epochs: 800", "sizes:", "- 224", "- 96",
                 "freeze_prototypes_iters: 313", "exclude_norms_and_biases: false"):
        assert line in proc.stdout, line
