"""`fit --run_dir` and the requeue callback without a cluster: SLURM's variables in one process, a fake scontrol."""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path

import pytest
import torch

from clirun import REPO, selfsup

TINY = ["-c", str(REPO / "experiments/simclr/mnist5k.yaml"), "--model.init_args.backbone_args",
        "{width: 4, cifar_stem: true}", "--data.init_args.batch_size", "32", "--data.init_args.num_workers", "0",
        "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]", "--trainer.enable_progress_bar", "false",
        "--trainer.log_every_n_steps", "1", "--trainer.limit_train_batches", "3"]


def test_resume_takes_the_newest_intact_of_the_requeue_and_periodic_checkpoints(tmp_path):
    from selfsup.training.checkpointing import newest_intact
    from selfsup.training.slurm import resume_candidates

    assert newest_intact(resume_candidates(tmp_path)) is None
    last = tmp_path / "simclr/version_0/checkpoints/last.ckpt"
    last.parent.mkdir(parents=True)
    epoch, hpc = last.with_name("epoch=0-step=4.ckpt"), tmp_path / "hpc_ckpt_1.ckpt"
    for path, age in ((hpc, 30), (epoch, 20), (last, 10)):
        torch.save({"state_dict": {}, "hyper_parameters": {}}, path)
        os.utime(path, (time.time() - age, time.time() - age))
    assert newest_intact(resume_candidates(tmp_path))[0] == last
    os.utime(hpc, None)
    assert newest_intact(resume_candidates(tmp_path))[0] == hpc
    hpc.write_bytes(b"")  # interrupted saves
    last.write_bytes(b"PK\x03\x04")
    assert newest_intact(resume_candidates(tmp_path))[0] == epoch


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """SLURM's variables of a one-task job 4242 and an `scontrol` that records its arguments; returns that record."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {tmp_path}/scontrol.calls\n')
    (bin_dir / "scontrol").chmod(0o755)
    slurm_vars = {"SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1", "SLURM_JOB_ID": "4242",
                  "SLURM_JOB_NAME": "pretrain", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0",
                  "SLURM_LOCALID": "0", "SLURM_NODEID": "0", "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    for key, value in slurm_vars.items():
        monkeypatch.setenv(key, value)
    return tmp_path / "scontrol.calls"


@pytest.mark.slow
def test_run_dir_continues_in_place_and_requeue_signal_saves_at_a_step_boundary(tmp_path, mnist5k, fake_slurm):
    run_dir = tmp_path / "runs/slurm/pretrain-4242"
    plugins = (REPO / "tests/plugins",)
    selfsup("fit", *TINY, "--trainer.max_steps", "6", "--run_dir", str(run_dir), "--trainer.callbacks",
            "[{class_path: signals.SignalAt, init_args: {step: 3}}]", cwd=tmp_path, path=plugins, trust="signals")
    assert step_of(run_dir / "hpc_ckpt_1.ckpt") == 4  # signalled in step 3's batch, saved after its optimizer step
    assert fake_slurm.read_text().split() == ["requeue", "4242"]
    last = run_dir / "simclr-mnist5k/version_0/checkpoints/last.ckpt"
    assert step_of(last) == 6
    # started again (config, logs and checkpoints already there): resumes from the newest, in the same folder
    proc = selfsup("fit", *TINY, "--trainer.max_steps", "9", "--run_dir", str(run_dir), cwd=tmp_path)
    assert f"resuming from {last}" in proc.stderr
    assert step_of(last) == 9 and not (run_dir / "simclr-mnist5k/version_1").exists()
    steps = [row["step"] for row in csv.DictReader((last.parents[1] / "metrics.csv").open())]
    assert "8" in steps and "0" in steps  # one metrics.csv, appended


@pytest.mark.slow
def test_sigterm_checkpoints_requeues_and_exits_non_zero(tmp_path, mnist5k, fake_slurm):
    run_dir = tmp_path / "runs/slurm/pretrain-4242"
    proc = selfsup("fit", *TINY, "--trainer.max_steps", "6", "--run_dir", str(run_dir), "--trainer.callbacks",
                   "[{class_path: signals.SignalAt, init_args: {step: 3, signum: 15}}]", cwd=tmp_path,
                   path=(REPO / "tests/plugins",), trust="signals", check=False)
    last = run_dir / "simclr-mnist5k/version_0/checkpoints/last.ckpt"
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert f"selfsup: stopped by SIGTERM at step 4; saved {last}" in proc.stderr and "Traceback" not in proc.stderr
    assert step_of(last) == 4 and fake_slurm.read_text().split() == ["requeue", "4242"]
    proc = selfsup("fit", *TINY, "--trainer.max_steps", "6", "--run_dir", str(run_dir), cwd=tmp_path)
    assert f"resuming from {last}" in proc.stderr and step_of(last) == 6
