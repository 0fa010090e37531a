"""Run the `selfsup` command on this checkout's code, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from warm_cli import WarmInterpreter

REPO = Path(__file__).resolve().parents[1]

# Overrides that make the demo config a few-second run: a width-4 ResNet-18 (CIFAR stem), batches of 32, no workers.
TINY = ["--model.init_args.backbone_args", "{width: 4, cifar_stem: true}", "--data.init_args.batch_size", "32",
        "--data.init_args.num_workers", "0", "--trainer.log_every_n_steps", "1"]

_warm: WarmInterpreter | None = None


def selfsup(*args: str, cwd: Path, check: bool = True, path: tuple[Path, ...] = (),
            timeout: float = 600, trust: str = "", fresh: bool = False) -> subprocess.CompletedProcess:
    """``python -m selfsup ARGS`` (what the console script calls) with this checkout's ``ssl/`` first on the
    path (then ``path``; ``trust``: the modules there a config may name, as SELFSUP_TRUST); returns the finished
    process, stdout and stderr as text. ``check``: fail with its stderr. ``timeout``: seconds before the command
    counts as hung (subprocess.TimeoutExpired). It runs in a child of a warm interpreter (warm_cli.py) unless
    ``fresh`` (or SELFSUP_TEST_FRESH_CLI=1): then in a new interpreter, imports and all, as the console script."""
    global _warm
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(str(p) for p in (REPO / "ssl", *path)), "SELFSUP_TRUST": trust}
    if fresh or os.environ.get("SELFSUP_TEST_FRESH_CLI") == "1":
        proc = subprocess.run([sys.executable, "-m", "selfsup", *args], cwd=cwd, capture_output=True, text=True,
                              env=env, timeout=timeout)
    else:
        if _warm is None or not _warm.serves(env):  # a library read at import what has changed since (or none yet)
            if _warm is not None:
                _warm.close()
            _warm = WarmInterpreter()
        with tempfile.TemporaryDirectory(prefix="selfsup-cli-") as folder:
            out, err = Path(folder, "stdout"), Path(folder, "stderr")
            status = _warm.run(list(args), Path(cwd), env, out, err, timeout)
            proc = subprocess.CompletedProcess(["selfsup", *args], status, out.read_text(), err.read_text())
    if check and proc.returncode != 0:
        raise AssertionError(f"selfsup {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def printed_config(recipe: str, cwd: Path) -> str:
    """What ``selfsup fit -c experiments/RECIPE.yaml --print_config`` prints; fails unless the recipe parses."""
    proc = selfsup("fit", "-c", str(REPO / f"experiments/{recipe}.yaml"), "--print_config", cwd=cwd, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout
