"""Runs that fail part-way: SIGKILL anywhere then resume, a NaN loss stopped or skipped, checkpoints intact."""

from __future__ import annotations

import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clirun import REPO, selfsup

FIT = ["-c", str(REPO / "experiments/simclr/mnist5k.yaml"), "--model.init_args.backbone_args",
        "{width: 4, cifar_stem: true}", "--data.init_args.batch_size", "32", "--data.init_args.num_workers", "1",
        "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1"]
PLUGINS = REPO / "tests/plugins"


def last_ckpt(cwd: Path) -> Path:
    return next(cwd.glob("runs/*/version_0/checkpoints/last.ckpt"))


def finite_weights(ckpt: Path) -> bool:
    state = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.slow
def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, mnist5k):
    proc = selfsup("fit", *FIT, "--model", "faulty.SimCLRNaNAt", "--model.nan_at_step", "5",
                   "--trainer.max_steps", "8", "--checkpoint.every_n_train_steps", "2", cwd=tmp_path, check=False,
                   path=(PLUGINS,), trust="faulty")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "non-finite loss at step 5" in proc.stderr and "last.ckpt" in proc.stderr
    ckpt = torch.load(last_ckpt(tmp_path), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 4 and finite_weights(last_ckpt(tmp_path))


@pytest.mark.slow
def test_nan_loss_can_skip_the_step_instead(tmp_path, mnist5k):
    selfsup("fit", *FIT, "--model", "faulty.SimCLRNaNAt", "--model.nan_at_step", "5", "--trainer.max_steps", "8",
            "--nonfinite.action", "skip", cwd=tmp_path, path=(PLUGINS,), trust="faulty")
    ckpt = torch.load(last_ckpt(tmp_path), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 8 and finite_weights(last_ckpt(tmp_path))
    metrics = next(tmp_path.glob("runs/*/version_0/metrics.csv")).read_text()
    assert "train/skipped_steps" in metrics.splitlines()[0]


def start_fit(cwd: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO / "ssl")}
    return subprocess.Popen([sys.executable, "-m", "selfsup.cli", "fit", *FIT, *extra], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)


def steps_done(cwd: Path) -> int:
    """The newest step in metrics.csv (0 before the first write)."""
    files = list(cwd.glob("runs/*/version_0/metrics.csv"))
    rows = list(csv.DictReader(files[0].open())) if files else []
    return max((int(r["step"]) for r in rows if (r.get("step") or "").isdigit()), default=0)


@pytest.mark.slow
def test_sigkill_three_times_then_resume_reaches_the_planned_steps(tmp_path, mnist5k):
    planned = ["--trainer.max_epochs", "3", "--trainer.limit_train_batches", "20", "--trainer.log_every_n_steps",
               "1", "--checkpoint.every_n_train_steps", "3"]
    rng = random.Random(0)
    resume: tuple[str, ...] = ()
    for _ in range(3):  # kills
        proc = start_fit(tmp_path, *planned, *resume)
        target = steps_done(tmp_path) + rng.randint(4, 12)
        while steps_done(tmp_path) < target and proc.poll() is None:
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        os.killpg(proc.pid, signal.SIGKILL)  # the process and its loader workers, mid-epoch, no clean-up
        proc.wait()
        resume = ("--ckpt_path", "last")
    proc = start_fit(tmp_path, *planned, *resume)
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()[-3000:]
    ckpt = torch.load(last_ckpt(tmp_path), map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 60 and ckpt["epoch"] == 2


class WritesAFile:
    """Unpickling this creates a file: what a malicious checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


@pytest.mark.parametrize("subcommand", ["fit", "validate"])
def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, mnist5k, subcommand):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "payload": WritesAFile(marker)}, evil)
    proc = selfsup(subcommand, *FIT, "--trainer.max_epochs", "1", "--ckpt_path", str(evil), cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "refused to load a checkpoint" in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and not marker.exists()
