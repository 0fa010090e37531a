"""CVRL's video path: decoding, moving-MNIST, interval sampling, consistent clip augmentation, 3-D backbones."""

from __future__ import annotations

import itertools
import json
import random

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from clirun import REPO, selfsup
from selfsup.backbones import build_backbone, pooled_features
from selfsup.data.builtin import bouncing_path, moving_digit
from selfsup.data.clips import ClipViews, EvalClips, clip_indices, interval_starts, sample_gap
from selfsup.data.manifest import Manifest
from selfsup.data.members import decode_video
from selfsup.data.shards import encode_video, write_shard_set
from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream
from selfsup.data.views import SimCLRViews
from selfsup.errors import ConfigError
from selfsup.heads import MLP
from selfsup.losses import nt_xent
from selfsup.methods import CVRL
from selfsup.methods.cvrl import random_frame

pytest.importorskip("av")


def test_videos_written_to_shards_come_back_with_their_frames(tmp_path):
    gen = torch.Generator().manual_seed(0)
    videos = [torch.randint(0, 256, (n, 1, 24, 20), dtype=torch.uint8, generator=gen) for n in (5, 9, 12)]
    samples = [{"__key__": f"v{i}", "mp4": encode_video(v), "cls": str(i).encode()} for i, v in enumerate(videos)]
    manifest = Manifest(name="vids", channels=1, classes=["a", "b", "c"], media="video")
    write_shard_set(tmp_path / "vids", manifest, {"train": samples}, maxcount=2, progress=False)
    source = Source(f"shards:{tmp_path / 'vids'}")
    assert source.media == "video"
    stream = ShardStream(source.split("train").parts, EvalClips(24, frames=1, clips=1), 1, 1, repeat=False,
                         num_classes=3, media="video")
    raw = [sample for part in source.split("train").parts for sample in part.samples()]
    for sample, video in zip(raw, videos):
        decoded = decode_video(sample["mp4"], channels=1)
        assert decoded.shape == video.shape and decoded.dtype == torch.uint8
        assert torch.equal(decoded, video)  # crf 0, full-range luma: lossless
    assert decode_video(raw[2]["mp4"], 1, max_frames=4).shape == (4, 1, 24, 20)
    batches = list(stream)
    assert [b["label"].item() for b in batches] == [0, 1, 2]
    assert batches[0]["image"].shape == (1, 1, 1, 1, 24, 24)  # (B, clips, C, T, H, W)


