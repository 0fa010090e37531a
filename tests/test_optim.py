"""LARS and LARC against their formulas (docs/methods/simclr.md, swav.md, pixpro.md), computed independently;
schedule and lr scaling values."""

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from selfsup.errors import ConfigError
from selfsup.methods import SimCLR
from selfsup.momentum import cosine_momentum
from selfsup.optim import LARS, cosine_ramp, scaled_lr, split_decay, warmup_cosine


def reference_lars_step(w, g, v, lr, wd, eta=1e-3, momentum=0.9, adapt=True):
    """SimCLR's LARS update for one parameter, element lists in plain Python."""
    if adapt:
        g = [gi + wd * wi for gi, wi in zip(g, w)]
        wn, gn = math.sqrt(sum(x * x for x in w)), math.sqrt(sum(x * x for x in g))
        trust = eta * wn / gn if wn > 0 and gn > 0 else 1.0
    else:
        trust = 1.0
    v = [momentum * vi + lr * trust * gi for vi, gi in zip(v, g)]
    return [wi - vi for wi, vi in zip(w, v)], v


def test_lars_matches_the_formula_over_three_steps():
    torch.manual_seed(0)
    weight = nn.Parameter(torch.randn(3, 4, dtype=torch.double))
    bias = nn.Parameter(torch.randn(4, dtype=torch.double))
    opt = LARS([{"params": [weight], "adapt": True, "weight_decay": 1e-2},
                {"params": [bias], "adapt": False, "weight_decay": 0.0}], lr=0.5, weight_decay=1e-2)
    ref_w, ref_vw = weight.detach().flatten().tolist(), [0.0] * 12
    ref_b, ref_vb = bias.detach().tolist(), [0.0] * 4
    for _ in range(3):
        gw, gb = torch.randn(3, 4, dtype=torch.double), torch.randn(4, dtype=torch.double)
        weight.grad, bias.grad = gw.clone(), gb.clone()
        opt.step()
        ref_w, ref_vw = reference_lars_step(ref_w, gw.flatten().tolist(), ref_vw, 0.5, 1e-2)
        ref_b, ref_vb = reference_lars_step(ref_b, gb.tolist(), ref_vb, 0.5, 0.0, adapt=False)
        assert torch.allclose(weight.detach().flatten(), torch.tensor(ref_w, dtype=torch.double), atol=1e-12)
        assert torch.allclose(bias.detach(), torch.tensor(ref_b, dtype=torch.double), atol=1e-12)


def test_larc_matches_swav_formula_over_three_steps():
    torch.manual_seed(0)
    w = nn.Parameter(torch.randn(3, 4, dtype=torch.double))
    opt = LARS([w], lr=0.5, momentum=0.9, weight_decay=1e-2, variant="larc")
    ref, buf = w.detach().clone(), torch.zeros(3, 4, dtype=torch.double)
    for lr in (0.5, 0.25, 0.1):  # a schedule: LARC multiplies the buffer by the current lr
        opt.param_groups[0]["lr"] = lr
        g = torch.randn(3, 4, dtype=torch.double)
        w.grad = g.clone()
        opt.step()
        trust = 1e-3 * ref.norm() / (g.norm() + 1e-2 * ref.norm() + 1e-8)
        buf = 0.9 * buf + (g + 1e-2 * ref) * trust
        ref = ref - lr * buf
        assert torch.allclose(w.detach(), ref, atol=1e-12)


def test_lars_trust_ratio_is_one_for_zero_weights():
    w = nn.Parameter(torch.zeros(5))
    w.grad = torch.ones(5)
    LARS([w], lr=0.1, momentum=0.0).step()
    assert torch.allclose(w.detach(), torch.full((5,), -0.1))


def test_split_decay_excludes_norms_and_biases():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2, bias=False))
    decay, plain = split_decay(model.named_parameters(), 1e-4)
    assert [p.shape for p in decay["params"]] == [torch.Size([4, 4]), torch.Size([2, 4])]
    assert len(plain["params"]) == 3 and plain["weight_decay"] == 0 and plain["adapt"] is False


