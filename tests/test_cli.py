"""The real `selfsup` entry point: its subcommands and options, and one clear message for each bad input (the
documented commands themselves run in tests/test_docs.py)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from clirun import REPO, TINY, selfsup


@pytest.mark.slow
def test_fit_writes_checkpoint_config_and_metrics(trained):
    run, ckpt = trained
    assert ckpt.is_file() and (run / "config.yaml").is_file()
    metrics = (run / "metrics.csv").read_text().splitlines()
    header = metrics[0].split(",")
    for name in ("train/loss_step", "train/lr", "train/images_per_s", "train/probe_top1_step", "knn/top1",
                 "val/probe_top1"):
        assert name in header, header
    assert list(run.glob("events.out.tfevents.*"))


@pytest.mark.slow
@pytest.mark.parametrize("subcommand", ["validate", "test", "predict"])
def test_evaluation_subcommands_from_a_checkpoint(trained, subcommand, tmp_path):
    run, ckpt = trained
    proc = selfsup(subcommand, "-c", str(run / "config.yaml"), "--ckpt_path", str(ckpt),
                   "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    if subcommand != "predict":
        assert "probe_top1" in proc.stdout
    else:
        written = torch.load(sorted(run.glob("eval/predict-*/features.pt"))[-1], weights_only=True)
        assert written["features"].shape == (1000, 32) and written["label"].shape == (1000,)


@pytest.mark.slow
def test_short_model_name_and_fast_dev_run(mnist5k, tmp_path):
    selfsup("fit", "--model", "SimCLR", "--model.backbone", "resnet18", "--model.backbone_args",
            "{width: 4, cifar_stem: true}", "--data.batch_size", "16", "--data.num_workers", "0",
            "--trainer.fast_dev_run", "2", cwd=tmp_path)


def test_print_config_of_the_demo(tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), "--print_config", cwd=tmp_path)
    assert "class_path: selfsup.methods.SimCLR" in proc.stdout and "source: builtin:mnist5k" in proc.stdout


def test_imagenet_recipe_parses_with_the_paper_values(tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/simclr/imagenet-resnet50.yaml"), "--print_config",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for line in ("backbone: resnet50", "batch_size: 64", "lr: 0.3", "weight_decay: 1.0e-06",
                 "temperature: 0.1", "num_nodes: 8", "devices: 8", "max_epochs: 100", "optimizer: lars"):
        assert line in proc.stdout, line


@pytest.mark.slow
def test_imagenet_recipe_builds_and_steps_on_a_stand_in(mnist5k, tmp_path):
    selfsup("fit", "-c", str(REPO / "experiments/simclr/imagenet-resnet50.yaml"),
            "--data.init_args.source", "builtin:mnist5k", "--data.init_args.batch_size", "4",
            "--data.init_args.num_workers", "0", "--data.init_args.views.init_args.size", "64",
            "--data.init_args.image_size", "64", "--data.init_args.eval_resize", "64",
            "--trainer.num_nodes", "1", "--trainer.devices", "1", "--trainer.accelerator", "cpu",
            "--trainer.strategy", "auto", "--trainer.precision", "32", "--trainer.sync_batchnorm", "false",
            "--trainer.fast_dev_run", "1", cwd=tmp_path)


def test_whole_numbers_count_batches_and_fractions_stay_fractions(tmp_path):
    proc = selfsup("fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), "--trainer.limit_val_batches", "1",
                   "--trainer.limit_train_batches", "0.5", "--print_config", cwd=tmp_path)
    assert "limit_val_batches: 1\n" in proc.stdout and "limit_train_batches: 0.5\n" in proc.stdout


def test_a_linked_value_set_in_a_config_is_refused(tmp_path):
    extra = tmp_path / "extra.yaml"
    extra.write_text("model:\n  init_args:\n    num_classes: 5\n")
    proc = selfsup("fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), "-c", str(extra), cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "model.num_classes is set from the data's classes" in proc.stderr


BAD_INPUTS = [
    (["fit", "--model", "SimCLRR"], "SimCLRR"),
    (["fit", "--model", "SimCLR", "--model.backbone", "resnet19"], "unknown backbone 'resnet19'"),
    (["fit", "-c", "no/such/config.yaml"], "no/such/config.yaml"),
    (["fit", "--model", "SimCLR", "--model.temprature", "0.1"], "temprature"),
    (["fit", "--model", "SimCLR", "--data.source", "shards:/no/such/folder"], "does not exist"),
    (["fit", "--model", "SimCLR", "--data.source", "builtin:cifar"], "unknown built-in data set 'cifar'"),
    (["fit", "--model", "SimCLR", "--data.source", "shards:."], "no manifest.json in ."),
    (["fit", "--model", "SimCLR", "--data.source", "folder:/no/such/images"], "folder /no/such/images does not"),
    (["fit", "--model", "SimCLR", "--data.source", "mnist"], "data source 'mnist' is not understood"),
    (["fit", "--model", "SimCLR", "--model.backbone", "resnet18", "--data.batch_size", "5000",
      "--data.num_workers", "0", "--trainer.fast_dev_run", "1"], "larger than the 4000 training samples"),
    (["fit", "--model", "SimCLR", "--data_health.max_bad_fraction", "2"], "max_bad_fraction must be within 0..1"),
    (["fit", "--model", "SimCLR", "--model.init_args.batch_size", "512"], "model.batch_size is set from data"),
    (["fit", "--model", "SimCLR", "--model.backbone", "resnet18", "--data.views", "selfsup.data.views.EvalView",
      "--data.views.size", "28", "--data.num_workers", "0", "--trainer.fast_dev_run", "1"],
     "SimCLR needs 'pair' views, but data.views is EvalView"),
    *[(["fit", "--model", method, "--model.backbone", "resnet18", "--data.views", "selfsup.data.views.SimCLRViews",
        "--data.views.size", "28", "--data.num_workers", "0", "--trainer.fast_dev_run", "1"],
       f"{method} needs '{kind}' views, but data.views is SimCLRViews, which makes 'pair' views; use {views}")
      for method, kind, views in (("RotNet", "rotations", "RotationViews"), ("SwAV", "multicrop", "MultiCropViews"),
                                  ("PixPro", "coord", "CoordViews"))],
    (["fit", "--model", "CVRL", "--model.backbone", "r3d_tiny", "--data.views", "selfsup.data.views.SimCLRViews",
      "--data.views.size", "28", "--data.num_workers", "0", "--trainer.fast_dev_run", "1"],
     "CVRL needs 'clips' views, but data.views is SimCLRViews, which makes 'pair' views; use ClipViews"),
    (["fit", "--model", "CVRL", "--model.backbone", "r3d_tiny", "--data.num_workers", "0", "--trainer.fast_dev_run",
      "1"], "data source 'builtin:mnist5k' holds images, but the views ClipViews are made from videos; give a video "
            "source (e.g. builtin:moving-mnist)"),
    (["fit", "--model", "SimMIM", "--model.backbone", "vit_tiny", "--data.views", "selfsup.data.views.SimCLRViews",
      "--data.views.size", "28", "--data.num_workers", "0", "--trainer.fast_dev_run", "1"],
     "SimMIM needs 'masked' views, but data.views is SimCLRViews, which makes 'pair' views; use MaskedViews"),
    (["fit", "-c", str(REPO / "experiments/simmim/mnist5k-vit-tiny.yaml"),
      "--data.init_args.views.init_args.mask_patch_size", "6"],
     "mask_patch_size 6 is not a multiple of the model's patch size 4; set mask_patch_size to a multiple of 4"),
    (["fit", "-c", str(REPO / "experiments/simmim/mnist5k-vit-tiny.yaml"), "--model.init_args.backbone_args",
      "{image_size: 28}", "--data.init_args.num_workers", "0"],
     "data.views.size 32 is not the backbone's image_size 28; set model.backbone_args.image_size: 32"),
    (["knn", "--ckpt", "no/such.ckpt", "-c", str(REPO / "experiments/eval/mnist5k.yaml")],
     "checkpoint no/such.ckpt does not exist"),
    (["export", "--ckpt", "no/such.ckpt", "--out", "b.pt"], "checkpoint no/such.ckpt does not exist"),
    (["plot", "--ckpt", "no/such.ckpt", "-c", "no/such.yaml"], "checkpoint no/such.ckpt does not exist"),
    (["fit", "--model", "LinearProbe", "--model.backbone", "resnet18", "--model.init_from", "no/such.ckpt"],
     "checkpoint no/such.ckpt does not exist"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a[1:]) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_message(args, message, tmp_path):
    proc = selfsup(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_fit_on_cpu(mnist5k, tmp_path):
    """The same config as 2 DDP ranks (gloo): both ranks stream their own shards and finish the same steps."""
    selfsup("fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), *TINY, "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "4", "--trainer.accelerator", "cpu", "--trainer.devices", "2",
            "--trainer.strategy", "ddp", "--trainer.enable_progress_bar", "false", cwd=tmp_path)
    run = next((tmp_path / "runs/simclr-mnist5k").glob("version_*"))
    ckpt = torch.load(run / "checkpoints/last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4


@pytest.mark.slow
def test_same_seed_reproduces_the_losses(trained, tmp_path):
    """A second run of the fixture's command (same seed, CPU) logs the same training losses."""
    selfsup("fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), *TINY, "--trainer.max_epochs", "1",
            "--trainer.limit_train_batches", "3", "--trainer.check_val_every_n_epoch", "1",
            "--trainer.enable_progress_bar", "false", cwd=tmp_path)

    first = losses(trained[0])
    assert first and losses(next((tmp_path / "runs/simclr-mnist5k").glob("version_*"))) == first


