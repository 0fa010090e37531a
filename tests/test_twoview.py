"""BYOL, MoCo v3, Barlow Twins and VICReg: each loss against its formula written out here, the shared heads and
momentum teacher, the methods' steps and option checks, and each recipe through the CLI."""

from __future__ import annotations

import csv
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from clirun import REPO, TINY, selfsup
from selfsup.errors import ConfigError
from selfsup.heads import MLP
from selfsup.losses import barlow_twins_loss, byol_loss, moco_v3_loss, vicreg_terms
from selfsup.losses.twoview import cross_squares
from selfsup.methods import BYOL, BarlowTwins, MoCoV3, VICReg
from selfsup.momentum import linear_momentum

SMALL = {"backbone": "resnet18", "backbone_args": {"width": 4, "cifar_stem": True}, "in_channels": 1}
HEADS = {BYOL: {"proj_dim": 8, "proj_hidden_dim": 16, "pred_hidden_dim": 16},
         MoCoV3: {"proj_dim": 8, "proj_hidden_dim": 16, "pred_hidden_dim": 16},
         BarlowTwins: {"proj_dim": 8, "proj_hidden_dim": 16}, VICReg: {"proj_dim": 8, "proj_hidden_dim": 16}}
METHODS = {"byol": BYOL, "mocov3": MoCoV3, "barlowtwins": BarlowTwins, "vicreg": VICReg}


def rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.double)


# ---- the losses, element by element ---------------------------------------------------------------------------


def test_byol_sums_both_directions_of_two_minus_two_cosines():
    p1, p2, t1, t2 = (rand(5, 4, seed=s) for s in range(4))

    def direction(p, t):
        return sum(2 - 2 * float(p[i] @ t[i] / (p[i].norm() * t[i].norm())) for i in range(len(p))) / len(p)

    want = direction(p1, t2) + direction(p2, t1)
    assert byol_loss(p1, p2, t1, t2).item() == pytest.approx(want, rel=1e-6)
    assert byol_loss(p1, p2, 3 * p2, p1).item() == pytest.approx(0.0, abs=1e-6)  # scale-free, 0 at agreement


def test_byol_sends_no_gradient_into_the_targets():
    p1, p2, t1, t2 = (rand(5, 4, seed=s).requires_grad_(True) for s in range(4))
    byol_loss(p1, p2, t1, t2).backward()
    assert t1.grad is None and t2.grad is None and p1.grad.abs().sum() > 0


def test_moco_v3_is_two_t_times_the_infonce_of_each_query_against_all_keys():
    q1, q2, k1, k2 = (rand(6, 4, seed=s) for s in range(4))
    tau = 0.2

    def contrast(q, k):
        q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
        total = 0.0
        for i in range(len(q)):
            scores = [math.exp(float(q[i] @ k[j]) / tau) for j in range(len(k))]
            total += -math.log(scores[i] / sum(scores))
        return 2 * tau * total / len(q)

    want = contrast(q1, k2) + contrast(q2, k1)
    assert moco_v3_loss(q1, q2, k1, k2, tau).item() == pytest.approx(want, rel=1e-6)


@pytest.mark.parametrize("n, d", [(10, 3), (4, 9)])  # the D x D product; the N x N Grams (2N < D)
def test_barlow_twins_drives_the_cross_correlation_of_standardised_projections_to_the_identity(n, d):
    z1, z2 = rand(n, d, seed=0) * 2 + 1, rand(n, d, seed=1) - 3
    lambd = 0.3
    s1 = [(z1[:, j] - z1[:, j].mean()) / math.sqrt(float(((z1[:, j] - z1[:, j].mean()) ** 2).mean()) + 1e-5)
          for j in range(d)]
    s2 = [(z2[:, j] - z2[:, j].mean()) / math.sqrt(float(((z2[:, j] - z2[:, j].mean()) ** 2).mean()) + 1e-5)
          for j in range(d)]
    c = [[float(s1[i] @ s2[j]) / n for j in range(d)] for i in range(d)]
    want = sum((1 - c[i][i]) ** 2 for i in range(d)) + lambd * sum(c[i][j] ** 2 for i in range(d) for j in range(d)
                                                                    if i != j)
    assert barlow_twins_loss(z1, z2, lambd).item() == pytest.approx(want, rel=1e-6)
    assert barlow_twins_loss(z1, z1, 0.0).item() == pytest.approx(0.0, abs=1e-4)  # C_ii = 1 - eps/var


