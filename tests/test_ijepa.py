"""I-JEPA: the multi-block masks, the targets, the predictor, the loss and the schedules, each against its formula
written out here."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from clirun import REPO, selfsup
from selfsup.backbones import build_backbone
from selfsup.data.multiblock import MultiBlockMasks, MultiBlockViews
from selfsup.errors import ConfigError
from selfsup.eval.checkpoint import backbone_state
from selfsup.heads import BlockPredictor
from selfsup.methods import IJEPA
from test_dino import tiny_dino

VIT = {"image_size": 16, "patch_size": 4, "num_layers": 1, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16,
       "pos_embed": "sincos", "class_token": False}
SMALL = {"backbone": "vit", "backbone_args": VIT, "in_channels": 1, "pred_dim": 8, "pred_depth": 1,
         "optimizer": "adamw", "lr_scaling": "none", "weight_decay": 0.04}
# 2 targets of 2x2 patches on a 4x4 grid; a context block of 3x3
GRID4 = {"grid": 4, "num_targets": 2, "target_scale": (0.25, 0.25), "target_aspect": (1.0, 1.0),
         "context_scale": (0.6, 0.6), "min_keep": 1}


def hand_size(grid: int, u: float, scale, aspect) -> tuple[int, int]:
    keep = int(grid * grid * (scale[0] + u * (scale[1] - scale[0])))
    ratio = aspect[0] + u * (aspect[1] - aspect[0])
    return min(round(math.sqrt(keep * ratio)), grid - 1), min(round(math.sqrt(keep / ratio)), grid - 1)


@pytest.mark.parametrize("u", [0.0, 0.3, 0.77, 1.0])
def test_block_sizes_follow_the_formula_with_one_draw_for_scale_and_aspect(u):
    masks = MultiBlockMasks(14)
    assert masks.block_size(u, (0.15, 0.2), (0.75, 1.5)) == hand_size(14, u, (0.15, 0.2), (0.75, 1.5))
    assert masks.block_size(u, (0.85, 1.0), (1.0, 1.0)) == (13, 13)  # 0.85 of 196 -> 13x13; the whole grid capped
    assert masks.block_size(0.0, (0.15, 0.2), (0.75, 1.5)) == (5, 6)  # int(29.4) = 29: sqrt(21.75), sqrt(38.7)
    assert masks.block_size(1.0, (0.15, 0.2), (0.75, 1.5)) == (8, 5)  # 39: sqrt(58.5), sqrt(26)


def rectangle(indices: torch.Tensor, grid: int) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a block given as row-major indices; asserts it is a full rectangle."""
    rows, cols = indices // grid, indices % grid
    top, left = int(rows.min()), int(cols.min())
    h, w = int(rows.max()) - top + 1, int(cols.max()) - left + 1
    assert len(indices) == h * w and len(set(indices.tolist())) == h * w
    return top, left, h, w


def test_sizes_are_shared_by_the_batch_and_positions_drawn_per_image():
    masks = MultiBlockMasks(14)
    out = masks.batch(16, torch.Generator().manual_seed(0))
    targets = out["targets"]
    assert targets.shape[:2] == (4, 16)
    boxes = [rectangle(targets[m, b], 14) for m in range(4) for b in range(16)]
    assert len({box[2:] for box in boxes}) == 1  # one (h, w) for every target block of the batch
    assert len({box[:2] for box in boxes}) > 20  # positions differ
    assert all(0 <= top < 14 - h and 0 <= left < 14 - w for top, left, h, w in boxes)  # top in [0, grid - h)


def test_context_leaves_out_every_target_of_its_image_and_keeps_more_than_min_keep():
    masks = MultiBlockMasks(7, target_scale=(0.1, 0.15), min_keep=3)
    for seed in range(5):
        out = masks.batch(32, torch.Generator().manual_seed(seed))
        assert out["context"].shape[1] > 3
        for b in range(32):
            assert not set(out["context"][b].tolist()) & set(out["targets"][:, b].flatten().tolist())
    assert masks.relaxed == 0


def test_a_context_that_cannot_avoid_the_target_is_relaxed_after_max_tries():
    # 4x4 grid: target and context are both the 3x3 block at (0, 0) (top in [0, 1)), so the context never keeps
    # more than min_keep outside the target: 20 draws, then it stops avoiding it
    masks = MultiBlockMasks(4, num_targets=1, target_scale=(0.6, 0.6), target_aspect=(1.0, 1.0),
                            context_scale=(0.6, 0.6), min_keep=3)
    draws = []
    place = masks.place
    masks.place = lambda size, g: draws.append(size) or place(size, g)
    out = masks.batch(2, torch.Generator().manual_seed(0))
    assert masks.relaxed == 2 and len(draws) == 2 * (1 + 20 + 1)
    assert torch.equal(out["context"], out["targets"][0])  # the whole 3x3 block: 9 patches


