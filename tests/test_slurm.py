"""The SLURM templates on a real one-node cluster (slurm/local-cluster.sh; CI starts it): DDP over srun tasks,
preemption by the requeue signal, an array sweep and its table, a job killed without a signal resumed."""

from __future__ import annotations

import csv
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from clirun import REPO

TINY = ["--model.init_args.backbone_args", "{width: 4, cifar_stem: true}", "--data.init_args.batch_size", "32",
        "--data.init_args.num_workers", "0", "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]",
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1"]
CONFIG = str(REPO / "experiments/simclr/mnist5k.yaml")
SLURM = REPO / "slurm"


def cluster_problem() -> str | None:
    """Why the SLURM tests cannot run here (None: a cluster answers with an idle node)."""
    if shutil.which("sbatch") is None:
        return "no SLURM here (sbatch not found); start a local cluster with slurm/local-cluster.sh start"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True, text=True, timeout=20).stdout
    except (subprocess.TimeoutExpired, OSError) as err:
        return f"SLURM does not answer ({err}); slurm/local-cluster.sh start"
    if not re.search(r"^(idle|mix|alloc)", states, re.M):
        return f"no SLURM node is up (sinfo: {states.strip() or 'nothing'}); slurm/local-cluster.sh start"
    return None


_PROBLEM = cluster_problem()
pytestmark = [pytest.mark.slurm, pytest.mark.slow, pytest.mark.skipif(_PROBLEM is not None, reason=str(_PROBLEM))]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "ssl"), "SELFSUP": f"{sys.executable} -m selfsup.cli",
            "OMP_NUM_THREADS": "1", **extra}


def sbatch(cwd: Path, *args: str, **extra: str) -> str:
    proc = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=env(**extra), capture_output=True,
                          text=True, timeout=60, check=True)
    return proc.stdout.strip().split(";")[0]


def job_info(job: str) -> dict[str, str]:
    """``scontrol show job`` as a dict (for an array: its first task's line); {} once SLURM forgot the job."""
    out = subprocess.run(["scontrol", "-o", "show", "job", job], capture_output=True, text=True).stdout
    line = out.splitlines()[0] if out.strip() else ""
    return dict(re.findall(r"(\w+)=(\S*)", line))