def test_rgb_video_round_trip_is_close():
    video = torch.randint(0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    decoded = decode_video(encode_video(video), channels=3)
    assert decoded.shape == video.shape
    assert (decoded.int() - video.int()).abs().max() <= 3  # 4:4:4 YUV, rounding of the colour conversion


def test_broken_video_bytes_are_a_bad_sample():
    from selfsup.data.members import BadSample

    with pytest.raises(BadSample, match="unreadable video"):
        decode_video(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 64, 1)


def test_gap_follows_the_linear_density_and_not_a_uniform_one():
    m, draws = 20, 20000
    rng = random.Random(0)
    counts = np.bincount([sample_gap(m, rng) for _ in range(draws)], minlength=m)
    k = np.arange(m)
    linear = (2 * m - 2 * k - 1) / m**2  # integral of 2(M - x)/M^2 over [k, k + 1]
    assert linear.sum() == pytest.approx(1)
    assert chisquare(counts, linear * draws).pvalue > 0.01
    assert chisquare(counts, np.full(m, draws / m)).pvalue < 1e-6


def test_interval_starts_fit_the_video_and_are_swapped_half_the_time():
    rng = random.Random(0)
    num_frames, frames, stride = 40, 8, 2
    starts = [interval_starts(num_frames, frames, stride, rng) for _ in range(4000)]
    max_start = num_frames - (frames - 1) * stride
    assert all(0 <= c < max_start for pair in starts for c in pair)
    assert all(max(clip_indices(c, frames, stride, num_frames)) < num_frames for pair in starts for c in pair)
    first_later = np.mean([a > b for a, b in starts])
    assert 0.45 < first_later < 0.55
    gaps = np.array([abs(a - b) for a, b in starts])
    k = np.arange(max_start)
    expected = (k * (2 * max_start - 2 * k - 1)).sum() / max_start**2  # floor of a gap with density 2(M - x)/M^2
    assert gaps.mean() == pytest.approx(expected, rel=0.03)


def test_short_videos_loop_and_draw_independent_starts():
    assert clip_indices(3, 4, 2, 6) == [3, 5, 1, 3]
    rng = random.Random(0)
    starts = [interval_starts(5, 8, 2, rng) for _ in range(2000)]
    assert {c for pair in starts for c in pair} == set(range(5))
    assert np.mean([a == b for a, b in starts]) == pytest.approx(1 / 5, abs=0.03)


def _static_video(batch: int, frames: int, channels: int = 3, size: int = 40) -> torch.Tensor:
    """Videos whose frames are all the same random image: any per-frame difference after augmentation is
    a per-frame difference of the random parameters."""
    image = torch.randint(0, 256, (batch, 1, channels, size, size), dtype=torch.uint8)
    return image.expand(batch, frames, channels, size, size).contiguous()


def test_every_frame_of_a_clip_gets_the_same_augmentation_and_the_clips_differ():
    torch.manual_seed(0)
    views = ClipViews(size=24, frames=6, stride=1, jitter_p=1.0, grayscale_p=0.5, blur_p=(1.0, 0.5),
                      solarize_p=(0.0, 0.5))
    clip1, clip2 = views.batch(_static_video(8, 12))["views"]
    assert clip1.shape == clip2.shape == (8, 3, 6, 24, 24)
    for clip in (clip1, clip2):
        assert torch.equal(clip, clip[:, :, :1].expand_as(clip))  # every frame equals the clip's first
    assert all((clip1[b] - clip2[b]).abs().max() > 0.05 for b in range(8))
    # the same check fails for an augmentation drawn frame by frame (so the test above can fail)
    per_frame = SimCLRViews(24, scale=(0.3, 1.0)).view_batch(_static_video(1, 6)[0])
    assert not torch.equal(per_frame, per_frame[:1].expand_as(per_frame))


def test_clip_views_take_the_frames_of_their_intervals():
    video = torch.arange(30, dtype=torch.uint8).view(1, 30, 1, 1, 1).expand(1, 30, 1, 8, 8).contiguous()
    clips = ClipViews(size=8, frames=4, stride=3).take(video, [5])
    assert clips[0, :, 0, 0, 0].tolist() == [5, 8, 11, 14]


def test_eval_clips_spread_over_the_video_and_are_averaged():
    clips = EvalClips(16, frames=4, stride=2, clips=3)
    assert clips.starts(32) == [0, 12, 25]  # the last clip ends on the last frame (25 + 3 x 2 = 31)
    assert clips.starts(5) == [0, 0, 0]
    assert EvalClips(16, frames=8, stride=2, clips=1).starts(32) == [0]  # the opening clip (direction probe)
    out = clips(torch.randint(0, 256, (32, 1, 32, 32), dtype=torch.uint8))["image"]
    assert out.shape == (3, 1, 4, 16, 16)
    backbone = build_backbone("r3d_tiny", in_channels=1).eval()
    batch = out[None].expand(2, *out.shape)
    expected = backbone(out).mean(0, keepdim=True).expand(2, -1)
    torch.testing.assert_close(pooled_features(backbone, batch), expected)


def test_moving_digit_bounces_inside_the_canvas_and_keeps_the_digit_whole():
    assert bouncing_path((1, 34), (-3, 4), 4, 36) == [(1, 34), (2, 34), (5, 30), (8, 26)]
    digit = torch.randint(1, 256, (1, 28, 28), dtype=torch.uint8)
    video, motion = moving_digit(digit, np.random.default_rng(3))
    again, _ = moving_digit(digit, np.random.default_rng(3))
    assert torch.equal(video, again) and video.shape == (32, 1, 64, 64)
    assert 0 <= motion["direction"] < 8 and 2 <= motion["speed"] <= 4
    assert (video.flatten(1).sum(1) == digit.sum()).all()  # never clipped by an edge
    assert not torch.equal(video[0], video[1])


@pytest.mark.parametrize("name, frames, size, t, width", [
    ("r3d_tiny", 8, 32, 8, 64), ("r3d_18", 8, 32, 1, 512), ("r2plus1d_18", 8, 32, 1, 512), ("r3d_50", 16, 64, 8, 2048),
])
def test_video_backbones_give_dense_maps_and_pooled_features(name, frames, size, t, width):
    backbone = build_backbone(name, in_channels=1).eval()
    x = torch.randn(2, 1, frames, size, size)
    dense = backbone.forward_features(x)
    assert dense.shape[:3] == (2, width, t) and dense.dim() == 5
    assert backbone.num_features == width
    torch.testing.assert_close(backbone(x), dense.mean(dim=(2, 3, 4)))


def test_frames_backbone_is_the_mean_of_its_image_backbone_over_frames_and_blind_to_their_order():
    torch.manual_seed(0)
    frames = build_backbone("frames", image="resnet18", image_args={"width": 4, "cifar_stem": True},
                            in_channels=1).eval()
    clips = torch.rand(2, 1, 3, 16, 16)
    per_frame = torch.stack([frames.image(clips[:, :, t]) for t in range(3)], dim=1).mean(dim=1)
    torch.testing.assert_close(frames(clips), per_frame)
    torch.testing.assert_close(frames(clips.flip(2)), frames(clips))  # time reversed: no motion seen
    assert frames.forward_features(clips).shape[:3] == (2, frames.num_features, 3) and frames.media == "video"
    with pytest.raises(ConfigError, match="applies an image backbone to each frame, but 'r3d_tiny' reads videos"):
        build_backbone("frames", image="r3d_tiny")


def test_an_image_checkpoint_loads_into_the_frames_backbone(tmp_path):
    from selfsup.eval.checkpoint import backbone_from, load_backbone

    image = build_backbone("resnet18", width=4, in_channels=1)
    ckpt = tmp_path / "image.ckpt"
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in image.state_dict().items()},
                "hyper_parameters": {"backbone": "resnet18", "backbone_args": {"width": 4}, "in_channels": 1}}, ckpt)
    loaded, spec = load_backbone(ckpt, frames=True)
    probed, same = backbone_from("frames", None, 1, ckpt, "LinearProbe")
    assert spec == same and spec.name == "frames" and spec.args == {"image": "resnet18", "image_args": {"width": 4}}
    for backbone in (loaded, probed):
        for key, value in image.state_dict().items():
            assert torch.equal(backbone.state_dict()[f"image.{key}"], value)


