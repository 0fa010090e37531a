"""The CLI as a daily tool, through the real entry point: evaluations leave a run as it was, `--ckpt_path last`,
console lines, help, your own photos end to end, probes that read their backbone, one-line errors, exports
that say how to feed them, recipes from any folder."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from clirun import REPO, TINY, selfsup

DEMO = str(REPO / "experiments/simclr/mnist5k.yaml")
QUICK = [*TINY, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3", "--trainer.limit_val_batches", "2",
         "--trainer.callbacks", "[]"]


def snapshot(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` (relative path -> digest)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    """A copy of the session's tiny SimCLR run at tmp_path/runs/simclr-mnist5k/version_0, without the
    evaluations other tests wrote into it (its eval/ folder)."""
    run = tmp_path / "runs/simclr-mnist5k/version_0"
    shutil.copytree(trained[0], run, ignore=shutil.ignore_patterns("eval"))
    return run


# 1. evaluating a run never damages it -------------------------------------------------------------------------
@pytest.mark.slow
def test_validate_and_predict_write_beside_the_run_and_its_config_still_works(run_copy, tmp_path):
    before = snapshot(run_copy)
    config, ckpt = str(run_copy / "config.yaml"), str(run_copy / "checkpoints/last.ckpt")
    selfsup("validate", "-c", config, "--ckpt_path", ckpt, cwd=tmp_path)
    selfsup("predict", "-c", config, "--ckpt_path", ckpt, cwd=tmp_path)  # main: does not accept option 'verbose'
    selfsup("fit", "-c", config, "--print_config", cwd=tmp_path)  # main: fails on return_predictions
    after = snapshot(run_copy)
    assert {k: v for k, v in after.items() if not k.startswith("eval/")} == before
    stages = sorted(p.name.split("-")[0] for p in (run_copy / "eval").iterdir())
    assert stages == ["predict", "validate"]
    predicted = next((run_copy / "eval").glob("predict-*"))
    assert (predicted / "features.pt").is_file()
    saved = yaml.safe_load((predicted / "config.yaml").read_text())
    assert not {"verbose", "return_predictions", "ckpt_path"} & set(saved)  # every subcommand takes it


@pytest.mark.slow
def test_the_readme_sequence_on_one_run_leaves_its_files_as_they_were(mnist5k, tmp_path):
    """fit -> validate -> test -> predict -> knn -> fit --ckpt_path last, as the README runs them."""
    selfsup("fit", "-c", "experiments/simclr/mnist5k.yaml", *QUICK, cwd=tmp_path)
    run = tmp_path / "runs/simclr-mnist5k/version_0"
    config, ckpt = str(run / "config.yaml"), run / "checkpoints/last.ckpt"
    before = snapshot(run)
    for stage in ("validate", "test", "predict"):
        selfsup(stage, "-c", config, "--ckpt_path", str(ckpt), cwd=tmp_path)
    knn = selfsup("knn", "--ckpt", str(ckpt), "-c", config, "--k", "20", cwd=tmp_path)
    assert {k: v for k, v in snapshot(run).items() if not k.startswith("eval/")} == before
    assert sorted(p.name.split("-")[0] for p in (run / "eval").iterdir()) == ["knn", "predict", "test", "validate"]
    assert f"written: {run}/eval/knn-" in knn.stdout
    metrics = (run / "metrics.csv").read_text()
    selfsup("fit", "-c", config, "--ckpt_path", "last", "--trainer.max_epochs", "2", cwd=tmp_path)
    assert step_of(ckpt) == 6 and not (run.parent / "version_1").exists()
    assert (run / "metrics.csv").read_text().startswith(metrics)  # continued in place, nothing lost


# 2. --ckpt_path last finds the checkpoint or says why not -----------------------------------------------------
def test_ckpt_path_last_without_a_checkpoint_is_refused_naming_where_it_looked(mnist5k, tmp_path):
    (tmp_path / "runs/simclr-mnist5k/version_0").mkdir(parents=True)  # left by a start that failed
    proc = selfsup("fit", "-c", DEMO, *TINY, "--trainer.fast_dev_run", "1", "--ckpt_path", "last", cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "--ckpt_path last: no last.ckpt in runs/simclr-mnist5k;" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_ckpt_path_last_takes_the_newest_last_ckpt_across_versions(run_copy, tmp_path):
    (run_copy.parent / "version_1").mkdir()  # a newer, empty version
    proc = selfsup("fit", "-c", DEMO, *QUICK, "--trainer.max_epochs", "2", "--ckpt_path", "last", cwd=tmp_path)
    assert f"resuming from {run_copy.relative_to(tmp_path)}/checkpoints/last.ckpt" in proc.stderr
    assert step_of(run_copy / "checkpoints/last.ckpt") == 6
    assert not list((run_copy.parent / "version_1").iterdir()) and not (run_copy.parent / "version_2").exists()


# 3 and 5. console lines a person reads; --name for every logger and the checkpoints -----------------------------
@pytest.fixture(scope="module")
def named_fit(tmp_path_factory, mnist5k) -> tuple[Path, subprocess.CompletedProcess]:
    cwd = tmp_path_factory.mktemp("named")
    proc = selfsup("fit", "-c", DEMO, *TINY, "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4",
                   "--trainer.log_every_n_steps", "2", "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]",
                   "--name", "my-digits", "--threads", "1", cwd=cwd)
    return cwd, proc


@pytest.mark.slow
def test_fit_prints_its_folder_a_summary_and_a_line_every_n_steps_without_bar_fragments(named_fit):
    _, proc = named_fit
    out = proc.stdout.splitlines()
    assert out[0] == "run folder: runs/my-digits/version_0"
    assert out[1].startswith("SimCLR | backbone resnet18(cifar_stem=True, width=4), 0.05M params | "
                             "data builtin:mnist5k (views 28 px, eval 28 of 28 px) | 4 steps, 1 epoch(s), "
                             "batch 32 x 1 device(s), 1 CPU thread(s)")
    steps = [line for line in out if line.startswith("epoch 0  step ")]
    assert [line.split()[3] for line in steps] == ["2/4", "4/4"]
    assert re.fullmatch(r"epoch 0  step 4/4  loss \d+\.\d{4}  lr [\d.e-]+  \d+ images/s  data_wait \d+%  "
                        r"ETA 0:00:00", steps[-1]), steps[-1]
    assert out[-1] == "done: run folder runs/my-digits/version_0, checkpoint " \
                      "runs/my-digits/version_0/checkpoints/last.ckpt"
    assert "\r" not in proc.stdout + proc.stderr and "it/s]" not in proc.stdout + proc.stderr  # no progress bar
    assert "args parameter" not in proc.stderr  # Lightning's warning about selfsup's rewritten command line


@pytest.mark.slow
def test_name_names_every_logger_and_the_checkpoints(named_fit):
    cwd, _ = named_fit
    assert [p.name for p in (cwd / "runs").iterdir()] == ["my-digits"]
    run = cwd / "runs/my-digits/version_0"
    assert (run / "metrics.csv").is_file() and list(run.glob("events.out.tfevents.*"))
    assert (run / "checkpoints/last.ckpt").is_file()


# 4. help lists every subcommand, answers at once; --version --------------------------------------------------
def test_help_lists_every_subcommand_with_one_line(tmp_path):
    out = selfsup("--help", cwd=tmp_path, fresh=True).stdout
    for command in ("fit", "validate", "test", "predict", "knn", "plot", "export", "reconstruct", "shards", "bench"):
        assert re.search(rf"^  {command} +\S", out, re.MULTILINE), command
    assert "bench data" in selfsup("bench", "--help", cwd=tmp_path, fresh=True).stdout
    assert "bench knn" in selfsup("bench", "--help", cwd=tmp_path, fresh=True).stdout
    version = selfsup("--version", cwd=tmp_path, fresh=True).stdout
    assert re.fullmatch(r"selfsup \d+\.\d+\.\d+ \(torch .+, lightning .+\)\n", version)


def without_torch(args: list[str], cwd: Path) -> tuple[float, str]:
    """Run the command ``args`` in a new interpreter; its seconds and stderr, asserting it never loaded torch or
    Lightning."""
    code = ("import sys, time; from selfsup.console import main; start = time.perf_counter()\n"
            f"try: main({args!r})\nexcept SystemExit: pass\n"
            "print('SECONDS', time.perf_counter() - start, 'torch' in sys.modules, 'lightning' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=60,
                          env={"PYTHONPATH": str(REPO / "ssl")})
    seconds, torch_loaded, lightning_loaded = proc.stdout.split("SECONDS ")[1].split()
    assert (torch_loaded, lightning_loaded) == ("False", "False"), proc.stderr
    return float(seconds), proc.stderr


@pytest.mark.parametrize("command", [[], ["knn"], ["export"], ["plot"], ["reconstruct"], ["bench"], ["bench", "knn"],
                                     ["shards"], ["shards", "write"], ["shards", "inspect"]])
def test_help_of_the_tools_answers_without_loading_torch(command, tmp_path):
    assert without_torch([*command, "--help"], tmp_path)[0] < 1.5


@pytest.mark.parametrize("args, message", [
    (["knn", "--ckpt", "no/such.ckpt", "-c", "data.yaml"], "checkpoint no/such.ckpt does not exist"),
    (["knn", "--ckpt", "no/such.ckpt", "-c", "data.yaml", "--k", "0"], "--k must be at least 1, got 0"),
    (["export", "--ckpt", "no/such.ckpt", "--out", "b.pt"], "checkpoint no/such.ckpt does not exist"),
    (["plot", "--ckpt", ".", "-c", "data.yaml"], ". is a folder; give a checkpoint file"),
    (["reconstruct", "--ckpt", "https://example.com/a.ckpt", "-c", "data.yaml"], "refused to load checkpoint https:/"),
    (["fit", "-c", "no/such.yaml"], "config no/such.yaml does not exist"),
    (["validate", "--config=no/such.yml"], "config no/such.yml does not exist"),
], ids=lambda v: " ".join(v[:2]) if isinstance(v, list) else None)
def test_a_wrong_path_is_refused_at_once_without_loading_torch(args, message, tmp_path):
    """What a typo gets wrong is said before torch and Lightning load (seconds of imports)."""
    seconds, stderr = without_torch(args, tmp_path)
    assert f"selfsup: error: {message}" in stderr and len(stderr.splitlines()) == 1, stderr
    assert seconds < 1.5


# 5. your own photos ----------------------------------------------------------------------------------------------
def write_photos(root: Path, count: int = 100) -> None:
    """``count`` photos in two class folders (crops of sklearn's china.jpg and flower.jpg, JPEG and PNG, several
    sizes), one corrupt JPEG and one text file."""
    from PIL import Image
    from sklearn.datasets import load_sample_image

    for c, name in enumerate(("china.jpg", "flower.jpg")):
        image = load_sample_image(name)
        (root / name[:-4]).mkdir(parents=True)
        for i in range(count // 2):
            side = 40 + (i * 7) % 60
            top, left = (i * 37) % (image.shape[0] - side), (i * 53 + c) % (image.shape[1] - side)
            crop = Image.fromarray(image[top:top + side, left:left + side + i % 9])
            crop.save(root / name[:-4] / (f"{i:03d}.png" if i % 3 == 0 else f"{i:03d}.jpg"))
    (root / "china/corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"not really a jpeg" * 20)
    (root / "notes.txt").write_text("holiday 2024\n")


def test_image_size_message_says_why_and_suggests_a_value(tmp_path):
    write_photos(tmp_path / "photos", count=4)
    proc = selfsup("fit", "--model", "SimCLR", "--model.backbone", "resnet18", "--data.source",
                   f"folder:{tmp_path / 'photos'}", "--data.num_workers", "0", "--trainer.fast_dev_run", "1",
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "data.image_size must be set" in proc.stderr and "evaluation images" in proc.stderr
    assert "data.image_size: 224" in proc.stderr


@pytest.mark.slow
def test_a_folder_of_photos_end_to_end_with_the_template_recipe(tmp_path):
    """photos -> shards write -> the template recipe -> fit -> knn -> export -> load_backbone, options given only
    for paths and to make it small."""
    write_photos(tmp_path / "photos")
    shards = tmp_path / "photos-shards"
    written = selfsup("shards", "write", "--from", str(tmp_path / "photos"), "--out", str(shards),
                      "--val-fraction", "0.2", "--quiet", cwd=tmp_path)
    small = ["--model.init_args.backbone_args", "{width: 4, cifar_stem: true}", "--data.init_args.batch_size", "16",
             "--data.init_args.num_workers", "0", "--data.init_args.image_size", "32", "--trainer.max_epochs", "2"]
    fit = selfsup("fit", "-c", "experiments/simclr/photos.yaml", "--data.init_args.source", f"shards:{shards}",
                  *small, cwd=tmp_path)
    run = tmp_path / "runs/simclr-photos/version_0"
    assert f"run folder: {run.relative_to(tmp_path)}" in fit.stdout and "kNN on val" in fit.stderr + fit.stdout
    ckpt = run / "checkpoints/last.ckpt"
    knn = selfsup("knn", "--ckpt", str(ckpt), "-c", str(run / "config.yaml"), cwd=tmp_path)
    assert re.search(r"^ +10 +[01]\.\d{4}", knn.stdout, re.MULTILINE), knn.stdout
    selfsup("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "backbone.pt"), cwd=tmp_path)
    described = json.loads((tmp_path / "backbone.json").read_text())
    assert described["eval_transform"] == {"media": "image", "channels": 3, "size": 32, "resize": 37, "mean": None,
                                           "std": None}
    code = ("import selfsup, torch; from PIL import Image\n"
            "backbone, transform = selfsup.load_backbone('backbone.pt')\n"
            "x = transform(Image.open('photos/flower/001.jpg'))\n"
            "print(tuple(x.shape), tuple(backbone(x[None]).shape))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={"PYTHONPATH": str(REPO / "ssl")})
    assert proc.stdout.strip() == "(3, 32, 32) (1, 32)", proc.stderr[-2000:]
    # with the data branch's shard checks: the corrupt JPEG and the text file are skipped and listed
    assert "corrupt.jpg" in written.stdout and "notes.txt" in written.stdout, written.stdout


# 6 and 7. probes read the backbone from the checkpoint and always print their result -----------------------------
@pytest.mark.slow
def test_linear_probe_reads_the_backbone_from_the_checkpoint_and_prints_its_result(trained, tmp_path):
    _, ckpt = trained
    proc = selfsup("fit", "-c", str(REPO / "experiments/eval/linear-mnist5k.yaml"), "--model.init_from", str(ckpt),
                   "--data.init_args.num_workers", "0", "--trainer.max_epochs", "2", cwd=tmp_path)
    line = next(x for x in proc.stdout.splitlines() if x.startswith("LinearProbe on val: "))
    assert 0.1 < float(line.split("top1 ")[1].split()[0]) <= 1.0
    saved = torch.load(next(tmp_path.glob("runs/linear-mnist5k/version_0/checkpoints/last.ckpt")), weights_only=True)
    assert saved["hyper_parameters"]["backbone_args"] == {"width": 4, "cifar_stem": True}


def test_knn_monitor_says_once_why_it_cannot_run(tmp_path):
    write_photos(tmp_path / "photos", count=16)
    (tmp_path / "photos/china/corrupt.jpg").unlink()
    proc = selfsup("fit", "-c", DEMO, *TINY, "--data.init_args.source", f"folder:{tmp_path / 'photos'}",
                   "--data.init_args.views.init_args.size", "16", "--data.init_args.batch_size", "8",
                   "--trainer.max_steps", "1", "--trainer.limit_val_batches", "0", cwd=tmp_path)
    said = [x for x in proc.stderr.splitlines() if "KNNMonitor does nothing in this run: data source" in x]
    assert len(said) == 1 and "has no val split; write one (selfsup shards write --val-fraction 0.1)" in said[0]


# 8. one line and exit 2 instead of tracebacks ------------------------------------------------------------------
BAD = [
    (["fit", "--model", "SimCLR", "--model.backbone", "resnet18", "--trainer.accelerator", "gpu",
      "--trainer.fast_dev_run", "1"], "no CUDA GPU is visible here"),
    (["knn", "--ckpt", "no/such.ckpt", "-c", str(REPO / "experiments/eval/mnist5k.yaml"), "--device", "cuda"],
     "--device cuda: no CUDA GPU is available here"),
    (["fit", "--model", "CVRL", "--model.backbone", "resnet18", "--data.num_workers", "0", "--trainer.fast_dev_run",
      "1"], "CVRL needs a 3-D (video) backbone, but model.backbone 'resnet18' reads single images"),
    (["export", "--ckpt", ".", "--out", "b.pt"], ". is a folder; give a checkpoint file written by selfsup"),
]


@pytest.mark.skipif(torch.cuda.is_available(), reason="the GPU cases need a machine without one")
@pytest.mark.parametrize("args, message", BAD, ids=[" ".join(a[:3]) for a, _ in BAD])
def test_bad_input_is_one_line_and_exit_2(args, message, mnist5k, tmp_path):
    proc = selfsup(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert message in proc.stderr, proc.stderr[-2000:]


@pytest.mark.slow
def test_knn_of_an_image_checkpoint_on_video_data_is_refused(trained, tmp_path, small_data):
    proc = selfsup("knn", "--ckpt", str(trained[1]), "-c", str(REPO / "experiments/eval/moving-mnist.yaml"),
                   cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "holds an image backbone" in proc.stderr and "holds videos" in proc.stderr


# 9. the export says how to feed the backbone ---------------------------------------------------------------------
@pytest.mark.slow
def test_load_backbone_returns_the_module_and_its_evaluation_transform(trained, tmp_path):
    selfsup("export", "--ckpt", str(trained[1]), "--out", str(tmp_path / "backbone.pt"), cwd=tmp_path)
    from PIL import Image

    import selfsup as package

    backbone, transform = package.load_backbone(tmp_path / "backbone.pt")
    x = transform(Image.new("RGB", (40, 30), (200, 10, 10)))
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert backbone(x[None]).shape == (1, 32) and not backbone.training


# 10. recipes ship with the package ---------------------------------------------------------------------------
def test_recipes_are_found_from_any_folder(tmp_path):
    proc = selfsup("fit", "-c", "experiments/simclr/mnist5k.yaml", "--print_config", cwd=tmp_path)
    assert "class_path: selfsup.methods.SimCLR" in proc.stdout


@pytest.mark.slow
def test_bench_runs_outside_the_repository(mnist5k, tmp_path):
    start = time.perf_counter()
    proc = selfsup("bench", "--methods", "SimCLR", "--batch-size", "8", "--repeats", "1", "--warmup", "1",
                   "--out", str(tmp_path / "b.json"), cwd=tmp_path)
    assert "SimCLR" in proc.stdout and time.perf_counter() - start < 300