def test_the_installed_console_script_is_the_cli(tmp_path):
    """`make` installs the `selfsup` script; it reaches the same CLI as `python -m selfsup.cli`."""
    script = Path(sys.executable).with_name("selfsup")
    proc = subprocess.run([str(script), "fit", "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "--model" in proc.stdout and "--data" in proc.stdout


@pytest.mark.slow
def test_resume_at_an_epoch_boundary_ends_with_the_same_weights(mnist5k, tmp_path):
    """2 epochs in one go == 1 epoch, then `--ckpt_path last` to 2 (same seed, CPU, a loader worker)."""
    args = ["fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), *TINY, "--data.init_args.num_workers", "1",
            "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]",
            "--trainer.enable_progress_bar", "false"]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    selfsup(*args, "--trainer.max_epochs", "2", cwd=tmp_path / "a")
    selfsup(*args, "--trainer.max_epochs", "1", cwd=tmp_path / "b")
    selfsup(*args, "--trainer.max_epochs", "2", "--ckpt_path", "last", cwd=tmp_path / "b")
    weights = [torch.load(d / "runs/simclr-mnist5k/version_0/checkpoints/last.ckpt", weights_only=False)
               for d in (tmp_path / "a", tmp_path / "b")]
    assert [w["global_step"] for w in weights] == [6, 6]
    assert not list((tmp_path / "b/runs/simclr-mnist5k").glob("version_1"))  # resumed in its own folder
    for name, value in weights[0]["state_dict"].items():
        assert torch.equal(value, weights[1]["state_dict"][name]), name
    logged = [losses(d / "runs/simclr-mnist5k/version_0") for d in (tmp_path / "a", tmp_path / "b")]
    assert len(logged[0]) == 6 and logged[0] == logged[1]  # the resumed run kept the first run's metrics.csv


def losses(run: Path) -> list[str]:
    """The per-step training losses a run logged to metrics.csv."""
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    return [r["train/loss_step"] for r in rows if r.get("train/loss_step")]


def test_an_unwritable_output_folder_is_named_before_anything_runs(tmp_path):
    (tmp_path / "runs").write_text("a file where the runs folder would go")
    proc = selfsup("fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "cannot write run outputs to runs/simclr-mnist5k" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert (tmp_path / "runs").read_text() == "a file where the runs folder would go"



def test_a_config_saved_before_the_modules_moved_still_parses(tmp_path):
    """Runs saved before the training modules moved into selfsup.training name the old paths
    (selfsup.loggers.ResumableCSVLogger, selfsup.nonfinite.NonFiniteGuard); their config.yaml still parses."""
    current = selfsup("fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), "--print_config", cwd=tmp_path)
    config = yaml.safe_load(current.stdout.replace("selfsup.training.", "selfsup."))
    config["trainer"]["callbacks"].append({"class_path": "selfsup.nonfinite.NonFiniteGuard"})
    old = tmp_path / "config.yaml"
    old.write_text(yaml.safe_dump(config))
    proc = selfsup("fit", "-c", str(old), "--print_config", cwd=tmp_path)
    assert "ResumableCSVLogger" in proc.stdout and "NonFiniteGuard" in proc.stdout
