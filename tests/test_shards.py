"""Writing shards from folders, reading them back exactly, and surviving corrupt and hostile shards."""

from __future__ import annotations

import io
import pickle
import re
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from clirun import selfsup
from selfsup.data import SSLDataModule
from selfsup.data.shards import encode_png, parse_size
from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream
from selfsup.data.views import EvalView, SimCLRViews
from selfsup.errors import ConfigError
from selfsup.shards_cli import main as shards_main


def make_folder(root: Path, per_class: int = 12, classes=("cat", "dog", "eel"), fmt: str = "png") -> dict:
    """An image folder ROOT/CLASS/*.FMT of random 10x10 RGB images; returns {pixels bytes: class index}."""
    gen = torch.Generator().manual_seed(0)
    truth = {}
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = torch.randint(0, 256, (3, 10, 10), dtype=torch.uint8, generator=gen)
            if fmt == "png":
                (root / name / f"{i:03d}.png").write_bytes(encode_png(image))
            else:
                Image.fromarray(image.permute(1, 2, 0).numpy()).save(root / name / f"{i:03d}.jpg", quality=90)
            truth[image.numpy().tobytes()] = c
    return truth


def read_split(source: str, split: str = "train", channels: int = 3, **kw) -> tuple[list, list, dict]:
    """Every (image, label) of a split read once, and the summed health counts."""
    src = Source(source)
    stream = ShardStream(src.split(split).parts, EvalView(10), 7, channels, repeat=False,
                         num_classes=len(src.classes), **kw)
    images, labels, skipped, refused, seen = [], [], Counter(), Counter(), 0
    for batch in stream:
        images += [(im * 255).round().to(torch.uint8) for im in batch["image"]]
        labels += batch["label"].tolist()
        skipped.update(batch["health"]["skipped"])
        refused.update(batch["health"]["refused"])
        seen += batch["health"]["seen"]
    return images, labels, {"skipped": skipped, "refused": refused, "seen": seen}


def test_folder_to_shards_round_trip_is_pixel_exact(tmp_path):
    truth = make_folder(tmp_path / "pics")
    proc = selfsup("shards", "write", "--from", str(tmp_path / "pics"), "--out", str(tmp_path / "shards"),
                   "--maxcount", "5", "--quiet", cwd=tmp_path, fresh=True)
    assert "train: 36 samples in 8 shards" in proc.stdout and "3 classes" in proc.stdout
    for source in (f"shards:{tmp_path / 'shards'}", f"folder:{tmp_path / 'pics'}"):
        images, labels, health = read_split(source)
        got = Counter((im.numpy().tobytes(), label) for im, label in zip(images, labels))
        assert got == Counter(truth.items()), source  # every image exactly once, with its label
        assert health["seen"] == 36 and not health["skipped"]


def test_imagenet_layout_and_val_fraction(tmp_path):
    make_folder(tmp_path / "imagenet/train", per_class=6)
    make_folder(tmp_path / "imagenet/val", per_class=2)
    src = Source(f"folder:{tmp_path / 'imagenet'}")
    assert src.classes == ["cat", "dog", "eel"] and src.split("val").num_samples == 6 and src.channels == 3
    make_folder(tmp_path / "flat", per_class=10, classes=("",))  # ROOT/*: unlabeled
    assert shards_main(["write", "--from", str(tmp_path / "flat"), "--out", str(tmp_path / "out"),
                        "--val-fraction", "0.2", "--quiet"]) == 0
    src = Source(f"shards:{tmp_path / 'out'}")
    assert src.classes == [] and src.split("train").num_samples == 8 and src.split("val").num_samples == 2


