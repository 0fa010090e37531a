"""SimMIM: the mask generator, the masked L1 loss by hand, the mask token inside ViT and Swin, the decoder, the
no-decay rule, layer ids for layer-wise decay, and the method through the CLI."""

from __future__ import annotations

import csv

import pytest
import torch

from clirun import REPO, selfsup
from selfsup.backbones import build_backbone
from selfsup.data.masking import MaskedViews, MaskGenerator
from selfsup.errors import ConfigError
from selfsup.heads import PixelShuffleDecoder
from selfsup.losses import masked_l1_loss
from selfsup.methods import SimMIM
from selfsup.optim import is_no_decay, scaled_lr


def _check_aligned(mask: torch.Tensor, scale: int) -> None:
    """Every scale x scale block of the mask (one mask patch) is all 0 or all 1."""
    blocks = mask.unfold(0, scale, scale).unfold(1, scale, scale)  # (cells, cells, scale, scale)
    assert ((blocks == blocks[..., :1, :1]).all())


@pytest.mark.parametrize("size, mask_patch, model_patch, side, masked, cells", [
    (224, 32, 16, 14, 30, 49),  # ViT-B
    (192, 32, 4, 48, 22, 36),   # Swin-B
])
def test_mask_geometry_of_the_paper_configs(size, mask_patch, model_patch, side, masked, cells):
    gen = MaskGenerator(size, mask_patch, model_patch, 0.6)
    masks = gen.batch(16, torch.Generator().manual_seed(0))
    scale = mask_patch // model_patch
    assert masks.shape == (16, side, side) and gen.shape == (side, side)
    for mask in masks:
        _check_aligned(mask, scale)
        cell_grid = mask[::scale, ::scale]
        assert cell_grid.numel() == cells and int(cell_grid.sum()) == masked
        assert int(mask.sum()) == masked * scale * scale
    assert not all(torch.equal(masks[0], m) for m in masks[1:])  # random per sample
    assert gen().shape == (side, side)


def test_every_cell_is_masked_about_equally_often():
    gen = MaskGenerator(224, 32, 16, 0.6)
    freq = gen.cell_masks(4000, torch.Generator().manual_seed(1)).float().mean(0)
    assert torch.allclose(freq, torch.full_like(freq, 30 / 49), atol=0.04)


@pytest.mark.parametrize("args, message", [
    ((224, 24, 16), "not a multiple of the model's patch size 16"),
    ((200, 32, 16), "does not divide the image size 200"),
])
def test_mask_generator_refuses_bad_geometry(args, message):
    with pytest.raises(ConfigError, match=message):
        MaskGenerator(*args, mask_ratio=0.6)


def test_masked_views_crop_normalise_and_mask():
    images = (torch.rand(5, 1, 28, 28) * 255).to(torch.uint8)
    out = MaskedViews(28, 4, 4, 0.6, scale=(1, 1), ratio=(1, 1), flip_p=0, mean=[0.5], std=[0.25]).batch(images)
    assert out["images"].shape == (5, 1, 28, 28) and out["mask"].shape == (5, 7, 7)
    assert torch.allclose(out["images"], (images.float() / 255 - 0.5) / 0.25, atol=1e-4)
    assert (out["mask"].flatten(1).sum(1) == 30).all()
    one = MaskedViews(28, 4, 4)(images[0])  # ImageNet statistics by default (averaged for one channel)
    assert one["images"].shape == (1, 28, 28) and one["mask"].shape == (7, 7)


