"""A user's mistakes through the real `selfsup` command: each answered in one line with the fix or the nearest name,
exit code 2, no traceback and no run folder left behind; the option names the CLI checks before torch loads are
those LightningCLI takes; the console of a run is selfsup's own lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clirun import REPO, TINY, selfsup
from selfsup.data.manifest import Manifest
from selfsup.data.shards import encode_png, write_shard_set

SIMCLR, SWAV = str(REPO / "experiments/simclr/mnist5k.yaml"), str(REPO / "experiments/swav/mnist5k.yaml")
DINO_VIT = str(REPO / "experiments/dino/mnist5k-vit-tiny.yaml")
FAST = ["--data.init_args.num_workers", "0", "--trainer.fast_dev_run", "1"]


def shard_set(root: Path, channels: int = 1, splits: dict[str, int] | None = None) -> Path:
    """A labelled shard set of 10x10 PNGs (one shard per split; default: 32 training samples and no val)."""
    def samples(count: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        for i in range(count):
            image = torch.randint(0, 256, (channels, 10, 10), dtype=torch.uint8, generator=gen)
            yield {"__key__": f"s{seed}-{i:04d}", "png": encode_png(image), "cls": str(i % 2).encode()}

    counts = splits or {"train": 32}
    manifest = Manifest(name=root.name, channels=channels, classes=["a", "b"])
    write_shard_set(root, manifest, {split: samples(n, i) for i, (split, n) in enumerate(counts.items())},
                    progress=False, maxcount=max(counts.values()))
    return root


MISTAKES = [  # (id, command line, what the one line says); {noval}, {rgb}, {ckpt}, {typo}: filled in by the test
    ("option typo", ["fit", "-c", SIMCLR, "--model.init_args.temprature", "0.1"],
     "SimCLR has no option 'temprature' (did you mean temperature?)"),
    ("data option typo", ["fit", "-c", SIMCLR, "--data.init_args.batchsize", "64"],
     "SSLDataModule has no option 'batchsize' (did you mean batch_size?)"),
    ("method typo", ["fit", "--model", "SimClr"], "unknown method 'SimClr' (did you mean SimCLR?)"),
    ("backbone typo", ["fit", "-c", SIMCLR, "--model.init_args.backbone", "resnet51", *FAST],
     "unknown backbone 'resnet51' (nearest: resnet50"),
    ("views option of another recipe", ["fit", "-c", SWAV, "--data.init_args.views.init_args.size", "32"],
     "MultiCropViews has no option 'size' (did you mean sizes?)"),
    ("ResNet width on a ViT", ["fit", "-c", DINO_VIT, "--model.init_args.backbone_args", "{{width: 64}}", *FAST],
     "backbone 'vit_tiny' takes no 'width' (did you mean hidden_dim?)"),
    ("abbreviated trainer option", ["fit", "-c", SIMCLR, "--trainer.max_epoch", "1"],
     "Trainer has no option 'max_epoch' (did you mean max_epochs"),
    ("recipe typo", ["fit", "-c", "experiments/simclr/mnsit5k.yaml"],
     "does not exist (did you mean experiments/simclr/mnist5k.yaml"),
    ("option typo in a config file", ["fit", "-c", SIMCLR, "-c", "{typo}"],
     "Option 'temprature' is not accepted (did you mean temperature?)"),
    ("command typo", ["fitt", "-c", SIMCLR], "unknown command 'fitt' (did you mean fit?)"),
    ("knn option typo", ["knn", "--ckpt", "{ckpt}", "--temp", "0.1"], "(did you mean --temperature?)"),
    ("knn data option typo", ["knn", "--ckpt", "{ckpt}", "--data.source", "shards:{noval}", "--data.imagesize", "10"],
     "SSLDataModule has no option 'imagesize' (did you mean image_size"),
    ("knn without a val split", ["knn", "--ckpt", "{ckpt}", "--data.source", "shards:{noval}", "--data.image_size",
                                 "10"], "has no 'val' split (it has: train); hold one out of train when writing the "
                                        "shards: selfsup shards write --from IMAGES --out OUT --val-fraction 0.1"),
    ("MNIST recipe on RGB data (was a worker traceback)", ["fit", "-c", SWAV, "--data.init_args.source",
                                                           "shards:{rgb}", "--data.init_args.image_size", "10", *FAST],
     "data.views MultiCropViews normalise with 1 mean(s) [0.1307], but data source 'shards:"),
]


@pytest.mark.parametrize("args, says", [m[1:] for m in MISTAKES], ids=[m[0] for m in MISTAKES])
def test_a_mistake_is_one_line_with_the_fix_or_the_nearest_name(args, says, tmp_path):
    values = {"noval": shard_set(tmp_path / "noval"), "rgb": shard_set(tmp_path / "rgb", channels=3),
              "ckpt": tmp_path / "any.ckpt", "typo": tmp_path / "typo.yaml"}
    values["ckpt"].write_bytes(b"")  # knn refuses the mistakes before it reads the checkpoint
    values["typo"].write_text("model:\n  class_path: selfsup.methods.SimCLR\n  init_args:\n    temprature: 0.1\n")
    proc = selfsup(*(a.format(**values) for a in args), cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("selfsup: error: "), proc.stderr[-3000:]
    assert says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert not (tmp_path / "runs").exists()  # a failed start leaves no runs/NAME/version_N


@pytest.mark.slow
def test_too_few_shards_for_the_ranks_names_maxcount(tmp_path):
    proc = selfsup("fit", "-c", SIMCLR, *TINY, "--data.init_args.source", f"shards:{shard_set(tmp_path / 'one')}",
                   "--data.init_args.image_size", "10", "--data.init_args.batch_size", "4", "--trainer.devices", "2",
                   "--trainer.accelerator", "cpu", "--trainer.strategy", "ddp", "--trainer.fast_dev_run", "1",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "1 training shard(s) cannot feed 2 ranks" in proc.stderr and "--maxcount 16" in proc.stderr
    assert not list(tmp_path.glob("runs/*/version_*"))


@pytest.mark.slow
def test_a_vit_trains_on_images_of_another_size_than_its_image_size(mnist5k, tmp_path):
    """vit_tiny is built for 28 px; 32 px views train (the position table is resized), once a traceback."""
    selfsup("fit", "-c", DINO_VIT, "--data.init_args.views.init_args.global_size", "32",
            "--data.init_args.views.init_args.local_size", "16", "--data.init_args.image_size", "32",
            "--data.init_args.batch_size", "8", *FAST, cwd=tmp_path)


@pytest.mark.slow
def test_knn_and_plot_take_data_options_and_plot_fewer_than_50_val_images(trained, tmp_path):
    """No YAML file for other data: --data.* as fit takes them; 20 val images are fewer than t-SNE's 50 PCA
    components (once sklearn's traceback)."""
    _, ckpt = trained
    data = ["--data.source", f"shards:{shard_set(tmp_path / 'small', splits={'train': 40, 'val': 20})}",
            "--data.image_size", "10", "--device", "cpu"]
    knn = selfsup("knn", "--ckpt", str(ckpt), *data, "--k", "5", "--out", "knn.json", cwd=tmp_path)
    assert "kNN of 20 val queries against 40 train samples" in knn.stdout
    plot = selfsup("plot", "--ckpt", str(ckpt), *data, "--out", "small.png", cwd=tmp_path)
    assert "written:" in plot.stdout and (tmp_path / "small.png").stat().st_size > 0


def test_an_option_typo_is_refused_before_torch_loads(tmp_path):
    """The check that answers `--model.init_args.temprature` reads the classes' source, imports nothing heavy."""
    code = ("import sys\nfrom selfsup.console import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit as stop:\n"
            "    print(stop.code, 'torch' in sys.modules, 'lightning' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, "fit", "-c", SIMCLR, "--model.init_args.temprature", "0.1"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(REPO / "ssl"), "PATH": "/usr/bin:/bin"})
    assert proc.stdout.split() == ["2", "False", "False"], proc.stdout + proc.stderr[-2000:]
    assert "did you mean temperature?" in proc.stderr


def test_shards_write_draws_no_progress_fragments_into_a_log(tmp_path):
    (tmp_path / "photos/a").mkdir(parents=True)
    for i in range(3):
        (tmp_path / f"photos/a/{i}.png").write_bytes(encode_png(torch.full((3, 8, 8), i, dtype=torch.uint8)))
    written = selfsup("shards", "write", "--from", "photos", "--out", "shards", cwd=tmp_path)
    inspected = selfsup("shards", "inspect", "shards", cwd=tmp_path)
    assert "\r" not in written.stderr + written.stdout + inspected.stderr + inspected.stdout
    assert "train: 3 samples" in written.stdout + written.stderr


@pytest.mark.slow
def test_the_log_of_a_run_is_selfsups_own_lines(mnist5k, tmp_path):
    """Not a terminal: the run folder and the summary, then progress; nothing from Lightning (tips, devices,
    warnings with library paths, the model table) unless --verbose."""
    args = ["fit", "-c", SIMCLR, *TINY, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.limit_val_batches", "2", "--trainer.callbacks", "[]"]
    quiet = selfsup(*args, cwd=tmp_path)
    lines = (quiet.stdout + quiet.stderr).splitlines()
    assert lines[0] == "run folder: runs/simclr-mnist5k/version_0" and lines[1].startswith("SimCLR | backbone")
    assert lines[2].startswith("epoch 0  step 1/2"), lines[:5]
    for noise in ("Tip", "site-packages", "Seed set", "GPU available", "Total params", "`Trainer.fit` stopped"):
        assert noise not in quiet.stdout + quiet.stderr
    verbose = selfsup(*args, "--verbose", cwd=tmp_path)
    assert "Total params" in verbose.stdout + verbose.stderr and "GPU available" in verbose.stdout + verbose.stderr
