"""``--ckpt_path last``: the newest ``last.ckpt`` of a run name (every ``version_N``) or of a run folder."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from selfsup.errors import ConfigError


def last_checkpoints(folder: Path) -> list[Path]:
    """The resumable checkpoints under ``folder``: ``last.ckpt`` of each run in it (``*/checkpoints/``, any depth),
    its own ``checkpoints/last.ckpt`` or ``last.ckpt``, and SLURM requeue checkpoints ``hpc_ckpt_N.ckpt``."""
    found = [*folder.glob("**/checkpoints/last.ckpt"), *folder.glob("hpc_ckpt_*.ckpt"), folder / "last.ckpt"]
    return [p for p in dict.fromkeys(found) if p.is_file()]


def resolve_last(folders: Iterable[Path]) -> Path:
    """The newest (by modification time) resumable checkpoint in ``folders``; a ConfigError naming every folder
    looked in when there is none, so that ``--ckpt_path last`` never starts from scratch silently."""
    folders = list(dict.fromkeys(folders))
    found = [p for folder in folders for p in last_checkpoints(folder)]
    if not found:
        where = ", ".join(str(f) for f in folders) or "no run folder (no logger, no --run_dir)"
        raise ConfigError(f"--ckpt_path last: no last.ckpt in {where}; drop --ckpt_path to start a new run, or "
                          "give the checkpoint's path (--ckpt_path RUN/checkpoints/last.ckpt)")
    return max(found, key=lambda p: p.stat().st_mtime)