def _hand_loss(x, rec, mask, p):
    total, count = 0.0, 0.0
    b, c, h, w = x.shape
    for i in range(b):
        for y in range(h):
            for z in range(w):
                if mask[i, y // p, z // p]:
                    count += 1
                    for ch in range(c):
                        total += abs(float(x[i, ch, y, z]) - float(rec[i, ch, y, z]))
    return total / (count + 1e-5) / c


def test_loss_is_l1_over_masked_pixels_per_channel_by_hand():
    torch.manual_seed(0)
    x, rec = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    mask = torch.randint(0, 2, (2, 4, 4))
    assert torch.allclose(masked_l1_loss(x, rec, mask, 2), torch.tensor(_hand_loss(x, rec, mask, 2)), atol=1e-5)
    # a tiny case in numbers: 1 channel, 2x2 pixels, patch 1, only the top-left pixel masked, error 3
    x1, r1 = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]]), torch.tensor([[[[4.0, 0.0], [0.0, 0.0]]]])
    assert torch.allclose(masked_l1_loss(x1, r1, torch.tensor([[[1, 0], [0, 0]]]), 1), torch.tensor(3 / (1 + 1e-5)))


def test_unmasked_pixels_do_not_change_the_loss_or_get_gradients():
    torch.manual_seed(0)
    x, mask = torch.randn(3, 1, 12, 12), torch.randint(0, 2, (3, 3, 3))
    rec = torch.randn(3, 1, 12, 12, requires_grad=True)
    pixels = mask.repeat_interleave(4, 1).repeat_interleave(4, 2).unsqueeze(1).bool()
    changed = torch.where(pixels, rec, rec + 100 * torch.randn_like(rec))
    assert torch.allclose(masked_l1_loss(x, rec, mask, 4), masked_l1_loss(x, changed, mask, 4))
    masked_l1_loss(x, rec, mask, 4).backward()
    assert (rec.grad[~pixels] == 0).all() and (rec.grad[pixels] != 0).all()


def test_vit_mask_token_replaces_masked_patch_embeddings_before_cls_and_positions():
    torch.manual_seed(0)
    vit = build_backbone("vit_tiny", in_channels=1).eval()
    x = torch.randn(2, 1, 28, 28)
    mask = torch.zeros(2, 7, 7, dtype=torch.uint8)
    mask[0, 1, 2] = mask[1, 4:, :3] = 1
    seen = {}
    vit.encoder.layers.register_forward_pre_hook(lambda _, inputs: seen.update(tokens=inputs[0].clone()))
    vit.forward_features(x, mask)
    tokens = seen["tokens"] - vit.encoder.pos_embedding  # what enters the blocks, less the position table
    embedded = vit.conv_proj(x).flatten(2).transpose(1, 2)
    flat = mask.flatten(1).bool()
    assert torch.allclose(tokens[:, 0], vit.class_token.expand(2, -1, -1)[:, 0])  # cls token untouched
    patches = tokens[:, 1:]
    assert torch.allclose(patches[flat], vit.mask_token[0, 0].expand(int(flat.sum()), -1))
    assert torch.allclose(patches[~flat], embedded[~flat])
    # a masked patch's pixels no longer matter; an unmasked patch's do
    x2 = x.clone()
    x2[0, :, 4:8, 8:12] += 10  # patch (1, 2) of image 0: masked
    assert torch.allclose(vit.forward_features(x2, mask), vit.forward_features(x, mask), atol=1e-5)
    x2[0, :, 0:4, 0:4] += 10  # patch (0, 0): visible
    assert not torch.allclose(vit.forward_features(x2, mask), vit.forward_features(x, mask), atol=1e-3)


def test_swin_mask_token_replaces_masked_patch_embeddings():
    torch.manual_seed(0)
    swin = build_backbone("swin_tiny", in_channels=1).eval()
    x = torch.randn(2, 1, 32, 32)
    mask = MaskGenerator(32, 8, 2, 0.6).batch(2)
    seen = {}
    swin.features[1].register_forward_pre_hook(lambda _, inputs: seen.update(tokens=inputs[0].clone()))
    out = swin.forward_features(x, mask)
    assert out.shape == (2, 128, 4, 4) and swin.stride == 8
    embedded, m = swin.features[0](x), mask.bool()
    assert torch.allclose(seen["tokens"][m], swin.mask_token[0, 0].expand(int(m.sum()), -1))
    assert torch.allclose(seen["tokens"][~m], embedded[~m])


