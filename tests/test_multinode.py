"""Multi-node training without SLURM, as docs/clusters.md describes it: one `torchrun` per node. Two node
processes on 127.0.0.1 (one rank each, gloo, CPU) train a few steps of the real CLI, each rank streaming its own
half of the shards, then resume from the run folder to exactly the planned step count."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from clirun import REPO

TINY = ["--model.init_args.backbone_args", "{width: 4, cifar_stem: true}", "--data.init_args.batch_size", "32",
        "--data.init_args.num_workers", "0", "--trainer.limit_val_batches", "0",
        "--trainer.enable_progress_bar", "false", "--trainer.log_every_n_steps", "1",
        "--trainer.limit_train_batches", "3"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def two_nodes(cwd: Path, max_steps: int) -> list[str]:
    """Start node 0 and node 1 as docs/clusters.md does (torchrun, static rendezvous at node 0's address), wait
    for both; returns each node's output."""
    port = free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "ssl"), str(REPO / "tests/plugins")]),
           "OMP_NUM_THREADS": "1", "SELFSUP_TRUST": "parts"}  # the recording callback is the test's own code
    callbacks = f"[{{class_path: parts.RecordParts, init_args: {{out: {cwd / 'parts'}}}}}]"
    nodes = [subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
         "--node-rank", str(node), "--master-addr", "127.0.0.1", "--master-port", str(port),
         "-m", "selfsup.cli", "fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), *TINY,
         "--trainer.num_nodes", "2", "--trainer.devices", "1", "--trainer.accelerator", "cpu",
         "--trainer.strategy", "ddp", "--trainer.max_steps", str(max_steps), "--trainer.callbacks", callbacks,
         "--run_dir", "run"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for node in (0, 1)]
    outputs = []
    try:  # wait for every node; a node that finishes later is not a failure (only a hang past the timeout is)
        for proc in nodes:
            outputs.append(proc.communicate(timeout=400)[0])
    finally:
        for proc in nodes:
            if proc.poll() is None:
                proc.kill()
    for proc, out in zip(nodes, outputs):
        assert proc.returncode == 0, out[-4000:]
    return outputs


def global_step(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


@pytest.mark.slow
def test_two_torchrun_nodes_split_the_shards_and_resume(tmp_path, mnist5k):
    two_nodes(tmp_path, max_steps=4)  # epoch 0: 3 steps, epoch 1: 1 step
    last = tmp_path / "run/simclr-mnist5k/version_0/checkpoints/last.ckpt"
    assert global_step(last) == 4

    records = [json.loads((tmp_path / f"parts/parts-rank{r}-epoch0.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["node_rank"], r["world_size"]) for r in records] == [(0, 0, 2), (1, 1, 2)]
    assert [(r["stream_rank"], r["stream_world_size"]) for r in records] == [(0, 2), (1, 2)]
    mine = [set(r["parts"]) for r in records]
    assert mine[0] and mine[1] and not mine[0] & mine[1]  # each rank its own shards ...
    assert mine[0] | mine[1] == set(records[0]["all_parts"])  # ... and together all of them

    outputs = two_nodes(tmp_path, max_steps=8)  # the same commands again: --run_dir resumes from last.ckpt
    assert f"resuming from {Path('run') / last.relative_to(tmp_path / 'run')}" in outputs[0], outputs[0][-3000:]
    assert global_step(last) == 8
    assert (tmp_path / "parts/parts-rank1-epoch2.json").is_file()  # the resumed run went on in epoch 2