@pytest.mark.parametrize("args, side", [({}, 1), ({"maxpool": False}, 2), ({"cifar_stem": True}, 4),
                                         ({"cifar_stem": True, "maxpool": True}, 2)])
def test_r3d_small_frame_stem_keeps_the_resolution_it_is_asked_to(args, side):
    backbone = build_backbone("r3d_tiny", in_channels=1, **args)
    assert backbone.forward_features(torch.zeros(1, 1, 4, 32, 32)).shape == (1, 64, 4, side, side)
    assert backbone.stem[0].kernel_size[1:] == ((3, 3) if args.get("cifar_stem") else (7, 7))


def test_r3d_50_has_cvrl_temporal_kernels():
    backbone = build_backbone("r3d_50")
    stem = backbone.stem[0]
    assert stem.kernel_size == (5, 7, 7) and stem.stride == (2, 2, 2)
    for stage, kt in zip((backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4), (1, 1, 3, 3)):
        assert all(block.body[0].kernel_size == (kt, 1, 1) for block in stage)
    assert [len(s) for s in (backbone.layer1, backbone.layer2, backbone.layer3, backbone.layer4)] == [3, 4, 6, 3]


def test_torchvision_video_resnets_keep_torchvision_names():
    from torchvision.models.video import r3d_18

    ours = build_backbone("r3d_18").state_dict()
    theirs = {k: v for k, v in r3d_18().state_dict().items() if not k.startswith("fc.")}
    assert ours.keys() == theirs.keys()


