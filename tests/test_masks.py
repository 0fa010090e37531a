"""Segmentation masks as a sample member (``mask.png``; ``NAME.mask.png`` beside a folder's image) and the
built-in MNIST scenes that carry them: decoded only in dense runs, never unpickled, bad ones skipped and counted."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

from hostile import SIZE, cli, png
from selfsup.data.builtin import digit_scene
from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream
from selfsup.data.views import EvalView


def mask_png(path, labels, size: int = SIZE, mode: str = "L") -> None:
    """A mask of ``size`` whose rows cycle through ``labels``."""
    rows = np.array([labels[i % len(labels)] for i in range(size)], dtype=np.uint8)
    Image.fromarray(np.repeat(rows[:, None], size, axis=1)).convert(mode).save(path)


@pytest.fixture
def masked_folder(tmp_path):
    """good.png with its mask; wrong_size, bad_label, rgb_mask with a broken one each; no_mask without."""
    root = tmp_path / "scenes"
    root.mkdir()
    for i, name in enumerate(("good", "wrong_size", "bad_label", "rgb_mask", "no_mask")):
        (root / f"{name}.png").write_bytes(png(i))
    mask_png(root / "good.mask.png", [0, 1, 2, 255])
    mask_png(root / "wrong_size.mask.png", [0, 1], size=SIZE + 2)
    mask_png(root / "bad_label.mask.png", [0, 7])
    mask_png(root / "rgb_mask.mask.png", [0, 1], mode="RGB")
    return root


def read_masks(source: str, segments: int) -> tuple[list[dict], dict]:
    src = Source(source)
    stream = ShardStream(src.split("train").parts, EvalView(SIZE), 8, src.channels, repeat=False,
                         num_classes=len(src.classes), segments=segments)
    batches = list(stream)
    skipped = sum(sum(b["health"]["skipped"].values()) for b in batches)
    return batches, {"skipped": skipped, "seen": sum(b["health"]["seen"] for b in batches)}


def test_a_folder_source_reads_masks_beside_images_and_skips_bad_ones(masked_folder, caplog):
    caplog.set_level(logging.WARNING, logger="selfsup.data")
    batches, health = read_masks(f"folder:{masked_folder}", segments=3)
    assert health == {"skipped": 4, "seen": 5}  # masks are not images of the set: 5 samples, not 9
    assert len(batches) == 1 and batches[0]["mask"].shape == (1, SIZE, SIZE)
    assert batches[0]["mask"][0, :4, 0].tolist() == [0, 1, 2, 255]  # 255: ignored, kept as it is
    warning = next(r.getMessage() for r in caplog.records if "skipping unusable samples" in r.getMessage())
    assert "sample " in warning and any(n in warning for n in ("wrong_size", "bad_label", "rgb_mask", "no_mask"))


@pytest.mark.parametrize(("name", "reason"), [
    ("wrong_size", "its mask is 12x12, its image 10x10"),
    ("bad_label", "its mask holds label 7, outside 0..2"),
    ("rgb_mask", "its mask is a RGB image; write class indices as an 8-bit grayscale or palette PNG"),
    ("no_mask", "has no mask.png member (a dense run needs one per image)"),
])
def test_each_bad_mask_is_named(masked_folder, name, reason):
    from selfsup.data.folders import file_samples
    from selfsup.data.members import BadSample, decode_sample

    sample = next(file_samples([(masked_folder / f"{name}.png", -1)], masked_folder))
    with pytest.raises(BadSample, match=f"sample {name}.*{reason}".replace("(", r"\(").replace(")", r"\)")):
        decode_sample(sample, 1, segments=3)
    assert set(decode_sample(sample, 1)) == {"image", "label"}  # outside a dense run the mask is not read


def test_masks_travel_into_shards_and_inspect_shows_and_checks_them(masked_folder, tmp_path, capsys):
    out = tmp_path / "shards"
    code, printed = cli("shards", "write", "--from", str(masked_folder), "--out", str(out), "--quiet",
                        capsys=capsys)
    assert code == 0 and "train: 5 samples" in printed, printed
    code, printed = cli("shards", "inspect", str(out), "--quiet", capsys=capsys)
    assert "members: mask.png (4), png (5)" in printed, printed
    assert "wrong_size: its mask is 12x12" in printed and "rgb_mask: its mask is a RGB image" in printed
    assert code == 1 and "REFUSED" not in printed  # a mask member is read, not refused
    batches, health = read_masks(f"shards:{out}", segments=3)
    assert health["skipped"] == 4 and batches[0]["mask"][0, :4, 0].tolist() == [0, 1, 2, 255]


def test_eval_view_resizes_and_crops_a_mask_as_its_image():
    mask = torch.zeros(20, 30, dtype=torch.uint8)
    mask[:, 15:] = 3
    out = EvalView(10).mask(mask)  # short side 20 -> 10: 15 x 10, centre crop 10 x 10
    assert out.shape == (10, 10) and set(out.unique().tolist()) == {0, 3}  # nearest: no blended labels
    assert out[:, :2].eq(0).all() and out[:, -3:].eq(3).all()


def test_a_scene_is_deterministic_and_its_labels_cover_the_strokes_and_a_margin():
    digits = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    digits[:, :, 4:24, 12:16] = 255  # a bar
    labels = np.array([4, 7, 9])
    image, mask = digit_scene(digits, labels, np.random.default_rng(1))
    again, mask_again = digit_scene(digits, labels, np.random.default_rng(1))
    assert torch.equal(image, again) and torch.equal(mask, mask_again)
    assert image.shape == mask.shape == (1, 64, 64)
    assert set(mask.unique().tolist()) - {0} <= {5, 8, 10} and len(mask.unique()) >= 2  # class + 1
    near = torch.nn.functional.max_pool2d((image > 127).float(), 7, stride=1, padding=3) > 0  # within 3 px
    assert (mask[image > 200] > 0).all() and not (mask[~near] > 0).any()
    assert (mask > 0).sum() > 2 * (image > 127).sum()  # the margin: regions, not 2-4 px lines


def fit_cached(probe: str, folder, capsys) -> tuple[int, str]:
    """Two steps of ``probe`` with cached features of a random width-4 ResNet-18 on the image folder ``folder``."""
    return cli("fit", "--model", probe, "--model.backbone", "resnet18", "--model.backbone_args",
               "{width: 4, cifar_stem: true}", "--model.cache_features", "true", "--data.source", f"folder:{folder}",
               "--data.image_size", str(SIZE), "--data.batch_size", "2", "--data.num_workers", "0",
               "--trainer.max_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.log_every_n_steps", "1",
               capsys=capsys)


def test_a_dense_probe_with_cached_features_counts_the_masks_it_skipped(tmp_path, monkeypatch, capsys):
    """2 of 5 masks unusable: caching skips them, and the health check stops the run as streaming would."""
    rows = (("a", "good", [0, 1, 2, 255]), ("a", "good2", [0, 1]), ("b", "good3", [1, 2]), ("a", "wrong_size", None),
            ("b", "bad_label", [0, 7]))
    for i, (cls, name, mask) in enumerate(rows):
        (tmp_path / "scenes" / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / "scenes" / cls / f"{name}.png").write_bytes(png(i))
        mask_png(tmp_path / "scenes" / cls / f"{name}.mask.png", mask or [0, 1], size=SIZE + 2 * (mask is None))
    monkeypatch.chdir(tmp_path)
    code, printed = fit_cached("DenseProbe", tmp_path / "scenes", capsys)
    assert code == 2 and "2 of 5 samples read so far were unusable" in printed, printed[-2000:]


def test_a_linear_probe_with_cached_features_counts_the_images_it_skipped(tmp_path, monkeypatch, capsys):
    """2 of 5 images do not decode: caching skips them, and the health check stops the run as streaming would."""
    for i, (cls, name) in enumerate((("a", "0"), ("a", "1"), ("b", "2"), ("a", "broken"), ("b", "broken"))):
        (tmp_path / "photos" / cls).mkdir(parents=True, exist_ok=True)
        (tmp_path / "photos" / cls / f"{name}.png").write_bytes(b"not a png" if name == "broken" else png(i))
    monkeypatch.chdir(tmp_path)
    code, printed = fit_cached("LinearProbe", tmp_path / "photos", capsys)
    assert code == 2 and "2 of 5 samples read so far were unusable" in printed, printed[-2000:]