def test_write_refuses_to_overwrite_and_names_missing_folders(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out/keep.txt").write_text("mine")
    proc = selfsup("shards", "write", "--from", "builtin:mnist5k", "--out", str(tmp_path / "out"), cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "already exists and is not empty" in proc.stderr
    assert (tmp_path / "out/keep.txt").read_text() == "mine"
    proc = selfsup("shards", "write", "--from", str(tmp_path / "nope"), "--out", str(tmp_path / "o2"), cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and not (tmp_path / "o2").exists()


def test_builtin_to_shards_with_maxsize_and_inspect(tmp_path, mnist5k, capsys):
    out = tmp_path / "m"
    assert shards_main(["write", "--from", "builtin:mnist5k", "--out", str(out), "--maxsize", "100kB",
                        "--quiet"]) == 0
    src = Source(f"shards:{out}")
    assert src.split("train").num_samples == 4000 and len(src.split("train").parts) > 4
    assert all(p.stat().st_size < 110_000 for p in out.glob("*.tar"))
    assert shards_main(["inspect", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "train: " in printed and "4000 samples" in printed and "all members readable" in printed


def test_a_pattern_naming_missing_shards_is_refused(mnist5k):
    with pytest.raises(ConfigError, match="3 shard\\(s\\) not found, e.g. train-000008.tar"):
        SSLDataModule(f"shards:{mnist5k}/train-{{000006..000010}}.tar").source.split("train")


def test_parse_size():
    assert parse_size("1GB") == 10**9 and parse_size("500mb") == 5 * 10**8 and parse_size("3e9") == 3 * 10**9
    with pytest.raises(ConfigError, match="not understood"):
        parse_size("lots")


# ---- corrupt data -------------------------------------------------------------------------------------------

def corrupt_set(tmp_path: Path) -> tuple[Path, int]:
    """JPEG shards with 3 broken images, 1 bad label and a truncated last shard; returns (folder, bad count)."""
    make_folder(tmp_path / "pics", per_class=20, fmt="jpg")
    out = tmp_path / "bad"
    shards_main(["write", "--from", str(tmp_path / "pics"), "--out", str(out), "--maxcount", "10", "--quiet"])
    shards = sorted(out.glob("train-*.tar"))
    rewrite_member(shards[0], 1, lambda data: data[: len(data) // 3])  # truncated JPEG
    rewrite_member(shards[1], 4, lambda data: b"garbage" * 50)  # not an image at all
    rewrite_member(shards[2], 2, lambda data: data[:20] + bytes(200) + data[220:])  # header kept, body zeroed
    rewrite_member(shards[3], 0, lambda data: b"seven", member="cls")  # bad label
    lost = truncate_inside_member(shards[-1], 6)  # the 7th sample and all after it are unreadable
    return out, 3 + 1 + lost


def rewrite_member(shard: Path, index: int, change, member: str = "jpg") -> None:
    with tarfile.open(shard) as tar:
        entries = [(info, tar.extractfile(info).read()) for info in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        seen = -1
        for info, data in entries:
            if info.name.endswith("." + member):
                seen += 1
                if seen == index:
                    data = change(data)
                    info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def truncate_inside_member(shard: Path, sample: int) -> int:
    """Cut ``shard`` in the middle of its ``sample``-th image; returns how many samples are lost."""
    with tarfile.open(shard) as tar:
        images = [info for info in tar.getmembers() if info.name.endswith(".jpg")]
    cut = images[sample].offset_data + images[sample].size // 2
    with open(shard, "r+b") as f:
        f.truncate(cut)
    return len(images) - sample


def test_corrupt_samples_and_truncated_shard_are_skipped_and_counted(tmp_path, caplog):
    folder, bad = corrupt_set(tmp_path)
    images, labels, health = read_split(f"shards:{folder}")
    assert sum(health["skipped"].values()) == bad and len(images) == 60 - bad
    assert health["seen"] == 60
    assert health["skipped"]["train-000005.tar"] == 4  # the truncated last shard: its last 4 samples
    assert any("train-000005.tar" in r.getMessage() for r in caplog.records)  # warned by name


@pytest.mark.slow
def test_training_on_corrupt_shards_runs_to_the_end_and_stops_past_the_limit(tmp_path):
    folder, bad = corrupt_set(tmp_path)
    common = ["fit", "--model", "SimCLR", "--model.backbone", "resnet18",
              "--model.backbone_args", "{width: 4, cifar_stem: true}",
              "--data.source", f"shards:{folder}", "--data.image_size", "10", "--data.batch_size", "8",
              "--data.num_workers", "2", "--data.shuffle_buffer", "0", "--trainer.max_epochs", "3",
              "--trainer.log_every_n_steps", "1", "--trainer.enable_progress_bar", "false"]
    selfsup(*common, "--data_health.max_bad_fraction", "0.2", cwd=tmp_path)
    metrics = next(tmp_path.glob("runs/*/version_0/metrics.csv")).read_text().splitlines()
    column = metrics[0].split(",").index("data/skipped")
    skipped = [float(row.split(",")[column]) for row in metrics[1:] if row.split(",")[column]]
    assert skipped[-1] >= bad and skipped == sorted(skipped)  # counted, cumulative, and the run finished
    proc = selfsup(*common, cwd=tmp_path, check=False)  # the default limit, 1%
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "samples read so far were unusable" in proc.stderr
    assert re.search(r"worst on this rank: train-00000\d\.tar \(\d+\)", proc.stderr), proc.stderr[-2000:]


# ---- hostile data -------------------------------------------------------------------------------------------

class WritesAFile:
    """Unpickling this creates a file: what a hostile ``.pyd`` member would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_pickle_member_is_refused_and_never_unpickled(tmp_path, capsys):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(WritesAFile(marker))
    pickle.loads(payload)  # the payload is real: unpickling it does write the file
    assert marker.exists()
    marker.unlink()
    make_folder(tmp_path / "pics", per_class=2)
    out = tmp_path / "shards"
    shards_main(["write", "--from", str(tmp_path / "pics"), "--out", str(out), "--quiet"])
    shard = out / "train-000000.tar"
    with tarfile.open(shard, "a") as tar:
        info = tarfile.TarInfo("cat/000.pyd")  # joins the first sample's key
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    images, _, health = read_split(f"shards:{out}")
    assert len(images) == 6 and sum(health["refused"].values()) == 1
    assert shards_main(["inspect", str(out), "--quiet"]) == 1
    assert "REFUSED train-000000.tar: cat/000.pyd" in capsys.readouterr().out
    assert not marker.exists()


# ---- the data module ----------------------------------------------------------------------------------------

def test_folder_source_in_the_data_module(tmp_path):
    make_folder(tmp_path / "ds/train", per_class=8)
    make_folder(tmp_path / "ds/val", per_class=3)
    data = SSLDataModule(f"folder:{tmp_path / 'ds'}", batch_size=4, num_workers=0, image_size=10,
                         views=EvalView(10))
    assert data.num_classes == 3 and data.num_channels == 3
    assert len(data.train_dataloader()) == 6
    assert sum(len(b["label"]) for b in data.eval_dataloader("val")) == 9


def test_uneven_shards_warn_about_repeats(tmp_path, mnist5k):
    from selfsup.data.module import warn_low_coverage

    parts = Source("builtin:mnist5k").split("train").parts[:5]  # 5 shards over 2 workers: 3 + 2
    stream = ShardStream(parts, EvalView(28), 50, 1, repeat=True)
    with pytest.warns(UserWarning, match="an epoch sees only about 90% distinct samples"):
        warn_low_coverage(stream, 2, 2500)


def test_video_folders_are_kept_encoded_and_refused_by_image_views(tmp_path, capsys):
    for label in ("jump", "swim"):
        (tmp_path / "clips" / label).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "clips" / label / f"{i}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes([i]) * 64)
    out = tmp_path / "k"
    assert shards_main(["write", "--from", str(tmp_path / "clips"), "--out", str(out), "--quiet"]) == 0
    assert "videos" in capsys.readouterr().out
    part = Source(f"shards:{out}").split("train").parts[0]
    clips = {s["__key__"]: s for s in part.samples()}
    assert clips["swim/2"]["mp4"] == (tmp_path / "clips/swim/2.mp4").read_bytes() and clips["swim/2"]["cls"] == b"1"
    assert shards_main(["inspect", str(out), "--quiet"]) == 0
    with pytest.raises(ConfigError, match="holds videos, but the views SimCLRViews are made from images.*CVRL"):
        SSLDataModule(f"shards:{out}", views=SimCLRViews(8))


@pytest.mark.slow
def test_fit_on_a_folder_source_through_the_cli(tmp_path):
    make_folder(tmp_path / "ds/train", per_class=16)
    make_folder(tmp_path / "ds/val", per_class=4)
    selfsup("fit", "--model", "SimCLR", "--model.backbone", "resnet18", "--model.backbone_args",
            "{width: 4, cifar_stem: true}", "--data.source", f"folder:{tmp_path / 'ds'}", "--data.image_size", "10",
            "--data.batch_size", "8", "--data.num_workers", "2", "--trainer.max_epochs", "2",
            "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    run = next(tmp_path.glob("runs/*/version_0"))
    assert (run / "checkpoints/last.ckpt").is_file()
    assert "val/probe_top1" in (run / "metrics.csv").read_text().splitlines()[0]
