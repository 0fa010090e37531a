"""Hostile and broken data as training and evaluation read it: 16-bit and float images, videos over the pixel
cap, parts that end early or yield nothing, and the commands that stop on them with one line. Shard tables for
inspect and write: tests/test_hostile_data.py."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clirun import selfsup
from hostile import SIZE, audio_only, cli, cut_after, h264, no_frames, photos, png, resized_midway, shard, shard_set
from selfsup.data.manifest import MANIFEST, Manifest
from selfsup.data.members import BadSample, decode_video
from selfsup.data.shards import encode_video, write_shard_set
from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream
from selfsup.data.views import DecodedImages
from selfsup.errors import DataError

# ---- decoding: 16-bit and float images (D9), videos over the cap (H4) -------------------------------------------

def read_all(source: str, split: str = "train", **kw) -> tuple[list[torch.Tensor], dict]:
    """Every decoded image (uint8, as the stream decodes it) of a split, once, and the summed health counts."""
    src = Source(source)
    stream = ShardStream(src.split(split).parts, DecodedImages(), 1, src.channels, repeat=False,
                         num_classes=len(src.classes), media=src.media, **kw)
    images, skipped, seen = [], Counter(), 0
    for batch in stream:
        images += list(batch["decoded"])
        skipped.update(batch["health"]["skipped"])
        seen += batch["health"]["seen"]
    return images, {"skipped": skipped, "seen": seen}


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path, capsys):
    (tmp_path / "pics").mkdir()
    ramp = np.arange(256).reshape(16, 16)
    Image.fromarray((ramp * 257).astype(np.uint16)).save(tmp_path / "pics/depth16.png")
    Image.fromarray((ramp / 255).astype(np.float32)).save(tmp_path / "pics/float.tif")
    code, printed = cli("shards", "write", "--from", str(tmp_path / "pics"), "--out", str(tmp_path / "out"),
                        "--quiet", capsys=capsys)
    assert code == 0 and "train: 2 samples" in printed and "1 channel(s)" in printed, printed
    images, _ = read_all(f"shards:{tmp_path / 'out'}")
    for image in images:  # the ramp comes back whole: 256 levels from 0 to 255, in order
        assert torch.equal(image.flatten().sort().values, torch.arange(256, dtype=torch.uint8))


def mkv(frames: int, side: int = 16) -> bytes:
    """A Matroska video: its metadata holds no frame count, so only decoding can tell its length."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = side, side, "yuvj420p"
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((side, side), np.uint8), format="gray")))
        container.mux(stream.encode())
    return buffer.getvalue()


def test_a_video_over_the_pixel_cap_is_skipped_and_counted(tmp_path, monkeypatch, caplog):
    def samples():  # 16x16 frames: 512, 5120, (unknown until decoded) 5120 and 512 pixels
        for i, frames in enumerate((2, 20, 2)):
            if i == 2:
                yield {"__key__": "long-mkv", "mkv": mkv(20)}
            yield {"__key__": f"v{i}", "mp4": encode_video(torch.zeros(frames, 1, 16, 16, dtype=torch.uint8))}

    write_shard_set(tmp_path / "v", Manifest("v", 1, media="video"), {"train": samples()}, progress=False)
    monkeypatch.setenv("SELFSUP_MAX_VIDEO_PIXELS", "2000")
    videos, health = read_all(f"shards:{tmp_path / 'v'}")
    assert [v.shape[0] for v in videos] == [2, 2] and health["skipped"] == {"train-000000.tar": 2}
    assert "video of 20 frames of 16x16 is over the cap of 2,000 (raise it with SELFSUP_MAX_VIDEO_PIXELS)" in (
        caplog.text)  # from the metadata, before decoding
    with pytest.raises(BadSample, match="video decoded past 7 frames of 16x16, over the cap of 2,000"):
        decode_video(mkv(20), 1)  # no frame count: decoding stops at the cap


# ---- decoding clips by seeking (CVRL's training views): hostile videos are skipped and counted or handled ------

def corrupt_gop(data: bytes) -> bytes:
    """An mp4 with 300 bytes in the middle of its frame data scrambled (a corrupt GOP)."""
    out, mid = bytearray(data), (data.index(b"mdat") + data.index(b"moov")) // 2
    out[mid : mid + 300] = bytes(b ^ 0x5A for b in out[mid : mid + 300])
    return bytes(out)


def wrong_duration(data: bytes) -> bytes:
    """An mp4 whose movie, track and media headers say it lasts 100 times longer than it does."""
    out = bytearray(data)
    for box, offset in ((b"mvhd", 20), (b"tkhd", 24), (b"mdhd", 20)):  # version 0 boxes: the duration field
        at = data.index(box) + offset
        out[at : at + 4] = (int.from_bytes(out[at : at + 4], "big") * 100).to_bytes(4, "big")
    return bytes(out)


