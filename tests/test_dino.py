"""DINO: the loss, targets, centre and schedules against their formulas written out here, the official code's
conventions (no (q, q) pairs, teacher on global crops only, centre updated after the loss, per-tensor clipping,
last layer frozen in epoch 0), 2 ranks x N == 1 rank x 2N, the bad-input lines and the recipes through the CLI."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from clirun import REPO, selfsup
from selfsup.errors import ConfigError
from selfsup.heads import DINOHead
from selfsup.losses import dino_loss, koleo_loss, sinkhorn_targets, teacher_temperature, updated_center
from selfsup.methods import DINO
from selfsup.optim import clip_grad_per_tensor_
from test_distributed import free_port

TINY_VIT = {"backbone": "vit_tiny", "in_channels": 1, "batch_size": 8,
            "backbone_args": {"image_size": 16, "patch_size": 4, "num_layers": 2, "num_heads": 2, "hidden_dim": 16,
                              "mlp_dim": 32, "pool": "cls"}}
TINY_HEAD = {"out_dim": 32, "head_hidden_dim": 16, "bottleneck_dim": 8}


def tiny_dino(**options) -> DINO:
    torch.manual_seed(0)
    return DINO(**{**TINY_VIT, **TINY_HEAD, **options})


def crops(b: int = 4, locals_: int = 3, seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, 1, 16, 16, generator=g) for _ in range(2)] + [
        torch.randn(b, 1, 8, 8, generator=g) for _ in range(locals_)]


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.double)


# ---- the loss and its parts, element by element --------------------------------------------------------------


def test_dino_loss_is_the_mean_cross_entropy_over_pairs_of_different_crops():
    student = [rand(3, 5, seed=s) for s in range(4)]
    teacher = [F.softmax(rand(3, 5, seed=10 + q), dim=1) for q in range(2)]
    expected, pairs = 0.0, 0
    for q in range(2):
        for v in range(4):
            if v == q:
                continue
            for b in range(3):
                p = [math.exp(float(x) / 0.1) for x in student[v][b]]
                expected += -sum(float(teacher[q][b, k]) * math.log(p[k] / sum(p)) for k in range(5)) / 3
            pairs += 1
    assert pairs == 6
    assert dino_loss(student, teacher, 0.1).item() == pytest.approx(expected / pairs, rel=1e-6)


def test_no_crop_predicts_its_own_target():
    # Crop 0's prediction is compared with the target of crop 1 only: its gradient is (p_0 - t_1) / (tau B pairs).
    student = [rand(3, 5, seed=s).requires_grad_(True) for s in range(3)]
    teacher = [F.softmax(rand(3, 5, seed=10 + q), dim=1) for q in range(2)]
    dino_loss(student, teacher, 0.1).backward()
    pairs = 2 * (3 - 1)
    want = (F.softmax(student[0].detach() / 0.1, dim=1) - teacher[1]) / (0.1 * 3 * pairs)
    assert torch.allclose(student[0].grad, want.to(student[0].grad.dtype), atol=1e-6)


def test_the_centre_moves_by_its_momentum_towards_the_mean_teacher_logits():
    center, logits = rand(1, 6, seed=0).float(), rand(8, 6, seed=1).float()
    assert torch.allclose(updated_center(center, logits, 0.9), 0.9 * center + 0.1 * logits.mean(0, keepdim=True))


def test_the_teacher_temperature_follows_dinos_linspace_then_stays():
    official = np.concatenate([np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07])
    assert [teacher_temperature(e, 30, 0.04, 0.07) for e in range(100)] == pytest.approx(list(official))
    assert teacher_temperature(0, 0, 0.04, 0.07) == 0.07  # no warmup: the final value from the start


def test_sinkhorn_targets_are_dinov2s_three_normalisations():
    logits, temp = rand(12, 5, seed=3) * 0.2, 0.07
    q = torch.exp(logits / temp).T  # K x B, as DINOv2 writes it
    q /= q.sum()
    for _ in range(3):
        q /= q.sum(dim=1, keepdim=True) * 5
        q /= q.sum(dim=0, keepdim=True) * 12
    want = (q * 12).T
    assert torch.allclose(sinkhorn_targets(logits.float(), temp), want.float(), atol=1e-5)


def test_koleo_is_minus_the_mean_log_distance_to_the_nearest_other_row():
    x = rand(6, 3, seed=4).float()
    u = x / x.norm(dim=1, keepdim=True)
    nearest = [min((float((u[i] - u[j]).norm()), j) for j in range(6) if j != i)[0] for i in range(6)]
    assert koleo_loss(x).item() == pytest.approx(-sum(math.log(d + 1e-8) for d in nearest) / 6, rel=1e-4)


def test_the_head_is_an_mlp_to_a_unit_bottleneck_then_a_weight_normalised_layer():
    head = DINOHead(16, out_dim=10, hidden_dim=12, bottleneck_dim=4)
    x = torch.randn(5, 16)
    z = F.normalize(head.mlp(x), dim=1)
    v = head.last_layer.weight_v
    assert torch.allclose(head(x), z @ (v / v.norm(dim=1, keepdim=True)).T, atol=1e-6)
    assert not head.last_layer.weight_g.requires_grad and (head.last_layer.weight_g == 1).all()
    assert DINOHead(16, 10, 12, 4, norm_last_layer=False).last_layer.weight_g.requires_grad
    assert [type(m).__name__ for m in head.mlp] == ["Linear", "GELU", "Linear", "GELU", "Linear"]


# ---- the method -------------------------------------------------------------------------------------------------


def test_targets_use_the_previous_centre_which_is_updated_after_the_loss():
    model = tiny_dino(warmup_teacher_temp=0.05, teacher_temp=0.05)
    previous = torch.randn(1, 32)
    model.center.copy_(previous)
    views = crops()
    with torch.no_grad():  # student and teacher start equal, so the step's EMA leaves the teacher as it is
        teacher = [model.momentum_head(model.momentum_backbone(g)) for g in views[:2]]
        student = [model.head(model.backbone(v)) for v in views]
    out = model.ssl_step({"views": views})
    targets = [F.softmax((t - previous) / 0.05, dim=1) for t in teacher]
    assert out.loss.item() == pytest.approx(dino_loss(student, targets, 0.1).item(), rel=1e-5)
    mean = torch.cat(teacher).mean(0, keepdim=True)
    assert torch.allclose(model.center, 0.9 * previous + 0.1 * mean, atol=1e-6)


def test_the_teacher_sees_only_the_global_crops_and_the_student_all():
    model = tiny_dino()
    seen = {"student": [], "teacher": []}
    model.backbone.register_forward_hook(lambda m, i, o: seen["student"].append(tuple(i[0].shape)))
    model.momentum_backbone.register_forward_hook(lambda m, i, o: seen["teacher"].append(tuple(i[0].shape)))
    model.ssl_step({"views": crops(b=4, locals_=3)})
    assert seen["teacher"] == [(8, 1, 16, 16)]  # both globals in one forward, no local crop
    assert seen["student"] == [(8, 1, 16, 16), (12, 1, 8, 8)]  # one forward per crop size


def test_the_teacher_has_no_drop_path_and_the_student_keeps_it():
    model = tiny_dino(backbone_args={**TINY_VIT["backbone_args"], "drop_path": 0.1})
    rates = [b.drop_path for b in model.backbone.encoder.layers]
    assert rates[-1] == pytest.approx(0.1) and all(b.drop_path == 0 for b in model.momentum_backbone.encoder.layers)


def test_clipping_caps_each_gradient_tensor_on_its_own():
    big, small = torch.nn.Parameter(torch.zeros(4)), torch.nn.Parameter(torch.zeros(3))
    big.grad, small.grad = torch.full((4,), 5.0), torch.full((3,), 0.5)  # norms 10 and 0.87
    clip_grad_per_tensor_([big, small], 3.0)
    assert big.grad.norm().item() == pytest.approx(3.0, rel=1e-5)
    assert torch.equal(small.grad, torch.full((3,), 0.5))  # a global-norm clip would have scaled it too


@pytest.mark.parametrize(("epoch", "frozen"), [(0, True), (1, False)])
def test_the_last_layer_gets_no_update_in_the_first_epoch(monkeypatch, epoch, frozen):
    model = tiny_dino(norm_last_layer=False, clip_grad=0.0)
    monkeypatch.setattr(DINO, "current_epoch", property(lambda self: epoch))
    opt = torch.optim.AdamW(model.parameters(), lr=0.1, weight_decay=0.04)
    before = {n: p.detach().clone() for n, p in model.head.named_parameters()}
    model.ssl_step({"views": crops()}).loss.backward()
    model.on_before_optimizer_step(opt)
    opt.step()
    last = [n for n in before if n.startswith("last_layer.")]
    assert len(last) == 2
    for name, p in model.head.named_parameters():
        unchanged = torch.equal(p, before[name])
        assert unchanged == (frozen and name in last), name


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_the_teacher_starts_as_an_exact_copy_and_the_ema_and_optimizer_reach_the_whole_last_layer(norm_last_layer):
    model = tiny_dino(norm_last_layer=norm_last_layer, head_bn=True)
    student = {k: v for k, v in model.state_dict().items() if k.startswith(("backbone.", "head."))}
    teacher = {k.removeprefix("momentum_"): v for k, v in model.state_dict().items() if k.startswith("momentum_")}
    assert student.keys() == teacher.keys() and all(torch.equal(student[k], teacher[k]) for k in student)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(1.0)
    model.update_momentum()  # outside a trainer: the base momentum
    m = model.hparams.base_momentum
    for (name, t), p in zip(model.momentum_head.named_parameters(), model.head.parameters()):
        moved = torch.allclose(t, p - (1.0 - (1 - m) * 1.0), atol=1e-6) if p.requires_grad else torch.equal(t, p - 1)
        assert moved, name  # a trainable one moved (1 - m) of the way; weight_g under norm_last_layer stays 1
    probe = set(model.probe.parameters()) if model.probe is not None else set()
    groups = model.parameter_groups([(n, p) for n, p in model.named_parameters() if p not in probe])
    optimized = {id(p) for g in groups for p in g["params"]}
    assert optimized == {id(p) for p in model.parameters() if p.requires_grad and p not in probe}
    assert id(model.head.last_layer.weight_v) in optimized
    assert (id(model.head.last_layer.weight_g) in optimized) is not norm_last_layer
    assert not optimized & {id(p) for p in [*model.momentum_head.parameters(), *model.momentum_backbone.parameters()]}


def test_weight_decay_follows_a_cosine_and_spares_only_biases_and_vectors(monkeypatch):
    model = tiny_dino()
    model._trainer = type("Trainer", (), {"estimated_stepping_batches": 100})()
    for step in (0, 30, 50, 100):
        monkeypatch.setattr(DINO, "global_step", property(lambda self, s=step: s))
        want = 0.4 + 0.5 * (0.04 - 0.4) * (1 + math.cos(math.pi * step / 100))  # DINO's cosine_scheduler
        assert model.weight_decay_now() == pytest.approx(want)
    model._trainer = None
    assert model.no_decay("backbone.encoder.layers.encoder_layer_0.ln_1.weight", torch.zeros(3))
    assert not model.no_decay("backbone.class_token", model.backbone.class_token)  # decayed, as DINO does
    assert not model.no_decay("backbone.encoder.pos_embedding", model.backbone.encoder.pos_embedding)


def test_layer_decay_gives_each_block_its_share_of_the_lr():
    model = tiny_dino(layer_decay=0.5)
    named = list(model.named_parameters())
    groups = model.parameter_groups(named)
    scale = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    params = dict(named)
    assert scale[id(params["backbone.conv_proj.weight"])] == pytest.approx(0.5 ** 3)
    assert scale[id(params["backbone.encoder.layers.encoder_layer_1.mlp.0.weight"])] == pytest.approx(0.5)
    assert scale[id(params["head.mlp.0.weight"])] == 1.0


def test_koleo_term_is_added_with_its_weight():
    model = tiny_dino(koleo_weight=0.1)
    out = model.ssl_step({"views": crops()})
    assert set(k for k in out.logs if k.startswith("train/loss_")) == {"train/loss_dino", "train/loss_koleo"}
    assert out.loss.item() == pytest.approx((out.logs["train/loss_dino"] + out.logs["train/loss_koleo"]).item())


@pytest.mark.parametrize(("options", "words"), [
    ({"teacher_temp": 0.2}, "model.teacher_temp 0.2 is above model.student_temp 0.1"),
    ({"warmup_teacher_temp": 0.11}, "warmup_teacher_temp"),
    ({"targets": "softmax"}, "centering or sinkhorn_knopp"),
    ({"center_momentum": 1.5}, "center_momentum"),
])
def test_bad_options_are_refused_in_one_line(options, words):
    with pytest.raises(ConfigError, match=words):
        tiny_dino(**options)


# ---- 2 ranks x N == 1 rank x 2N -------------------------------------------------------------------------------

N = 4


def step_results(model: DINO, views: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    loss = model.ssl_step({"views": views}).loss
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _rank_main(rank: int, world: int, port: int, out: str, targets: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model, views = tiny_dino(targets=targets), crops(b=2 * N)
        loss, grads = step_results(model, [v[rank * N:(rank + 1) * N] for v in views])
        for t in (loss, *grads):  # DDP's averaging
            dist.all_reduce(t)
            t /= world
        torch.save({"loss": loss, "grads": grads, "center": model.center}, Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("targets", ["centering", "sinkhorn_knopp"])
def test_two_ranks_equal_one_rank_with_twice_the_batch(tmp_path, targets):
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path), targets), nprocs=2, join=True)
    model = tiny_dino(targets=targets)
    loss, grads = step_results(model, crops(b=2 * N))
    assert any(g.abs().max() > 0 for g in grads)
    for r in range(2):
        got = torch.load(tmp_path / f"rank{r}.pt", weights_only=True)
        assert got["loss"].item() == pytest.approx(loss.item(), rel=1e-5)
        assert torch.allclose(got["center"], model.center, atol=1e-6)
        for a, b in zip(got["grads"], grads, strict=True):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()


# ---- through the command line ----------------------------------------------------------------------------------

VIT_RECIPE = str(REPO / "experiments/dino/mnist5k-vit-tiny.yaml")
CLI_TINY = ["--model.init_args.backbone_args", "{num_layers: 1, num_heads: 2, hidden_dim: 16, mlp_dim: 32, pool: cls}",
            "--model.init_args.out_dim", "64", "--model.init_args.head_hidden_dim", "32",
            "--model.init_args.bottleneck_dim", "16", "--data.init_args.batch_size", "16",
            "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--trainer.callbacks=[]", "--trainer.enable_progress_bar", "false",
            "--trainer.log_every_n_steps", "1"]


@pytest.fixture(scope="module")
def vit_run(mnist5k, tmp_path_factory) -> Path:
    """A 2-step DINO run of the ViT recipe, shrunk; its run folder."""
    cwd = tmp_path_factory.mktemp("dino")
    selfsup("fit", "-c", VIT_RECIPE, *CLI_TINY, cwd=cwd)
    return next((cwd / "runs/dino-mnist5k-vit-tiny").glob("version_*"))


@pytest.mark.slow
def test_the_vit_recipe_trains_and_logs_its_schedules(vit_run):
    rows = list(csv.DictReader((vit_run / "metrics.csv").open()))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)
    for name in ("schedule/teacher_temp", "schedule/momentum", "schedule/weight_decay"):
        assert any(r.get(name) for r in rows), name
    assert (vit_run / "checkpoints/last.ckpt").is_file()


BAD = {
    "patch": (["--model.init_args.backbone_args", "{image_size: 30, patch_size: 4}"],
              "ViT image_size 30 is not a multiple of patch_size 4"),
    "local-crop": (["--data.init_args.views.init_args.local_size", "2"],
                   "crops of 2 px do not split into whole 4 px patches"),
    "teacher-temp": (["--model.init_args.teacher_temp", "0.2"], "model.teacher_temp 0.2 is above"),
    "norm-last-layer": (["--ckpt_path", "{ckpt}", "--model.init_args.norm_last_layer", "false"],
                        "was trained with norm_last_layer: True, but the config sets False"),
    "vit-into-resnet": (["--ckpt_path", "{ckpt}", "--model.init_args.backbone", "resnet18",
                         "--model.init_args.backbone_args", "{width: 4}"], "but the config asks for resnet18"),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(vit_run, tmp_path, case):
    overrides, message = BAD[case]
    ckpt = vit_run / "checkpoints/last.ckpt"
    before = ckpt.read_bytes()
    args = [a.replace("{ckpt}", str(ckpt)) for a in overrides]
    shrunk = CLI_TINY[2:] if "--model.init_args.backbone_args" in overrides else CLI_TINY
    proc = selfsup("fit", "-c", VIT_RECIPE, *shrunk, *args, cwd=tmp_path, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("selfsup: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert ckpt.read_bytes() == before
    assert not list(tmp_path.glob("runs/*/version_*/checkpoints/*")), "a checkpoint was written"



@pytest.mark.slow
def test_the_imagenet_recipe_parses_with_the_official_values(tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/dino/imagenet-vit-s16.yaml"), "--print_config", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("class_path: selfsup.methods.DINO", "backbone: vit_s_16", "out_dim: 65536", "teacher_temp: 0.04",
                 "weight_decay_end: 0.4", "clip_grad: 3.0", "base_momentum: 0.996", "num_local: 8", "max_epochs: 100",
                 "precision: 16-mixed", "lr: 0.0005"):
        assert line in proc.stdout, line


@pytest.mark.parametrize("method", ["DINO", "iBOT"])
def test_the_cli_sees_dinos_optimizer_defaults(method):
    """``selfsup fit --model DINO`` without a recipe gets DINO's AdamW, lr and weight decay, not the base's LARS:
    the CLI reads defaults from the signatures, so they must be there, not set inside ``__init__``."""
    from jsonargparse import ArgumentParser

    import selfsup.methods

    parser = ArgumentParser()
    parser.add_class_arguments(getattr(selfsup.methods, method), "model")
    model = parser.get_defaults().model
    assert (model.optimizer, model.lr, model.weight_decay, model.weight_decay_end) == ("adamw", 5e-4, 0.04, 0.4)