def test_context_lists_are_cut_to_the_batch_minimum_keeping_the_lowest_indices():
    masks = MultiBlockMasks(**GRID4)
    kept = []
    context = masks.context
    masks.context = lambda *args: kept.append(context(*args)) or kept[-1]
    out = masks.batch(32, torch.Generator().manual_seed(1))
    shortest = min(len(k) for k in kept)
    assert len({len(k) for k in kept}) > 1 and out["context"].shape == (32, shortest)
    for row, full in zip(out["context"], kept):
        assert torch.equal(row, full[:shortest]) and torch.equal(full, full.sort().values)


def test_masks_are_determined_by_the_generator():
    masks = MultiBlockMasks(**GRID4)
    a, b = (masks.batch(8, torch.Generator().manual_seed(3)) for _ in range(2))
    c = masks.batch(8, torch.Generator().manual_seed(4))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(a[k].shape == c[k].shape and torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("kwargs, message", [
    ({"grid": 7, "num_targets": 4, "target_scale": (0.15, 0.2), "min_keep": 3},
     "4 target blocks of up to 12 patches leave 1 of the 49 patches"),
    ({"grid": 7, "target_scale": (0.1, 0.15), "min_keep": 10}, "target blocks of 4 patches .* not above min_keep 10"),
    ({"grid": 14, "context_scale": (0.02, 0.05)}, "a context block of 4 patches .* not above min_keep 10"),
])
def test_blocks_that_cannot_fit_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MultiBlockMasks(**kwargs)


def test_views_crop_without_flip_and_refuse_a_patch_that_does_not_divide_the_image():
    views = MultiBlockViews(16, 4, **{k: v for k, v in GRID4.items() if k != "grid"}, mean=None, std=None)
    out = views.batch(torch.randint(0, 256, (3, 1, 20, 20), dtype=torch.uint8))
    assert out["images"].shape == (3, 1, 16, 16) and out["targets"].shape[:2] == (2, 3)
    assert views.flip_p == 0.0 and views.scale == (0.3, 1.0) and views.kind == "blocks"
    with pytest.raises(ConfigError, match="patch size 5 does not divide the image size 28"):
        MultiBlockViews(28, 5)


def test_a_vit_without_class_token_runs_the_patches_alone():
    vit = build_backbone("vit", **{**VIT, "in_channels": 1}).eval()
    x = torch.randn(2, 1, 16, 16)
    keep = torch.tensor([[0, 5, 9], [15, 1, 2]])
    embedded = vit.conv_proj(x).flatten(2).transpose(1, 2) + vit.encoder.pos_embedding[:, 1:]
    expected = vit.encoder.ln(vit.encoder.layers(embedded.gather(1, keep.unsqueeze(-1).expand(-1, -1, 8))))
    assert vit.num_prefix == 0 and not hasattr(vit, "class_token")
    assert torch.allclose(vit.tokens(x, keep=keep), expected, atol=1e-6)
    assert torch.allclose(vit(x), vit.tokens(x).mean(1), atol=1e-6)
    with pytest.raises(ConfigError, match="pool cls needs the class token"):
        build_backbone("vit", **VIT, pool="cls")


def batch_of(b: int = 3, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"images": torch.randn(b, 1, 16, 16, generator=g), "label": torch.zeros(b).long(),
            **MultiBlockMasks(**GRID4).batch(b, g)}


def test_targets_come_from_the_whole_image_through_a_layer_norm_without_affine():
    model = IJEPA(**SMALL)
    with torch.no_grad():
        model.momentum_backbone.encoder.ln.weight.mul_(3.0).add_(0.5)  # the target encoder's own LN, then ours
    batch = batch_of()
    tokens = model.momentum_backbone.tokens(batch["images"])
    normed = (tokens - tokens.mean(-1, keepdim=True)) / torch.sqrt(tokens.var(-1, unbiased=False, keepdim=True) + 1e-5)
    expected = torch.stack([torch.stack([normed[b, batch["targets"][m, b]] for b in range(3)]) for m in range(2)])
    assert torch.allclose(model.targets(batch["images"], batch["targets"]), expected, atol=1e-5)


def test_the_loss_is_the_smooth_l1_of_the_predictions_against_the_targets():
    model = IJEPA(**SMALL)
    batch = batch_of()
    out = model.ssl_step(batch)
    tokens = model.backbone.tokens(batch["images"], keep=batch["context"])
    pred = model.predictor(tokens, batch["context"], batch["targets"])
    d = (pred - model.targets(batch["images"], batch["targets"])).abs()
    hand = torch.where(d < 1, 0.5 * d**2, d - 0.5).mean()
    assert torch.allclose(out.loss, hand) and torch.allclose(out.features, tokens.mean(1))
    out.loss.backward()
    assert all(p.grad is None for p in model.momentum_backbone.parameters())
    assert model.backbone.conv_proj.weight.grad is not None


def test_each_target_block_is_predicted_in_its_own_sequence():
    torch.manual_seed(0)
    predictor = BlockPredictor(8, 8, 2, 2, 4).eval()
    tokens, context = torch.randn(2, 5, 8), torch.tensor([[0, 1, 2, 4, 8], [3, 5, 6, 7, 9]])
    targets = torch.tensor([[[10, 11], [12, 13]], [[14, 15], [10, 14]]])
    out = predictor(tokens, context, targets)
    changed = predictor(tokens, context, torch.stack([targets[0], targets[1].flip(-1)]))
    assert out.shape == (2, 2, 2, 8) and torch.allclose(out[0], changed[0], atol=1e-6)
    alone = predictor(tokens, context, targets[1:])
    assert torch.allclose(out[1], alone[0], atol=1e-6)


def with_trainer(model: IJEPA, step: int, total: int = 100) -> IJEPA:
    model._trainer = SimpleNamespace(global_step=step, estimated_stepping_batches=total, world_size=1,
                                     accumulate_grad_batches=1, max_epochs=1)
    return model


@pytest.mark.parametrize("step, expected", [(0, 0.996), (25, 0.997), (50, 0.998), (100, 1.0), (150, 1.0)])
def test_the_target_encoder_momentum_rises_linearly(step, expected):
    assert with_trainer(IJEPA(**SMALL), step).current_momentum() == pytest.approx(expected)


@pytest.mark.parametrize("make", [lambda: IJEPA(**SMALL), lambda: tiny_dino(weight_decay=0.04)], ids=["ijepa", "dino"])
def test_weight_decay_follows_its_cosine_per_step_on_the_decayed_groups_only(make):
    model = with_trainer(make(), 0)  # both default to weight_decay_end 0.4, SSLMethod's one schedule
    opt = model.configure_optimizers()["optimizer"]
    model._trainer.optimizers = [opt]
    logged = {}
    model.log = lambda name, value, **kwargs: logged.update({name: float(value)})
    for step in (0, 50, 100):
        model._trainer.global_step = step
        model.on_train_batch_start({}, 0)
        want = 0.4 + (0.04 - 0.4) * (1 + math.cos(math.pi * step / 100)) / 2  # 0.04, 0.22, 0.4
        assert sorted({g["weight_decay"] for g in opt.param_groups}) == [0.0, pytest.approx(want)], step
        assert logged["schedule/weight_decay"] == pytest.approx(want)


def test_the_old_name_of_weight_decay_end_is_refused_in_one_line_naming_the_new(tmp_path):
    proc = selfsup("fit", "--model", "IJEPA", "--model.final_weight_decay", "0.4", "--print_config", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "selfsup: error: model option final_weight_decay is now called weight_decay_end; rename it in the config "
        "(or on the command line)"]


@pytest.mark.parametrize("evaluate_target, module", [(True, "momentum_backbone"), (False, "backbone")])
def test_evaluations_read_the_target_encoder_from_a_checkpoint(evaluate_target, module):
    model = IJEPA(**SMALL, evaluate_target=evaluate_target)
    with torch.no_grad():
        model.momentum_backbone.conv_proj.weight.add_(1.0)
    ckpt = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(ckpt)
    state = backbone_state(ckpt)
    assert state.keys() == model.backbone.state_dict().keys()
    assert all(torch.equal(v, getattr(model, module).state_dict()[k]) for k, v in state.items())
    assert torch.equal(backbone_state({**ckpt, "evaluated_backbone": "probe"})["conv_proj.weight"],
                       model.backbone.conv_proj.weight)  # anything else: the backbone


def test_ijepa_refuses_a_backbone_without_kept_tokens():
    with pytest.raises(ConfigError, match="I-JEPA runs its encoder over kept patches"):
        IJEPA(backbone="resnet18", backbone_args={"width": 4})


def test_recipe_with_blocks_that_do_not_fit_exits_2_in_one_line(tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/ijepa/mnist5k-vit-tiny.yaml"),
                   "--data.init_args.views.init_args.num_targets", "5", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("selfsup: error: 5 target blocks of up to 40 patches")


def test_paper_recipe_parses_with_the_paper_values(tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/ijepa/imagenet-vit-huge.yaml"), "--print_config",
                   cwd=tmp_path)
    for line in ["backbone: vit", "patch_size: 14", "hidden_dim: 1280", "num_layers: 32", "pred_dim: 384",
                 "pred_depth: 12", "max_epochs: 300", "base_momentum: 0.996", "weight_decay_end: 0.4",
                 "num_targets: 4", "class_token: false"]:
        assert line in proc.stdout, line


@pytest.mark.slow
def test_the_mnist_recipe_trains_and_its_checkpoint_gives_the_target_encoder(mnist5k, tmp_path):
    selfsup("fit", "-c", str(REPO / "experiments/ijepa/mnist5k-vit-tiny.yaml"), "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "3", "--data.init_args.batch_size", "32", "--data.init_args.num_workers",
            "0", "--trainer.callbacks=[]", cwd=tmp_path)
    ckpt = torch.load(next(tmp_path.glob("runs/ijepa-mnist5k-vit-tiny/version_*/checkpoints/last.ckpt")),
                      weights_only=False)
    assert ckpt["evaluated_backbone"] == "momentum_backbone"
    assert backbone_state(ckpt).keys() == {k.removeprefix("backbone.") for k in ckpt["state_dict"]
                                           if k.startswith("backbone.")}
