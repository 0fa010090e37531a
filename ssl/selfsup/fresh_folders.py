"""The run folders a ``selfsup fit`` start makes, removed again when it fails before its first training step, so
a mistake found late (a backbone argument, too few shards) leaves no empty ``version_N`` behind."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any


class FreshFolders:
    """Folders made by this start (each with the parents it made), and the trainer once there is one."""

    def __init__(self) -> None:
        self.made: list[list[Path]] = []  # per folder: itself, then each parent it made, innermost first
        self.trainer: Any = None

    @staticmethod
    def missing(folder: Path) -> list[Path]:
        """Before ``folder`` is made: it and those of its parents that do not exist yet, innermost first."""
        return [p for p in [folder, *folder.parents] if not p.exists()]

    def own(self, missing: list[Path]) -> None:
        """Count ``missing`` (from ``missing``) as made by this start, once it holds the folder's run lock (so a
        start that lost the lock to another never removes that one's folder)."""
        if missing:
            self.made.append(missing)

    def remove_if_unused(self) -> None:
        """After a failed start: remove the folders it made unless training took a step (then they hold what the
        run wrote before it failed) or a checkpoint was saved (a SIGTERM at step 0 names it). Only the folder
        itself is removed with its contents; a parent only while empty, since another run may have started in it
        meanwhile."""
        if self.trainer is not None and self.trainer.global_step > 0:
            return
        for folder, *parents in self.made:
            if next(folder.rglob("*.ckpt"), None) is not None:
                continue
            shutil.rmtree(folder, ignore_errors=True)
            for parent in parents:
                try:
                    parent.rmdir()
                except OSError:  # not empty (or gone): keep it and its parents
                    break
        self.made.clear()