def wait_done(job: str, timeout: float = 300) -> None:
    """Until no task of ``job`` is pending, running or being requeued."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        states = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout
        if not states.strip():
            return
        time.sleep(1)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job} still queued or running after {timeout}s")


def steps_logged(run_dir: Path) -> list[int]:
    rows = [r for f in run_dir.glob("*/version_*/metrics.csv") for r in csv.DictReader(f.open())]
    return [int(r["step"]) for r in rows if (r.get("step") or "").isdigit() and r.get("train/loss_step")]


def wait_steps(run_dir: Path, job: str, at_least: int, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while max(steps_logged(run_dir), default=-1) < at_least:
        assert time.time() < deadline and job_info(job).get("JobState") in ("PENDING", "RUNNING"), job_info(job)
        time.sleep(0.3)


def global_step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


def pretrain(cwd: Path, *overrides: str, tasks: int = 2, **extra: str) -> str:
    return sbatch(cwd, f"--ntasks-per-node={tasks}", str(SLURM / "pretrain.sbatch"), CONFIG, *TINY, *overrides,
                  **extra)


def test_pretrain_runs_as_two_ddp_ranks(tmp_path, mnist5k):
    # --verbose: Lightning's lines, which name each rank's place in the process group, are hidden without it
    job = pretrain(tmp_path, "--trainer.max_steps", "6", "--trainer.limit_train_batches", "3", "--verbose")
    wait_done(job)
    out = (tmp_path / f"pretrain-{job}.out").read_text()
    assert job_info(job)["JobState"] == "COMPLETED", out[-3000:]
    assert "GLOBAL_RANK: 0, MEMBER: 1/2" in out and "GLOBAL_RANK: 1, MEMBER: 2/2" in out
    run_dir = tmp_path / f"runs/slurm/pretrain-{job}"
    assert global_step(run_dir / "simclr-mnist5k/version_0/checkpoints/last.ckpt") == 6


def test_usr1_checkpoints_requeues_and_resumes_at_exactly_the_planned_steps(tmp_path, mnist5k):
    planned = 40
    job = pretrain(tmp_path, "--trainer.max_steps", str(planned), "--trainer.limit_train_batches", "10",
                   "--checkpoint.every_n_train_steps", "1000")  # no last.ckpt before the end: hpc is the only one
    run_dir = tmp_path / f"runs/slurm/pretrain-{job}"
    wait_steps(run_dir, job, 8)
    # what --signal=USR1@T (no B:) does: the signal goes to every task of the job's steps, not the batch shell
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    wait_done(job, timeout=400)
    out = (tmp_path / f"pretrain-{job}.out").read_text()
    info = job_info(job)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "1", (info, out[-3000:])
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    saved_at = global_step(hpc)
    assert 8 <= saved_at < planned
    # the requeue's own SIGTERM may save last.ckpt a few steps after the requeue checkpoint: the restarted job
    # continues from the newer of the two
    last = run_dir / "simclr-mnist5k/version_0/checkpoints/last.ckpt"
    assert any(f"resuming from {p.relative_to(tmp_path)}" in out for p in (hpc, last)), out[-3000:]
    assert global_step(last) == planned
    steps = steps_logged(run_dir)
    restarts = [steps[i] for i in range(1, len(steps)) if steps[i] <= steps[i - 1]]
    assert len(restarts) <= 1 and all(saved_at <= r < planned for r in restarts), steps  # one resume, no step lost
    assert sorted(set(steps)) == list(range(planned)), steps
    job_log = (run_dir / "job.log").read_text()
    assert f"job {job} start 0" in job_log and f"job {job} start 1" in job_log


def test_probe_array_runs_every_task_and_the_collector_prints_one_table(tmp_path, mnist5k):
    """The real linear probe (experiments/eval/linear-mnist5k.yaml) at three learning rates over one checkpoint."""
    first = pretrain(tmp_path, "--trainer.max_steps", "2", "--trainer.limit_train_batches", "2", tasks=1)
    wait_done(first)
    ckpt = tmp_path / f"runs/slurm/pretrain-{first}/simclr-mnist5k/version_0/checkpoints/last.ckpt"
    assert ckpt.is_file(), (tmp_path / f"pretrain-{first}.out").read_text()[-3000:]
    job = sbatch(tmp_path, "--array=0-2", str(SLURM / "linear-probe-array.sbatch"), str(ckpt),
                 "--model.init_args.backbone_args", "{width: 4, cifar_stem: true}", "--trainer.max_epochs", "4",
                 "--trainer.check_val_every_n_epoch", "4", "--data.init_args.num_workers", "0",
                 PROBE_LRS="0.0001 0.1 10", PROBE_CONFIG=str(REPO / "experiments/eval/linear-mnist5k.yaml"))
    wait_done(job)
    table = subprocess.run([sys.executable, str(SLURM / "collect.py"), str(tmp_path / f"runs/slurm/linear-probe-{job}"),
                            "--metric", "val/top1"], capture_output=True, text=True, check=True).stdout
    lines = table.strip().splitlines()
    assert lines[0].split() == ["task", "lr", "status", "val/top1"], table
    assert [line.split()[:3] for line in lines[1:]] == [["0", "0.0001", "done"], ["1", "0.1", "done"],
                                                         ["2", "10", "done"]], table
    accuracies = [float(line.split()[3]) for line in lines[1:]]
    assert all(0 <= a <= 1 for a in accuracies) and len(set(accuracies)) > 1, table  # the lr reached the probe


def task_pids(job: str) -> list[int]:
    """The training processes of ``job`` (its srun step's tasks, not the batch shell or srun itself)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            environ = (proc / "environ").read_bytes().split(b"\0")
            cmdline = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if f"SLURM_JOB_ID={job}".encode() in environ and b"selfsup.cli" in cmdline \
                and any(e.startswith(b"SLURM_STEP_ID=") for e in environ):
            pids.append(int(proc.name))
    return pids


def test_a_job_killed_without_a_signal_resumes_from_last_ckpt_on_resubmission(tmp_path, mnist5k):
    planned = 32  # a multiple of every_n_train_steps: the last step is checkpointed
    overrides = ("--trainer.max_steps", str(planned), "--trainer.limit_train_batches", "10",
                 "--checkpoint.every_n_train_steps", "4")
    job = pretrain(tmp_path, *overrides, tasks=1)
    run_dir = tmp_path / f"runs/slurm/pretrain-{job}"
    last = run_dir / "simclr-mnist5k/version_0/checkpoints/last.ckpt"
    wait_steps(run_dir, job, 10)
    pids = task_pids(job)
    assert pids
    for pid in pids:  # the node dies: no signal the job can act on, no checkpoint on the way out
        os.kill(pid, signal.SIGKILL)
    wait_done(job)
    assert job_info(job)["JobState"] == "FAILED"
    assert not list(run_dir.glob("hpc_ckpt_*.ckpt"))
    saved_at = global_step(last)
    assert 4 <= saved_at < planned
    again = pretrain(tmp_path, *overrides, tasks=1, RUN_DIR=str(run_dir.relative_to(tmp_path)))
    wait_done(again)
    out = (tmp_path / f"pretrain-{again}.out").read_text()
    assert job_info(again)["JobState"] == "COMPLETED", out[-3000:]
    # last.ckpt or the periodic checkpoint saved at the same step (the newest by mtime; they can tie)
    assert f"resuming from {run_dir.relative_to(tmp_path) / last.parent.relative_to(run_dir)}/" in out
    assert global_step(last) == planned
