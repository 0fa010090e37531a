"""Old names in configs saved by earlier runs: module paths kept resolving, renamed options pointed to.

Configs saved by earlier runs name classes by their old paths (``selfsup.loggers.ResumableCSVLogger``); importing
``selfsup.loggers`` gives the module now at ``selfsup.training.loggers`` (the same module object, so classes
compare equal). A renamed model option is refused in one line that names its new name (``renamed_option``).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import re
import sys
from types import ModuleType

MOVED = {f"selfsup.{name}": f"selfsup.training.{name}" for name in (
    "atomic", "checkpointing", "collapse", "loggers", "nonfinite", "progress", "resume", "runlock", "runs", "slurm")}

RENAMED_OPTIONS = {"final_weight_decay": "weight_decay_end"}  # I-JEPA's, now every method's (SSLMethod)


def renamed(old: str) -> str | None:
    """The one line for option ``old`` if it was renamed; None for any other."""
    if old not in RENAMED_OPTIONS:
        return None
    return f"model option {old} is now called {RENAMED_OPTIONS[old]}; rename it in the config (or on the command line)"


def renamed_option(message: str) -> str | None:
    """The one line for a parse error (``message``) about an option that was renamed; None for any other."""
    for old in re.findall(r"Option '(\w+)' is not accepted", message):
        if old in RENAMED_OPTIONS:
            return renamed(old)
    return None


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
