"""Where evaluations of a run write: a folder of their own inside the run, so the run is left as it was."""

from __future__ import annotations

import time
from pathlib import Path


def run_folder_of(ckpt: str | Path) -> Path | None:
    """The run folder (``RUN`` of ``RUN/checkpoints/x.ckpt``) a checkpoint belongs to; None outside a run."""
    path = Path(ckpt)
    return path.parent.parent if path.parent.name == "checkpoints" else None


def eval_folder(ckpt: str | Path, stage: str) -> Path | None:
    """``RUN/eval/STAGE-YYYYmmdd-HHMMSS`` for an evaluation (validate, test, predict, knn) of ``ckpt``; None
    when the checkpoint is not in a run folder. Not created here."""
    run = run_folder_of(ckpt)
    if run is None:
        return None
    folder = run / "eval" / f"{stage}-{time.strftime('%Y%m%d-%H%M%S')}"
    again = 1
    while folder.with_name(f"{folder.name}-{again}" if again > 1 else folder.name).exists():
        again += 1
    return folder.with_name(f"{folder.name}-{again}") if again > 1 else folder