@pytest.mark.parametrize("name, size, grid", [("vit_tiny", 28, 7), ("swin_tiny", 32, 4)])
def test_decoder_turns_the_map_into_pixels(name, size, grid):
    net = build_backbone(name, in_channels=1)
    decoder = PixelShuffleDecoder(net.num_features, net.stride, 1)
    z = net(torch.randn(2, 1, size, size), dense=True)
    assert z.shape == (2, net.num_features, grid, grid)
    assert decoder(z).shape == (2, 1, size, size) and decoder[0].out_channels == net.stride**2


def test_pixel_shuffle_puts_channel_block_into_its_cell():
    decoder = PixelShuffleDecoder(1, 2, 3)
    z = torch.zeros(1, 12, 1, 1)
    z[0, 5] = 1.0  # channel 5 = colour 1, sub-position (0, 1)
    out = torch.nn.PixelShuffle(2)(z)
    assert out[0, 1, 0, 1] == 1 and out.sum() == 1 and decoder(torch.zeros(1, 1, 1, 1)).shape == (1, 3, 2, 2)


def test_no_decay_covers_norms_biases_tokens_and_position_tables():
    model = SimMIM(backbone="vit_tiny", in_channels=1, optimizer="adamw")
    no_decay = {n for n, p in model.named_parameters() if is_no_decay(n, p)}
    for name in ("backbone.mask_token", "backbone.class_token", "backbone.encoder.pos_embedding",
                 "backbone.conv_proj.bias", "backbone.encoder.ln.weight", "decoder.0.bias"):
        assert name in no_decay, name
    assert "backbone.conv_proj.weight" not in no_decay and "decoder.0.weight" not in no_decay
    swin = build_backbone("swin_tiny")
    tables = [n for n, p in swin.named_parameters() if n.endswith("relative_position_bias_table")]
    assert tables and all(is_no_decay(n, p) for n, p in swin.named_parameters() if n in tables)
    assert scaled_lr(1e-4, 2048, "linear512") == pytest.approx(4e-4)


def test_layer_ids_follow_the_block_structure():
    vit = build_backbone("vit_tiny")
    ids = {n: vit.layer_id(n) for n, _ in vit.named_parameters()}
    assert ids["mask_token"] == ids["conv_proj.weight"] == ids["encoder.pos_embedding"] == 0
    assert ids["encoder.layers.encoder_layer_0.ln_1.weight"] == 1
    assert ids["encoder.layers.encoder_layer_3.mlp.0.weight"] == 4 and ids["encoder.ln.weight"] == 5
    swin = build_backbone("swin_b", window=6)  # depths 2-2-18-2: blocks 1..24, merges after blocks 2, 4, 22
    ids = {n: swin.layer_id(n) for n, _ in swin.named_parameters()}
    assert ids["features.0.0.weight"] == ids["mask_token"] == 0
    assert ids["features.1.0.norm1.weight"] == 1 and ids["features.3.1.norm1.weight"] == 4
    assert ids["features.2.reduction.weight"] == 2 and ids["features.6.reduction.weight"] == 22
    assert ids["features.7.1.mlp.0.weight"] == 24 and ids["norm.weight"] == 25


def test_step_loss_is_the_masked_l1_of_the_decoded_map():
    torch.manual_seed(0)
    model = SimMIM(backbone="vit_tiny", in_channels=1, num_classes=10)
    images, mask = torch.randn(4, 1, 28, 28), MaskGenerator(28, 4, 4).batch(4)
    out = model.ssl_step({"images": images, "mask": mask, "label": torch.zeros(4, dtype=torch.long)})
    z = model.backbone.forward_features(images, mask)
    assert torch.allclose(out.loss, masked_l1_loss(images, model.decoder(z), mask, 4), atol=1e-6)
    assert torch.allclose(out.features, z.mean(dim=(2, 3)), atol=1e-6)