@pytest.mark.parametrize("n, d", [(9, 4), (4, 9)])  # Z^T Z; the N x N Gram Z Z^T (N < D)
def test_vicreg_terms_follow_their_formulas(n, d):
    z1, z2 = rand(n, d, seed=0) * 0.5, rand(n, d, seed=1) * 3
    invariance = float(((z1 - z2) ** 2).sum()) / (n * d)

    def variance(z):
        return sum(max(0.0, 1 - math.sqrt(float(torch.var(z[:, j], correction=1)) + 1e-4)) for j in range(d)) / d

    def covariance(z):
        cov = torch.cov(z.T)  # unbiased, rows are variables
        return sum(float(cov[i, j]) ** 2 for i in range(d) for j in range(d) if i != j) / d

    got = vicreg_terms(z1, z2)
    want = (invariance, variance(z1) / 2 + variance(z2) / 2, covariance(z1) + covariance(z2))
    for g, w in zip(got, want):
        assert g.item() == pytest.approx(w, rel=1e-6)
    assert 0 < want[1] and 0 < want[2]  # z1's std (0.5) is under the hinge; z2's is not


@pytest.mark.parametrize("n, d", [(6, 5), (3, 7), (2, 9)])
@pytest.mark.parametrize("same", [True, False])
def test_cross_squares_is_the_sum_of_squares_of_the_feature_product_with_its_gradient(n, d, same):
    a = rand(n, d, seed=0).requires_grad_()
    b = a if same else rand(n, d, seed=1).requires_grad_()
    leaves = (a,) if same else (a, b)
    got = cross_squares(a, b)
    want = sum(float(a[:, i] @ b[:, j]) ** 2 for i in range(d) for j in range(d))
    assert got.item() == pytest.approx(want, rel=1e-12)
    direct = torch.autograd.grad((a.T @ b).pow(2).sum(), leaves)
    for g, w in zip(torch.autograd.grad(got, leaves), direct):
        torch.testing.assert_close(g, w)


def test_losses_stay_float32_under_bf16_autocast():
    z1, z2 = rand(8, 4, seed=0).float(), rand(8, 4, seed=1).float()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        values = [byol_loss(z1, z2, z2, z1), moco_v3_loss(z1, z2, z2, z1), barlow_twins_loss(z1, z2),
                  *vicreg_terms(z1, z2)]
    assert all(v.dtype == torch.float32 for v in values)


# ---- heads and the momentum teacher ---------------------------------------------------------------------------


def test_mlp_last_layer_without_bias_or_without_affine_norm():
    byol = MLP([8, 16, 4], last_bias=False)
    assert byol[0].bias is None and byol[-1].bias is None and isinstance(byol[1], torch.nn.BatchNorm1d)
    moco = MLP([8, 16, 4], last_norm="bn_noaffine")
    assert moco[-2].bias is None and moco[-1].weight is None and not moco[-1].affine


def test_linear_momentum_schedule():
    assert linear_momentum(0, 10, 0.9) == pytest.approx(0.9)
    assert linear_momentum(5, 10, 0.9) == pytest.approx(0.95)
    assert linear_momentum(20, 10, 0.9) == pytest.approx(1.0)


def attach_fake_trainer(model, **attrs):
    model._trainer = SimpleNamespace(**{"world_size": 1, "current_epoch": 0, "global_step": 0, "max_epochs": 1,
                                        "estimated_stepping_batches": 10, "accumulate_grad_batches": 1, **attrs})
    return model


def fake_batch(b: int = 6) -> dict:
    g = torch.Generator().manual_seed(0)
    return {"views": [torch.rand(b, 1, 16, 16, generator=g) for _ in range(2)], "label": torch.zeros(b).long()}


@pytest.mark.parametrize("cls", [BYOL, MoCoV3])
def test_teacher_steps_once_before_the_targets_and_gets_no_gradient(cls):
    model = attach_fake_trainer(cls(base_momentum=0.9, momentum_schedule="linear", **HEADS[cls], **SMALL),
                                global_step=5)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(0.05)
    tau = linear_momentum(5, 10, 0.9)
    want = [tau * t + (1 - tau) * o for t, o in zip(model.momentum_backbone.parameters(), model.backbone.parameters())]
    out = model.ssl_step(fake_batch())
    out.loss.backward()
    assert all(torch.allclose(t, w) for t, w in zip(model.momentum_backbone.parameters(), want))
    assert out.logs["train/momentum"].item() == pytest.approx(tau)
    teacher = [*model.momentum_backbone.parameters(), *model.momentum_projector.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in teacher)
    assert model.predictor[0].weight.grad is not None
    keys = model.state_dict().keys()
    assert any(k.startswith("momentum_backbone.") for k in keys) and any(k.startswith("momentum_projector.")
                                                                          for k in keys)
    optimized = {id(p) for g in model.configure_optimizers()["optimizer"].param_groups for p in g["params"]}
    assert optimized.isdisjoint(id(p) for p in teacher) and id(model.predictor[0].weight) in optimized


