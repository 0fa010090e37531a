"""Old import paths of modules that moved into rooms of their own, kept resolving.

Configs saved by earlier runs name classes by their old paths (``selfsup.loggers.ResumableCSVLogger``); importing
``selfsup.loggers`` gives the module now at ``selfsup.training.loggers`` (the same module object, so classes
compare equal).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

MOVED = {f"selfsup.{name}": f"selfsup.training.{name}" for name in (
    "atomic", "checkpointing", "collapse", "loggers", "nonfinite", "progress", "resume", "runlock", "runs", "slurm")}


class MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """A finder and loader that answers an old path with the module at its new one."""

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in MOVED else None

    def create_module(self, spec) -> ModuleType:
        module = importlib.import_module(MOVED[spec.name])
        self._spec = module.__spec__  # the import system sets __spec__ to the alias's; exec_module puts it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec


def install() -> None:
    """Resolve the old paths from now on (once per process)."""
    if not any(isinstance(finder, MovedModules) for finder in sys.meta_path):
        sys.meta_path.append(MovedModules())
