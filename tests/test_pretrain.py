"""`selfsup pretrain PATH` and `selfsup.pretrain(...)`: a folder of real photos with broken files to an exported
backbone that selfsup, torchvision and timm load; every image method's photo recipe."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image

import selfsup
from clirun import REPO, printed_config
from clirun import selfsup as cli
from selfsup.pretraining import photo_methods, plan

IMAGE_METHODS = ("simclr", "swav", "byol", "mocov3", "barlowtwins", "vicreg", "dino", "ibot", "mae", "simmim",
                 "pixpro", "rotnet", "ijepa")
SMALL = ["--epochs", "1", "--data.init_args.image_size", "32"]  # two steps of 16 images at 32 px


def photo_folder(root: Path, per_class: int = 20) -> Path:
    """Crops of scikit-learn's two sample photos in two class folders (JPEG and PNG, several sizes), and beside
    them a truncated JPEG and a text file named .jpg (both to be skipped), an RGBA PNG and a grayscale JPEG (both
    to be trained on)."""
    from sklearn.datasets import load_sample_image

    for c, name in enumerate(("china", "flower")):
        image = load_sample_image(f"{name}.jpg")
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            side = 40 + (i * 7) % 60
            top, left = (i * 37) % (image.shape[0] - side), (i * 53 + c) % (image.shape[1] - side)
            crop = Image.fromarray(image[top:top + side, left:left + side + i % 9])
            crop.save(root / name / (f"{i:03d}.png" if i % 3 == 0 else f"{i:03d}.jpg"))
    good = (root / "china/001.jpg").read_bytes()
    (root / "china/truncated.jpg").write_bytes(good[: len(good) // 2])
    (root / "flower/notes.jpg").write_text("holiday 2024, not a photo\n")
    Image.open(root / "china/002.jpg").convert("RGBA").save(root / "china/rgba.png")
    Image.open(root / "flower/002.jpg").convert("L").save(root / "flower/gray.jpg")
    return root


def check_export(backbone_pt: Path, size: int, photo: Path) -> None:
    """The export loads with selfsup.load_backbone (evaluating ``photo`` at the run's size, resized by 256/224) and
    into torchvision's resnet18 (everything but the classifier)."""
    import torchvision

    described = json.loads(backbone_pt.with_suffix(".json").read_text())["eval_transform"]
    assert (described["size"], described["resize"]) == (size, round(size / 0.875)), described
    backbone, transform = selfsup.load_backbone(backbone_pt)
    x = transform(Image.open(photo))
    assert tuple(x.shape) == (3, size, size) and tuple(backbone(x[None]).shape) == (1, 512)
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(torch.load(backbone_pt, weights_only=True), strict=False)
    assert missing == ["fc.weight", "fc.bias"] and not unexpected
    assert "selfsup.load_backbone" in (backbone_pt.parent / "load.py").read_text()


@pytest.mark.slow
def test_pretrain_a_folder_of_photos_with_broken_files_through_the_cli(tmp_path):
    photo_folder(tmp_path / "photos")
    proc = cli("pretrain", "photos", *SMALL, cwd=tmp_path)
    out = proc.stdout + proc.stderr
    skipped = out[out.index("passed over"):].splitlines()
    assert any("truncated.jpg" in line for line in skipped) and any("notes.jpg" in line for line in skipped), out
    assert "rgba.png" not in out and "gray.jpg" not in out  # converted and trained on
    assert re.search(r"step 2/2 .*ETA", out) and "random-init backbone" in out and "pretrained backbone" in out, out
    run = tmp_path / "runs/simclr-photos/version_0"
    assert f"run {run.relative_to(tmp_path)}" in out
    check_export(run / "export/backbone.pt", 32, tmp_path / "photos/china/rgba.png")
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["data"]["init_args"]["source"] == "shards:data/shards/photos"
    assert config["data"]["init_args"]["image_size"] == 32 and config["trainer"]["max_epochs"] == 1
    again = yaml.safe_load(cli("fit", "-c", str(run / "config.yaml"), "--print_config", cwd=tmp_path).stdout)
    for part in ("model", "data", "trainer"):  # `selfsup fit -c RUN/config.yaml` makes the same run
        assert again[part] == config[part], part
    assert (again["name"], again["data"]["init_args"]["batch_size"]) == ("simclr-photos", 16)
    assert again["threads"] == config["threads"] >= 1  # the cores the loader workers leave free
    assert "views 32 px, eval 32 of 37 px" in out  # the summary line's sizes


@pytest.mark.slow
def test_pretrain_in_python_reuses_the_shards_and_names_its_own_run(tmp_path):
    """SwAV on RGB photos; its one-epoch prototype freeze and a queue as long as the data are said to cover all."""
    photo_folder(tmp_path / "photos")
    cli("shards", "write", "--from", "photos", "--out", "data/shards/photos", "--val-fraction", "0.2", "--quiet",
        cwd=tmp_path)
    options = ["--data.init_args.image_size", "32", "--model.init_args.queue_length", "64",
               "--model.init_args.queue_start_epoch", "0",
               "--trainer.precision", "32-true"]  # bf16 gave a non-finite gradient in 1 of 4 runs of 16 images
    code = ("import selfsup\n"
            f"print('export:', selfsup.pretrain('photos', 'swav', name='mine', epochs=1, fit_options={options!r}))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(REPO / "ssl")})
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "written before" in out and "random-init backbone" in out and "pretrained backbone" in out, out
    assert "prototypes stay frozen for the whole run (2 steps of 2)" in out, out
    assert "queue_length 64 holds the whole training set (33 images)" in out, out
    assert "export: runs/mine/version_0/export/backbone.pt" in out
    check_export(tmp_path / "runs/mine/version_0/export/backbone.pt", 32, tmp_path / "photos/flower/gray.jpg")


def test_an_unknown_method_is_one_line_with_the_nearest(tmp_path):
    (tmp_path / "photos").mkdir()
    proc = cli("pretrain", "photos", "--method", "simclear", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no photo recipe for it; did you mean simclr?" in proc.stderr


def test_every_image_method_has_a_photo_recipe():
    assert set(photo_methods()) == set(IMAGE_METHODS)


@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_photo_recipe_parses_with_its_own_run_and_sizes(method, tmp_path):
    config = yaml.safe_load(printed_config(f"{method}/photos", tmp_path))
    assert config["trainer"]["logger"][0]["init_args"]["name"] == f"{method}-photos"
    data = config["data"]["init_args"]
    assert (data["image_size"], data["eval_crop"], data["num_workers"]) == (64, 0.875, 1)
    assert data["views"] is None  # the method's own (the paper's) views, at image_size


def test_photo_recipes_are_not_the_demo_and_name_no_mnist_steps():
    for method in IMAGE_METHODS:
        text = (REPO / f"experiments/{method}/photos.yaml").read_text()
        assert "freeze_prototypes_iters" not in text and "mnist" not in text.lower()


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory) -> Path:
    """The photo folder above as shards with a val split."""
    root = tmp_path_factory.mktemp("photo-shards")
    cli("shards", "write", "--from", str(photo_folder(root / "photos")), "--out", str(root / "shards"),
        "--val-fraction", "0.2", "--quiet", cwd=root)
    return root / "shards"


@pytest.mark.slow
@pytest.mark.parametrize("method", IMAGE_METHODS)
def test_photo_recipe_trains_on_real_photos(method, photo_shards, tmp_path):
    """Each recipe as written (its default views, a ViT built at the data's size) takes two steps on RGB photos
    and evaluates them at the view size with ImageNet's margin."""
    proc = cli("fit", "-c", f"experiments/{method}/photos.yaml", "--data.init_args.source", f"shards:{photo_shards}",
               "--data.init_args.batch_size", "8", "--data.init_args.num_workers", "0", "--trainer.max_steps", "2",
               "--trainer.limit_val_batches", "1", cwd=tmp_path)
    summary = next(line for line in proc.stdout.splitlines() if " | backbone " in line)
    assert "eval 64 of 73 px" in summary and summary.split(" | ")[2].startswith("data "), summary
    assert ("image_size=64" in summary) == (method in ("dino", "ibot", "mae", "simmim", "ijepa")), summary


@pytest.mark.slow
@pytest.mark.parametrize("method, backbone, args", [("dino", "vit_s_16", "{pool: cls}"), ("pixpro", "resnet50", "{}")])
def test_a_gpu_gets_the_papers_backbone_at_224_and_the_options_parse(method, backbone, args, photo_shards, tmp_path):
    chosen = plan(f"experiments/{method}/photos.yaml", photo_shards, "x", "gpu", None)
    options = {option: value for option, value, _ in chosen.options}
    assert (options["--model.init_args.backbone"], options["--model.init_args.backbone_args"]) == (backbone, args)
    assert options["--data.init_args.image_size"] == "224" and options["--trainer.max_epochs"] == "100"
    assert options["--data.init_args.batch_size"] == "16"  # 256 capped: at least 2 steps an epoch of 33 images
    printed = yaml.safe_load(cli(*chosen.fit_args(["--print_config"]), cwd=tmp_path).stdout)
    assert printed["model"]["init_args"]["backbone"] == backbone and printed["data"]["init_args"]["image_size"] == 224


@pytest.mark.slow
def test_a_cpu_run_aims_at_a_few_hundred_steps_and_says_what_a_gpu_would_use(photo_shards):
    chosen = plan("experiments/simclr/photos.yaml", photo_shards, "x", "cpu", None)
    options = {option: value for option, value, _ in chosen.options}
    assert options["--trainer.max_epochs"] == "100"  # 2 steps an epoch: the recipe's 100 epochs are under 300 steps
    assert "--model.init_args.backbone" not in options
    assert "on a GPU this would train resnet50 at 224 px" in chosen.notes[0]