def test_simmim_refuses_a_backbone_without_a_mask_token():
    with pytest.raises(ConfigError, match="SimMIM masks patch embeddings.*timm:vit_small"):
        SimMIM(backbone="resnet18", backbone_args={"width": 4})


@pytest.mark.slow
def test_fit_of_the_mnist_recipe_lowers_the_loss_and_writes_the_picture(mnist5k, tmp_path):
    selfsup("fit", "-c", str(REPO / "experiments/simmim/mnist5k-vit-tiny.yaml"), "--trainer.max_epochs", "2",
            "--trainer.limit_train_batches", "12", "--trainer.log_every_n_steps", "1",
            "--data.init_args.num_workers", "0", "--trainer.enable_progress_bar", "false",
            "--trainer.callbacks+=selfsup.eval.ReconstructionGrid", "--trainer.callbacks.every_n_epochs", "1",
            cwd=tmp_path)
    run = next((tmp_path / "runs/simmim-mnist5k-vit-tiny").glob("version_*"))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    losses = [float(r["train/loss_step"]) for r in rows if r.get("train/loss_step")]
    assert len(losses) == 24 and sum(losses[-4:]) < sum(losses[:4])
    assert (run / "reconstruction-epoch1.png").stat().st_size > 1000
    assert (run / "reconstruction-epoch2.png").is_file()
    picture = tmp_path / "recon.png"
    selfsup("reconstruct", "--ckpt", str(run / "checkpoints/last.ckpt"), "-c",
            str(REPO / "experiments/simmim/mnist5k-vit-tiny.yaml"), "--out", str(picture), "--num-images", "4",
            cwd=tmp_path)
    assert picture.stat().st_size > 1000
    proc = selfsup("knn", "--ckpt", str(run / "checkpoints/last.ckpt"), "-c",
                   str(REPO / "experiments/simmim/mnist5k-vit-tiny.yaml"), "--k", "20", cwd=tmp_path)
    assert "vit_tiny" in proc.stdout


@pytest.mark.parametrize("recipe, lines", [
    ("imagenet-swin-base.yaml", ["backbone: swin_b", "window: 6", "size: 192", "model_patch_size: 4",
                                 "lr: 0.0002", "max_epochs: 100", "gradient_clip_val: 5.0"]),
    ("imagenet-vit-base.yaml", ["backbone: vit_b_16", "size: 224", "model_patch_size: 16", "max_epochs: 800"]),
])
def test_imagenet_recipes_parse_with_the_paper_values(recipe, lines, tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/simmim" / recipe), "--print_config", cwd=tmp_path)
    for line in [*lines, "mask_patch_size: 32", "mask_ratio: 0.6", "lr_scaling: linear512", "weight_decay: 0.05",
                 "optimizer: adamw"]:
        assert line in proc.stdout, line


def test_vit_b_16_and_swin_b_are_torchvisions_models_plus_a_mask_token():
    import torchvision

    x = torch.randn(1, 3, 224, 224)
    for ours, theirs in ((build_backbone("vit_b_16"), torchvision.models.vit_b_16()),
                         (build_backbone("swin_b"), torchvision.models.swin_b())):
        state = {k: v for k, v in theirs.state_dict().items() if not k.startswith(("head", "heads"))}
        assert ours.load_state_dict(state, strict=False).missing_keys == ["mask_token"]
        ours.eval(), theirs.eval()
        with torch.no_grad():
            if hasattr(theirs, "encoder"):  # ViT: the encoder's patch tokens (torchvision classifies the cls token)
                tokens = theirs._process_input(x)
                tokens = theirs.encoder(torch.cat([theirs.class_token.expand(1, -1, -1), tokens], dim=1))
                expected = tokens[:, 1:].transpose(1, 2).reshape(1, 768, 14, 14)
                assert torch.allclose(ours.forward_features(x), expected, atol=1e-4)
            else:
                theirs.head = torch.nn.Identity()
                assert torch.allclose(ours(x), theirs(x), atol=1e-4)
