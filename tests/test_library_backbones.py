"""timm and torchvision models as backbones: shapes at the data's channels and size, export under the library's
own names (loaded back into timm / torchvision with equal outputs), masking, refusals."""

from __future__ import annotations

import json

import pytest
import timm
import torch
import torchvision
from torch import nn

import selfsup
from selfsup.backbones import MaskedImageBackbone, build_backbone, to_channels_last
from selfsup.errors import ConfigError
from selfsup.eval.export import describe, export_backbone

# (backbone name, image side other than the model's default 224)
SPREAD = [
    ("timm:resnet18", 40), ("timm:convnext_atto", 40), ("timm:efficientnet_b0", 40), ("timm:regnety_002", 40),
    pytest.param("timm:vit_small_patch16_224", 48, marks=pytest.mark.slow),
    ("timm:vit_small_patch14_reg4_dinov2", 42),
    pytest.param("timm:swin_tiny_patch4_window7_224", 64, marks=pytest.mark.slow),
    pytest.param("torchvision:convnext_tiny", 40, marks=pytest.mark.slow),
    ("torchvision:efficientnet_b0", 40), ("torchvision:mobilenet_v3_small", 40),
    pytest.param("torchvision:vit_b_16,image_size=32", 32, marks=pytest.mark.slow),
]


def library_model(name: str, channels: int) -> nn.Module:
    """The library's own model for ``name``, built here as a user would (random weights, no classifier)."""
    library, _, rest = name.partition(":")
    model, *pairs = rest.split(",")
    args = {k: int(v) for k, v in (p.split("=") for p in pairs)}
    if library == "timm":
        dynamic = {"dynamic_img_size": True} if "vit" in model or "swin" in model else {}
        return timm.create_model(model, num_classes=0, in_chans=channels, **dynamic, **args)
    built = torchvision.models.get_model(model, weights=None, **args)
    if channels != 3:
        if model.startswith("vit"):
            built.conv_proj = nn.Conv2d(channels, 768, 16, stride=16)
        else:
            old = built.features[0][0]
            built.features[0][0] = nn.Conv2d(channels, old.out_channels, old.kernel_size, old.stride, old.padding,
                                             bias=old.bias is not None)
    return built


def reference_map(name: str, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last feature map before pooling, read off the library model the way each family defines it."""
    if name.startswith("torchvision:vit"):
        seen = {}
        model.encoder.register_forward_hook(lambda m, i, out: seen.update(tokens=out))
        model(x)
        side = x.shape[-1] // 16
        return seen["tokens"][:, 1:].transpose(1, 2).reshape(len(x), -1, side, side)
    if name.startswith("torchvision:"):
        return model.features(x)
    features = model.forward_features(x)
    if "swin" in name:
        return features.permute(0, 3, 1, 2)
    if features.dim() == 3:  # a ViT: class (and register) tokens first
        patch = model.patch_embed.patch_size[0]
        tokens = features[:, model.num_prefix_tokens:]
        return tokens.transpose(1, 2).reshape(len(x), -1, x.shape[-2] // patch, x.shape[-1] // patch)
    return features


def saved_checkpoint(path, name: str, backbone: nn.Module, channels: int) -> None:
    """A checkpoint as `selfsup fit` writes it: the backbone's state under ``backbone.``, its spec as hparams."""
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in backbone.state_dict().items()},
                "hyper_parameters": {"backbone": name, "backbone_args": {}, "in_channels": channels},
                "eval_transform": {"media": "image", "channels": channels, "size": 32, "resize": 32, "mean": None,
                                   "std": None}}, path)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize(("name", "size"), SPREAD)