def test_byol_target_can_start_from_its_own_initialisation():
    copy = BYOL(**HEADS[BYOL], **SMALL)
    assert torch.equal(copy.momentum_backbone.conv1.weight, copy.backbone.conv1.weight)
    own = BYOL(independent_target=True, **HEADS[BYOL], **SMALL)
    assert not torch.equal(own.momentum_backbone.conv1.weight, own.backbone.conv1.weight)
    assert not own.momentum_projector[0].weight.requires_grad


def test_barlow_twins_gives_biases_and_norms_their_own_lr():
    model = attach_fake_trainer(BarlowTwins(lr=0.2, lr_scaling="none", no_decay_lr_scale=0.024, **HEADS[BarlowTwins],
                                            **SMALL))
    groups = model.configure_optimizers()["optimizer"].param_groups
    assert sorted(g["initial_lr"] for g in groups) == pytest.approx([0.2 * 0.024, 0.2])  # peak lr of the schedule
    plain = next(g for g in groups if not g["adapt"])
    assert all(p.ndim <= 1 for p in plain["params"]) and plain["weight_decay"] == 0


@pytest.mark.parametrize("cls", list(HEADS))
def test_step_on_a_batch_of_two_views(cls):
    model = cls(**HEADS[cls], **SMALL)
    out = model.ssl_step(fake_batch())
    out.loss.backward()
    assert torch.isfinite(out.loss) and out.features.shape == (6, model.backbone.num_features)
    assert model.backbone.conv1.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("cls", list(HEADS))
def test_joint_forward_normalises_both_views_as_one_batch(cls):
    torch.manual_seed(0)
    model = cls(**HEADS[cls], **SMALL, joint_forward=True)
    views = fake_batch()["views"]
    (f1, z1), (f2, z2) = model.per_view(views, model.backbone, model.projector)
    joint = model.projector(model.backbone(torch.cat(views)))
    torch.testing.assert_close(torch.cat([z1, z2]), joint)
    model.joint_forward = False
    (g1, y1), _ = model.per_view(views, model.backbone, model.projector)
    torch.testing.assert_close(y1, model.projector(model.backbone(views[0])))
    assert not torch.allclose(y1, z1)  # batch statistics over one view, not over both


# ---- the asymmetric views ------------------------------------------------------------------------------------


def asymmetric_views_of(views, pixels, path: str) -> list[torch.Tensor]:
    """The two views of uint8 images (B, H, W) along one path a batch takes: batched ops (``batch``), or cut while
    decoding, then colour in the worker (``crops``) or on the device (``crops_on_device``)."""
    import io
    import random

    from PIL import Image

    from selfsup.data.crops import collate_crops, decode_crops

    if path == "batch":
        out = views.batch(torch.from_numpy(pixels)[:, None])
    else:
        encoded = []
        for image in pixels:
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, "PNG")
            encoded.append(decode_crops(buf.getvalue(), 1, views.crop_specs, random.Random(0)))
        out = views.from_crops(collate_crops(encoded), on_device=path == "crops_on_device")
    assert list(out) == ["views"] and views.kind == "pair"
    return out["views"]


PATHS = ["batch", "crops", "crops_on_device"]
PLAIN = {"size": 12, "scale": (1.0, 1.0), "ratio": (1.0, 1.0), "flip_p": 0.0, "grayscale_p": 0.0,
         "blur_p": (0.0, 0.0), "mean": None, "std": None}