def over_counted(tmp: Path) -> bytes:
    """An mp4 whose index (at the front) counts 30 frames, cut after the first 12."""
    return cut_after(h264(30, faststart=True, tmp=tmp), 12)


HOSTILE_VIDEOS = {  # name: (maker of the bytes from a folder, usable) for two 8-frame stride-2 clips
    "no video stream (audio only)": (lambda tmp: audio_only(), False),
    "zero frames": (lambda tmp: no_frames(), False),
    "not a video": (lambda tmp: b"\x00" * 1000, False),
    "a corrupt GOP in the middle": (lambda tmp: corrupt_gop(h264(20)), False),
    "a wrong duration in the header": (lambda tmp: wrong_duration(h264(40)), True),
    "a header that counts frames the file lacks": (over_counted, True),
    "shorter than one clip (its frames loop)": (lambda tmp: h264(5), True),
    "a resolution change midway (scaled back)": (lambda tmp: resized_midway(), True),
}


@pytest.mark.parametrize("name", HOSTILE_VIDEOS)
def test_hostile_videos_decoded_by_seeking_are_skipped_and_counted_or_handled(name, tmp_path, monkeypatch):
    from selfsup.data.clips import ClipViews

    monkeypatch.setattr("selfsup.data.stream.decode_sample", lambda *a, **k: pytest.fail("decoded a whole video"))
    make, usable = HOSTILE_VIDEOS[name]
    samples = [{"__key__": "good", "mp4": h264(30)}, {"__key__": "hostile", "mp4": make(tmp_path)}]
    write_shard_set(tmp_path / "v", Manifest("v", 3, media="video"), {"train": samples}, progress=False)
    parts = Source(f"shards:{tmp_path / 'v'}").split("train").parts
    stream = ShardStream(parts, ClipViews(size=16, frames=8, stride=2), 2, 3, repeat=False, media="video")
    batches = list(stream)
    assert sum(len(b["views"][0]) for b in batches) == 1 + usable
    assert sum(b["health"]["seen"] for b in batches) == 2
    assert sum(sum(b["health"]["skipped"].values()) for b in batches) == (not usable)
    assert all(clip.shape[1:] == (3, 8, 16, 16) for b in batches for clip in b["views"])


def test_a_video_that_changes_resolution_midway_is_scaled_back_to_its_first_frame(tmp_path):
    """Legal H.264 (a new SPS at a keyframe): every decoder path gives frames of the first frame's size."""
    from selfsup.data.seek import decode_frames

    data = resized_midway()
    assert decode_video(data, 3).shape == (30, 3, 32, 32) and decode_video(data, 1).shape == (30, 1, 32, 32)
    assert decode_frames(data, 3, [0, 20, 29]).shape == (3, 32, 32, 3)


def test_knn_on_a_video_that_changes_resolution_midway(tmp_path, monkeypatch, capsys):
    """`selfsup knn` of a video set one of whose videos changes resolution: it was a ValueError traceback."""
    from selfsup.eval.checkpoint import BackboneSpec

    monkeypatch.chdir(tmp_path)
    spec = BackboneSpec("r3d_tiny", {"width": 2}, 3)
    torch.save({"state_dict": {f"backbone.{k}": v for k, v in spec.build().state_dict().items()},
                "hyper_parameters": {"backbone": spec.name, "backbone_args": spec.args, "in_channels": 3}}, "v.ckpt")

    def samples(n):
        return ({"__key__": f"v{i}", "mp4": resized_midway(8) if i == 0 else h264(8), "cls": str(i % 2).encode()}
                for i in range(n))

    write_shard_set(tmp_path / "v", Manifest("v", 3, ["a", "b"], media="video"),
                    {"train": samples(4), "val": samples(2)}, progress=False)
    Path("data.yaml").write_text(f"data:\n  source: shards:{tmp_path / 'v'}\n  batch_size: 4\n  num_workers: 0\n"
                                 "  views:\n    class_path: selfsup.data.clips.EvalClips\n"
                                 "    init_args: {size: 16, frames: 4, stride: 2, clips: 1}\n")
    code, printed = cli("knn", "--ckpt", "v.ckpt", "-c", "data.yaml", "--k", "2", "--out", "knn.json", capsys=capsys)
    assert code == 0 and "Traceback" not in printed, printed[-3000:]
    assert json.loads(Path("knn.json").read_text())["queries"] == 2


# ---- reading: parts that end early (D8) or yield nothing (H1) -----------------------------------------------