def test_cvrl_is_simclr_loss_on_clips_with_cvrl_projector():
    torch.manual_seed(0)
    model = CVRL(backbone="r3d_tiny", in_channels=1, proj_hidden_dim=32)
    mlp = model.projector
    assert isinstance(mlp, MLP) and mlp.dims == [64, 32, 32, 32, 128]
    assert [type(m).__name__ for m in mlp] == ["Linear", "BatchNorm1d", "ReLU"] * 3 + ["Linear"]
    assert model.temperature == 0.1 and model.hparams.optimizer == "sgd" and model.hparams.lr == 0.32
    batch = ClipViews(size=16, frames=4, stride=1).batch(torch.randint(0, 256, (6, 10, 1, 20, 20), dtype=torch.uint8))
    out = model.ssl_step(batch)
    z1, z2 = model.projector(model.backbone(torch.cat(batch["views"]))).chunk(2)
    torch.testing.assert_close(out.loss, nt_xent(z1, z2, 0.1))
    assert out.features.shape == (6, 64)


def test_random_frame_takes_one_frame_of_each_clip_as_a_one_frame_clip():
    clips = torch.arange(8.0)[None, None, :, None, None] + 100 * torch.arange(5.0)[:, None, None, None, None]
    clips = clips.expand(5, 2, 8, 3, 3)  # value = 100 x clip + frame
    frames = random_frame(clips)
    assert frames.shape == (5, 2, 1, 3, 3)
    picked = frames[:, 0, 0, 0, 0]
    assert torch.equal(picked // 100, torch.arange(5.0)) and ((picked % 100) < 8).all()
    assert torch.equal(frames, frames[:, :1, :, :1, :1].expand_as(frames))  # whole frames, every channel


def test_cvrl_frame_loss_and_reversed_negatives_add_to_the_clip_loss():
    """loss = NT-Xent(clip 1, clip 2; negatives: clip 1 played backwards) + w x NT-Xent over one random frame of
    each clip, with its own projector."""
    batch = ClipViews(size=16, frames=4, stride=1).batch(torch.randint(0, 256, (6, 10, 1, 20, 20), dtype=torch.uint8))
    clip1, clip2 = batch["views"]
    torch.manual_seed(0)
    model = CVRL(backbone="r3d_tiny", in_channels=1, proj_hidden_dim=32, frame_loss_weight=0.5,
                 reversed_negatives=True)
    torch.manual_seed(1)
    out = model.ssl_step(batch)
    z1, z2, backwards = model.projector(model.backbone(torch.cat([clip1, clip2, clip1.flip(2)]))).chunk(3)
    clip_loss = nt_xent(z1, z2, 0.1, negatives=backwards)
    torch.manual_seed(1)
    f1, f2 = model.frame_projector(model.backbone(torch.cat([random_frame(clip1), random_frame(clip2)]))).chunk(2)
    frame_loss = nt_xent(f1, f2, 0.1)
    torch.testing.assert_close(out.loss, clip_loss + 0.5 * frame_loss)
    torch.testing.assert_close(out.logs["train/frame_loss"], frame_loss.detach())
    assert out.features.shape == (6, 64) and out.embeddings.shape == (6, 128)
    with pytest.raises(ConfigError, match="frame_loss_weight must be >= 0"):
        CVRL(backbone="r3d_tiny", in_channels=1, frame_loss_weight=-1)


@pytest.mark.slow
def test_fit_of_the_moving_mnist_recipe(tmp_path, small_data):
    selfsup("fit", "-c", str(REPO / "experiments/cvrl/moving-mnist.yaml"), "--data.init_args.batch_size", "16",
            "--data.init_args.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "1", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "null", cwd=tmp_path)
    ckpt = tmp_path / "runs/cvrl-moving-mnist/version_0/checkpoints/last.ckpt"
    assert ckpt.is_file()
    out = tmp_path / "knn.json"
    proc = selfsup("knn", "--ckpt", str(ckpt), "-c", str(REPO / "experiments/eval/moving-mnist-direction.yaml"),
                   "--k", "20", "--out", str(out), cwd=tmp_path)
    result = json.loads(out.read_text())
    assert "label direction" in proc.stdout and result["label"] == "direction" and result["queries"] == 64
    assert 0 < result["results"][0]["top1"] <= 1


@pytest.mark.slow
def test_knn_runs_an_image_checkpoint_on_each_frame_of_the_videos(trained, tmp_path, small_data):
    _, ckpt = trained
    data = tmp_path / "frames.yaml"  # two frames of one clip per video: cheap
    data.write_text("data:\n  source: builtin:moving-mnist\n  num_workers: 0\n  views:\n"
                    "    class_path: selfsup.data.clips.EvalClips\n"
                    "    init_args: {size: 32, frames: 2, stride: 8, clips: 1}\n")
    args = ("knn", "--ckpt", str(ckpt), "-c", str(data), "--label", "direction", "--k", "20")
    proc = selfsup(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "--frames runs an image backbone on each frame" in proc.stderr, proc.stderr
    out = tmp_path / "knn.json"
    proc = selfsup(*args, "--frames", "--out", str(out), cwd=tmp_path)
    result = json.loads(out.read_text())
    backbone = result["backbone"]  # the image backbone's arguments, in the order its checkpoint recorded them
    assert backbone.startswith("frames(image=resnet18, image_args={") and "'cifar_stem': True" in backbone
    assert "'width': 4" in backbone
    assert result["label"] == "direction" and result["queries"] == 64 and 0 < result["results"][0]["top1"] <= 1


def test_the_direction_of_motion_is_a_label_of_moving_mnist(tmp_path):
    from selfsup.data.members import BadSample, decode_label
    from selfsup.data.module import SSLDataModule
    from selfsup.errors import ConfigError

    sample = {"__key__": "v", "cls": b"7", "json": b'{"digit": 7, "direction": 5, "speed": 3}'}
    assert decode_label(sample, 10) == 7 and decode_label(sample, 8, "direction") == 5
    for bad in (b'{"direction": 9}', b'{"direction": true}', b'{"speed": 3}', b"[5]", b"not json", b"[" * 100000):
        with pytest.raises(BadSample, match="label"):
            decode_label({**sample, "json": bad}, 8, "direction")
    source = Source("builtin:moving-mnist")  # not written: the classes come from the data set's declaration
    assert source.label_classes("direction") == [f"{d} deg" for d in range(0, 360, 45)]
    assert len(source.label_classes("cls")) == 10
    with pytest.raises(ConfigError, match="has no label 'speed'; its labels: cls, direction"):
        SSLDataModule("builtin:moving-mnist", label="speed")
    samples = [{**sample, "__key__": f"v{d}", "mp4": encode_video(torch.zeros(3, 1, 8, 8, dtype=torch.uint8)),
                "json": f'{{"direction": {d}}}'.encode()} for d in (3, 6)]
    write_shard_set(tmp_path / "v", Manifest("v", 1, [str(c) for c in range(10)], media="video"),
                    {"train": samples}, progress=False)
    stream = ShardStream(Source(f"shards:{tmp_path / 'v'}").split("train").parts, EvalClips(8, 2, 1, 1), 2, 1,
                         repeat=False, num_classes=8, media="video", label="direction")
    assert next(iter(stream))["label"].tolist() == [3, 6]


@pytest.mark.parametrize("frames", [1, 2])
@pytest.mark.parametrize("kernel, stride", [((3, 7, 7), (2, 2, 2)), ((5, 3, 3), (1, 1, 1)), ((1, 3, 3), (1, 2, 2))])
def test_a_clip_shorter_than_the_temporal_kernel_gives_the_plain_convolutions_output_and_gradients(kernel, stride,
                                                                                                    frames):
    from selfsup.backbones.video import ClipConv3d

    torch.manual_seed(0)
    full = torch.nn.Conv3d(2, 4, kernel, stride, tuple(k // 2 for k in kernel), bias=False)
    clip_conv = ClipConv3d(2, 4, kernel, stride, tuple(k // 2 for k in kernel), bias=False)
    clip_conv.load_state_dict(full.state_dict())
    x = torch.randn(3, 2, frames, 12, 12)
    inputs = [x.clone().requires_grad_() for _ in range(2)]
    outputs = [conv(i) for conv, i in zip((full, clip_conv), inputs)]
    assert outputs[0].shape == outputs[1].shape and torch.allclose(*outputs, atol=1e-5)
    for out in outputs:
        out.square().sum().backward()
    assert torch.allclose(full.weight.grad, clip_conv.weight.grad, atol=1e-4)
    assert torch.allclose(inputs[0].grad, inputs[1].grad, atol=1e-4)
    clip = torch.randn(3, 2, 6, 12, 12)  # longer clips: the plain convolution
    assert torch.allclose(full(clip), clip_conv(clip), atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last_3d])
@pytest.mark.parametrize("frames", [1, 2])
def test_clip_convs_give_finite_bf16_gradients_over_maps_shorter_than_their_kernel(frames, layout, stale_nans):
    """torch 2.14's CPU bf16 weight gradient of a 3-frame kernel over 2 frames reads memory it never wrote: with a
    plain Conv3d, NaN in 5 to 13 of these 40 trials per layout. (Over 1 frame it showed in whole models only: the
    torchvision test below.)"""
    from selfsup.backbones.video import ClipConv3d

    torch.manual_seed(0)
    shapes = [(8, 4), (16, 2), (4, 8), (32, 7)]
    for (channels, size), spatial_stride, _ in itertools.product(shapes, (1, 2), range(5)):
        conv = ClipConv3d(channels, 2 * channels, 3, (1, spatial_stride, spatial_stride), 1, bias=False)
        x = torch.rand(32, channels, frames, size, size).contiguous(memory_format=layout).requires_grad_()
        conv.to(memory_format=layout)
        stale_nans()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x).float().sum().backward()
        assert conv.weight.grad.isfinite().all() and x.grad.isfinite().all(), (channels, size, spatial_stride)


@pytest.mark.parametrize("name", ["r3d_18", "mc3_18"])
def test_torchvisions_video_resnets_give_one_frame_clips_finite_bf16_channels_last_gradients(name, stale_nans):
    """The oneDNN NaN that ClipConv3d avoids bites torchvision's 3-frame kernels too (every trial before)."""
    from torchvision.models import video as tv_video

    from selfsup.backbones import to_channels_last

    torch.manual_seed(0)
    ours = build_backbone(name, in_channels=1)
    plain = getattr(tv_video, name)()
    plain.stem[0] = torch.nn.Conv3d(1, 64, plain.stem[0].kernel_size, plain.stem[0].stride, plain.stem[0].padding,
                                    bias=False)
    plain.load_state_dict({**plain.state_dict(), **ours.state_dict()})
    plain.eval()
    ours.eval()
    x = torch.randn(4, 1, 1, 32, 32)
    features = plain.layer4(plain.layer3(plain.layer2(plain.layer1(plain.stem(x)))))
    assert torch.allclose(features, ours.forward_features(x), atol=1e-4)  # the same function as torchvision's
    to_channels_last(ours.train())
    stale_nans()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours(x).float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters() if p.grad is not None)