def test_warmup_then_cosine():
    assert warmup_cosine(0, 100, 10) == 0.0
    assert warmup_cosine(5, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)
    assert warmup_cosine(100, 100, 10) == pytest.approx(0.0)
    assert warmup_cosine(0, 100, 10, start_factor=0.0625) == pytest.approx(0.0625)
    assert warmup_cosine(100, 100, 10, final_factor=0.001) == pytest.approx(0.001)


def test_lr_scaling_rules():
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_lr(0.1, 4096, "none") == 0.1
    with pytest.raises(ConfigError):
        scaled_lr(0.1, 256, "cubic")


def test_unknown_lars_variant_is_refused():
    with pytest.raises(ConfigError, match="LARS variant"):
        LARS([nn.Parameter(torch.zeros(2))], lr=0.1, variant="lamb")


def test_cosine_ramp_is_the_one_cosine_of_the_lr_the_weight_decay_and_the_momentum():
    for step in (0, 25, 50, 100, 130):
        curve = 0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi * min(step, 100) / 100)) / 2
        assert cosine_ramp(step, 100, 0.04, 0.4) == pytest.approx(curve)
        assert cosine_momentum(step, 100, 0.99) == pytest.approx(cosine_ramp(step, 100, 0.99, 1.0))
        assert warmup_cosine(10 + step, 110, 10, final_factor=0.1) == pytest.approx(cosine_ramp(step, 100, 1.0, 0.1))


TINY_VIT = {"image_size": 16, "patch_size": 4, "num_layers": 2, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16}


def started(model, step: int = 0, total: int = 100):
    """``model`` with a stand-in trainer at ``step`` of ``total`` and its optimizer built; logs collected."""
    model._trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=total, world_size=1,
                                     accumulate_grad_batches=1, max_epochs=1)
    model._trainer.optimizers = [model.configure_optimizers()["optimizer"]]
    model.logged = {}
    model.log = lambda name, value, **kwargs: model.logged.update({name: float(value)})
    return model


def test_without_weight_decay_end_the_weight_decay_stays_and_is_not_logged():
    model = started(SimCLR(backbone="resnet18", backbone_args={"width": 4}, in_channels=1, weight_decay=1e-4), 50)
    model.on_train_batch_start({}, 0)
    assert sorted(g["weight_decay"] for g in model.trainer.optimizers[0].param_groups) == [0.0, 1e-4]
    assert "schedule/weight_decay" not in model.logged


def test_any_method_takes_the_weight_decay_schedule_and_layer_decay():
    model = started(SimCLR(backbone="vit_tiny", backbone_args=TINY_VIT, in_channels=1, weight_decay=0.1,
                           weight_decay_end=0.3, layer_decay=0.5, optimizer="adamw"), 100)
    model.on_train_batch_start({}, 0)
    opt, named = model.trainer.optimizers[0], dict(model.named_parameters())
    lr_scale = {id(p): g["initial_lr"] / opt.defaults["lr"] for g in opt.param_groups for p in g["params"]}
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    expected = {  # 2 blocks: embedding depth 0, block i depth i + 1, the rest of the model depth 3
        "backbone.conv_proj.weight": (0.5**3, 0.3), "backbone.encoder.pos_embedding": (0.5**3, 0.0),
        "backbone.encoder.layers.encoder_layer_1.mlp.0.weight": (0.5, 0.3),
        "backbone.encoder.layers.encoder_layer_1.ln_1.bias": (0.5, 0.0),
        "projector.0.weight": (1.0, 0.3),
    }
    for name, (scale, wd) in expected.items():
        assert (lr_scale[id(named[name])], decay[id(named[name])]) == pytest.approx((scale, wd)), name
    assert model.logged["schedule/weight_decay"] == pytest.approx(0.3)


def test_layer_decay_on_a_backbone_without_blocks_is_refused_in_one_line():
    with pytest.raises(ConfigError, match="model.layer_decay 0.9 needs a backbone with transformer blocks .* resnet18 "
                                          "has none; set model.layer_decay: 1.0"):
        SimCLR(backbone="resnet18", backbone_args={"width": 4}, layer_decay=0.9)