def cut_at_member_boundary(folder: Path, keep: int = 8) -> Path:
    """The first shard cut after its ``keep``-th sample, exactly at a member boundary (no end-of-archive)."""
    path = shard(folder, 0)
    with tarfile.open(path) as tar:
        last = [m for m in tar.getmembers() if m.name.endswith(".png")][keep - 1]
    with open(path, "r+b") as f:
        f.truncate(last.offset_data + -(-last.size // 512) * 512)
    return folder


def zero_filled(folder: Path) -> Path:
    """The first shard overwritten by zeros, its size kept (what a crash can leave on some filesystems)."""
    path = shard(folder, 0)
    path.write_bytes(bytes(path.stat().st_size))
    return folder


SHORT = {"cut at a member boundary": (cut_at_member_boundary, 8), "zero-filled": (zero_filled, 16)}


@pytest.mark.parametrize("name", SHORT)
def test_a_part_that_ends_early_counts_its_missing_samples(name, tmp_path, caplog):
    make, lost = SHORT[name]
    images, health = read_all(f"shards:{make(shard_set(tmp_path / 'set'))}")
    assert len(images) == 32 - lost and health["seen"] == 32 and health["skipped"] == {"train-000000.tar": lost}
    assert f"skipping the rest of train-000000.tar after {16 - lost} of 16 samples: it ends early" in caplog.text


def empty_shards(folder: Path) -> Path:
    for path in folder.glob("train-*.tar"):
        path.write_bytes(b"")
    return folder


def missing_shards(folder: Path) -> Path:
    for path in folder.glob("train-*.tar"):
        path.unlink()
    return folder


def dev_zero(folder: Path) -> Path:
    raw = json.loads((folder / MANIFEST).read_text())
    raw["splits"]["train"]["shards"] = ["/dev/zero", "/dev/zero"]
    (folder / MANIFEST).write_text(json.dumps(raw))
    return folder


NOTHING = {"0-byte shards": empty_shards, "missing shard files": missing_shards,
           "a manifest pointing at /dev/zero": dev_zero}


@pytest.mark.parametrize("name", NOTHING)
def test_training_parts_that_yield_nothing_stop_the_stream(name, tmp_path):
    src = Source(f"shards:{NOTHING[name](shard_set(tmp_path / 'set'))}")
    stream = ShardStream(src.split("train").parts, DecodedImages(), 8, 1, repeat=True, num_classes=2)
    with pytest.raises(DataError, match="none of the 2 training part.* holds a usable sample"):
        next(iter(stream))


FIT = ["fit", "--model", "SimCLR", "--model.backbone", "resnet18", "--model.backbone_args",
       "{width: 4, cifar_stem: true}", "--data.image_size", str(SIZE), "--data.batch_size", "8",
       "--data.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1",
       "--trainer.enable_progress_bar", "false"]

FIT_ROWS = {
    "shard cut at a member boundary (D8)": (cut_at_member_boundary, ["samples read so far were unusable",
                                                                     "worst on this rank: train-000000.tar (8)"]),
    "0-byte shards (H1)": (empty_shards, ["holds a usable sample", "selfsup shards inspect"]),
}  # the other short and empty parts: in-process above (each fit row costs a run)


@pytest.mark.slow
@pytest.mark.parametrize("name", FIT_ROWS)
def test_fit_on_short_or_empty_shards_stops_with_one_line(name, tmp_path):
    make, fragments = FIT_ROWS[name]
    folder = make(shard_set(tmp_path / "set"))
    proc = selfsup(*FIT, "--data.source", f"shards:{folder}", cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("selfsup: error: ") and all(f in line for f in fragments), line


@pytest.mark.slow
def test_knn_on_a_split_with_no_usable_sample_is_one_line(tmp_path, trained):
    def samples(n):
        return ({"__key__": f"s{i}", "png": png(i), "cls": str(i % 2).encode()} for i in range(n))

    folder = tmp_path / "set"
    write_shard_set(folder, Manifest("two", 1, ["a", "b"]), {"train": samples(16), "val": samples(4)}, progress=False)
    zero_filled_val = folder / "val-000000.tar"
    zero_filled_val.write_bytes(bytes(zero_filled_val.stat().st_size))
    (tmp_path / "data.yaml").write_text(f"data:\n  source: shards:{folder}\n  image_size: {SIZE}\n  batch_size: 8\n"
                                        "  num_workers: 0\n")
    proc = selfsup("knn", "--ckpt", str(trained[1]), "-c", str(tmp_path / "data.yaml"), "--k", "3", cwd=tmp_path,
                   check=False, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "the val data holds no usable sample" in proc.stderr


@pytest.mark.slow
def test_a_write_killed_midway_is_cleaned_up_by_the_next(tmp_path):
    root = photos(tmp_path / "pics", per_class=400)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "ssl")}
    writer = subprocess.Popen([sys.executable, "-m", "selfsup.cli", "shards", "write", "--from", str(root), "--out",
                               str(tmp_path / "out"), "--maxcount", "100", "--quiet"], env=env)
    while not list(tmp_path.glob(".out-*/train-*.tar")):
        assert writer.poll() is None, "the write ended before it could be killed"
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    killed = list(tmp_path.glob(".out-*"))
    assert len(killed) == 1 and not (tmp_path / "out").exists()
    proc = selfsup("shards", "write", "--from", str(root), "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert f"removed {killed[0]}, the temporary folder of an interrupted write" in proc.stderr
    assert not killed[0].exists() and "train: 800 samples" in proc.stdout