@pytest.mark.parametrize("path", PATHS)
def test_asymmetric_views_solarize_only_the_second_view(path):
    """Whole-image crops, no jitter, blur or flip: view 2 (solarize p 1) is view 1 (solarize p 0) solarized."""
    import numpy as np

    from selfsup.data.coord_views import AsymmetricViews

    views = AsymmetricViews(**PLAIN, jitter_p=0.0, solarize_p=(0.0, 1.0))
    pixels = np.random.default_rng(0).integers(0, 256, (4, 12, 12), dtype=np.uint8)
    first, second = asymmetric_views_of(views, pixels, path)
    assert torch.allclose(first, torch.from_numpy(pixels)[:, None] / 255, atol=1e-6)
    assert torch.allclose(second, torch.where(first >= 0.5, 1 - first, first), atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
def test_asymmetric_views_add_byols_brightness_on_every_path(path):
    """Black images, brightness jitter 0.4 only: multiplied they stay black; BYOL's additive brightness lifts each
    view to one gray level max(0, U[-0.4, 0.4]), a different one per image."""
    import numpy as np

    from selfsup.data.coord_views import AsymmetricViews

    black = np.zeros((32, 12, 12), dtype=np.uint8)
    torch.manual_seed(0)
    for additive in (False, True):
        views = AsymmetricViews(**PLAIN, jitter=(0.4, 0.0, 0.0, 0.0), jitter_p=1.0, solarize_p=(0.0, 0.0),
                                additive_brightness=additive)
        for view in asymmetric_views_of(views, black, path):
            levels = view.flatten(1)
            assert torch.equal(levels.amin(1), levels.amax(1))  # one level per image
            if not additive:
                assert not levels.any()
                continue
            assert levels.max() <= 0.4 + 1 / 255 and (levels[:, 0] > 0.05).sum() >= 8
            assert len(torch.unique((levels[:, 0] * 255).round())) >= 8


# ---- bad options: one line naming the option ------------------------------------------------------------------


@pytest.mark.parametrize(("cls", "option", "value", "says"), [
    (BYOL, "proj_dim", 0, "model.proj_dim must be > 0"),
    (MoCoV3, "pred_hidden_dim", 0, "model.pred_hidden_dim must be > 0"),
    (MoCoV3, "temperature", 0.0, "model.temperature must be > 0"),
    (BarlowTwins, "proj_hidden_dim", 0, "model.proj_hidden_dim must be > 0"),
    (BarlowTwins, "lambd", -0.1, "model.lambd must be >= 0"),
    (VICReg, "variance_weight", -1.0, "model.variance_weight must be >= 0"),
    (BYOL, "base_momentum", 1.5, "model.base_momentum must be in [0, 1]"),
    (MoCoV3, "base_momentum", -0.1, "model.base_momentum must be in [0, 1]"),
    (BYOL, "momentum_schedule", "step", "model.momentum_schedule 'step' is unknown"),
])
def test_bad_options_name_themselves(cls, option, value, says):
    with pytest.raises(ConfigError, match=r"^" + says.replace("[", r"\[").replace("]", r"\]")):
        cls(**{**HEADS[cls], option: value}, **SMALL)


def test_the_four_are_methods_and_their_shared_mixins_are_not():
    from selfsup.cli_checks import method_names

    names = method_names()
    assert {"BYOL", "MoCoV3", "BarlowTwins", "VICReg"} <= set(names)
    assert not {"TwoViews", "TwoViewTeacher", "MomentumTeacher"} & set(names)


@pytest.mark.slow
def test_a_predictor_asked_of_a_method_without_one_fails_in_one_line(tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/vicreg/mnist5k.yaml"), "--model.init_args.pred_hidden_dim",
                   "64", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "VICReg has no option 'pred_hidden_dim'" in proc.stderr.strip().splitlines()[-1]


# ---- the recipes through the CLI ------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("method", list(METHODS))
def test_mnist_recipe_trains_a_few_steps(mnist5k, tmp_path, method):
    selfsup("fit", "-c", str(REPO / f"experiments/{method}/mnist5k.yaml"), *TINY, "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "1", "--trainer.callbacks=[]",
            "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    run = next((tmp_path / f"runs/{method}-mnist5k").glob("version_*"))
    losses = [float(r["train/loss_step"]) for r in csv.DictReader((run / "metrics.csv").open())
              if r.get("train/loss_step")]
    assert len(losses) == 3 and all(math.isfinite(v) for v in losses)
    assert (run / "checkpoints/last.ckpt").is_file()


@pytest.mark.slow
@pytest.mark.parametrize(("recipe", "lines"), [
    ("byol/imagenet-resnet50", ["class_path: selfsup.methods.BYOL", "base_momentum: 0.996", "weight_decay: 1.5e-06",
                                "additive_brightness: true"]),
    ("mocov3/imagenet-resnet50", ["class_path: selfsup.methods.MoCoV3", "temperature: 1.0", "max_epochs: 300"]),
    ("mocov3/imagenet-vit-base", ["backbone: vit_b_16", "optimizer: adamw", "pred_last_norm: true",
                                  "pos_embed: sincos", "freeze_patch_embed: true"]),
    ("mocov3/imagenet-vit-small", ["hidden_dim: 384", "num_heads: 12", "pos_embed: sincos", "- 0.999"]),
    ("barlowtwins/imagenet-resnet50", ["lambd: 0.0051", "no_decay_lr_scale: 0.024", "proj_dim: 8192"]),
    ("vicreg/imagenet-resnet50", ["invariance_weight: 25.0", "covariance_weight: 1.0", "final_lr_factor: 0.001"]),
])
def test_paper_recipes_parse_with_the_official_values(tmp_path, recipe, lines):
    proc = selfsup("fit", "-c", str(REPO / f"experiments/{recipe}.yaml"), "--print_config", cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in lines:
        assert line in proc.stdout, line