def test_library_backbones_export_under_their_library_names(name, size, channels, tmp_path):
    backbone = build_backbone(name, in_channels=channels).eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        dense, pooled = backbone.forward_features(x), backbone(x)
    assert pooled.shape == (2, backbone.num_features)
    assert dense.shape[:2] == (2, backbone.num_features)
    if "vit" in name:  # the patch grid at this size, prefix tokens dropped
        patch = 14 if "patch14" in name else 16
        assert dense.shape[2:] == (size // patch, size // patch)
    assert torch.allclose(pooled, dense.mean(dim=(2, 3)), atol=1e-5)

    saved_checkpoint(tmp_path / "m.ckpt", name, backbone, channels)
    report = export_backbone(tmp_path / "m.ckpt", tmp_path / "backbone.pt")
    state = torch.load(tmp_path / "backbone.pt", weights_only=True)
    assert not any(k.startswith("model.") or k == "mask_token" for k in state)
    theirs = library_model(name, channels)
    if name.startswith("timm:"):
        theirs.load_state_dict(state, strict=True)
    else:  # torchvision's models keep their classifier: everything else loads
        missing, unexpected = theirs.load_state_dict(state, strict=False)
        assert not unexpected and missing and all(k.startswith(("classifier.", "heads.", "fc.")) for k in missing)
    with torch.no_grad():
        assert (reference_map(name, theirs.eval(), x) - dense).abs().max() <= 1e-5
        reloaded, _ = selfsup.load_backbone(tmp_path / "backbone.pt")
        assert torch.equal(reloaded(x), pooled)

    info = json.loads((tmp_path / "backbone.json").read_text())
    assert (info["library"], f"{info['library']}:{info['model']}") == (name.partition(":")[0], name.split(",")[0])
    if name.startswith("timm:"):
        assert info["arguments"]["in_chans"] == channels and info["arguments"]["num_classes"] == 0
    message = describe(report, tmp_path / "backbone.pt")
    assert f"import torch, {info['library']}" in message and "load_state_dict(torch.load(" in message


def test_the_printed_lines_load_the_export_in_timm(tmp_path):
    backbone = build_backbone("timm:vit_small_patch14_reg4_dinov2,depth=2", in_channels=1)
    saved_checkpoint(tmp_path / "m.ckpt", "timm:vit_small_patch14_reg4_dinov2,depth=2", backbone, 1)
    message = describe(export_backbone(tmp_path / "m.ckpt", tmp_path / "b.pt"), tmp_path / "b.pt")
    code = "\n".join(line.strip() for line in message.splitlines() if line.startswith("    "))
    scope: dict = {}
    exec(code, scope)  # the lines a user copies
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        tokens = scope["model"].eval().forward_features(x)[:, 5:]  # 1 class + 4 register tokens
        assert torch.allclose(tokens.mean(dim=1), backbone.eval()(x), atol=1e-6)


def test_timm_vits_and_swins_mask_through_the_patch_embedding_hook():
    vit = build_backbone("timm:vit_small_patch16_224,depth=2", in_channels=1).eval()
    assert isinstance(vit, MaskedImageBackbone) and (vit.patch_size, vit.stride, vit.num_blocks) == (16, 16, 2)
    x, mask = torch.rand(2, 1, 32, 32), torch.zeros(2, 2, 2)
    with torch.no_grad():
        assert torch.equal(vit(x, mask=mask, dense=True), vit.forward_features(x))  # nothing masked: unchanged
        mask[0, 0, 0] = 1
        masked = vit(x, mask=mask, dense=True)
        assert not torch.allclose(masked[0], vit.forward_features(x)[0])
        assert torch.equal(masked[1], vit(x, dense=True)[1])
        other = x.clone()
        other[0, :, :16, :16] = 0  # the masked patch's pixels no longer matter
        assert torch.allclose(vit(other, mask=mask, dense=True), masked, atol=1e-5)
    swin = build_backbone("timm:swin_tiny_patch4_window7_224,depths=[1,1],num_heads=[1,2],embed_dim=8", in_channels=1)
    assert isinstance(swin, MaskedImageBackbone) and (swin.patch_size, swin.stride) == (4, 8)
    assert swin.layer_id("model.layers.1.blocks.0.norm1.weight") == 2 and swin.layer_id("model.norm.weight") == 3
    assert swin(torch.rand(2, 1, 32, 32), mask=torch.ones(2, 8, 8), dense=True).shape == (2, 16, 4, 4)
    assert not isinstance(build_backbone("timm:resnet18"), MaskedImageBackbone)


def test_channels_last_and_bf16_run_timm_and_torchvision_backbones():
    for name in ("timm:convnext_atto", "torchvision:mobilenet_v3_small", "timm:vit_small_patch16_224,depth=1"):
        backbone = to_channels_last(build_backbone(name, in_channels=1)).eval()
        x = torch.rand(2, 1, 32, 32)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            out = backbone(x.contiguous(memory_format=torch.channels_last))
        with torch.no_grad():
            full = backbone(x)
        conv = next(m for m in backbone.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)
        assert out.shape == full.shape and not torch.equal(out.float(), full)  # it ran in bfloat16
        assert (out.float() - full).abs().max() <= 0.1 * full.abs().max() + 0.05


@pytest.mark.parametrize(("name", "args", "match"), [
    ("timm:convnext_tny", {}, r"timm has no model 'convnext_tny'; nearest: timm:convnext_tiny"),
    ("torchvision:efficientnet_b9", {}, r"torchvision has no model 'efficientnet_b9'; nearest: torchvision:efficient"),
    ("timm:resnet18,pretrained=true", {}, "pretrained=true is refused: selfsup downloads no weights"),
    ("torchvision:resnet18", {"weights": "DEFAULT"}, "argument weights is refused"),
    ("timm:resnet18", {"checkpoint_path": "x.pth"}, "argument checkpoint_path is refused"),
    ("timm:resnet18", {"colour": "blue"}, "backbone 'timm:resnet18': .*unexpected keyword argument 'colour'"),
    ("timm:resnet18,depth", {}, "'depth' is not key=value"),
    ("torchvision:vit_b_16,image_size=30", {}, "torchvision:vit_b_16 refuses"),
    ("torchvision:googlenet", {}, "torchvision:googlenet has no feature map selfsup can pool"),
    ("resnet19", {}, r"unknown backbone 'resnet19' \(nearest: resnet18"),
])
def test_bad_library_names_and_arguments_are_one_line(name, args, match):
    with pytest.raises(ConfigError, match=match) as caught:
        build_backbone(name, in_channels=3, **args)
    assert "\n" not in str(caught.value)


def test_image_sizes_a_model_cannot_take_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="cuts images into 16x16 patches, so it cannot take 28x28"):
        build_backbone("timm:vit_small_patch16_224,depth=1", in_channels=1)(torch.rand(1, 1, 28, 28))
    with pytest.raises(ConfigError, match="timm:convnext_atto shrinks 28x28 px images below its kernels"):
        build_backbone("timm:convnext_atto,depths=[1,1,1,1]", in_channels=1)(torch.rand(1, 1, 28, 28))
    with pytest.raises(ConfigError, match="takes 32x32 px images, got 28x28; name it .*image_size=28"):
        build_backbone("torchvision:vit_b_16,image_size=32")(torch.rand(1, 3, 28, 28))
