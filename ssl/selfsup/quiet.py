"""A console with selfsup's own lines only: Lightning's info lines and product tips, and the warnings the libraries
raise about themselves (with their install paths), are shown with ``selfsup fit --verbose``."""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent

# Packages whose own messages (deprecations, hints about their internals, product tips) a selfsup user cannot act on.
LIBRARIES = ("lightning", "lightning_fabric", "lightning_utilities", "pytorch_lightning", "torch", "torchvision",
             "torchmetrics", "jsonargparse", "webdataset")


def _library_folders() -> tuple[str, ...]:
    folders = []
    for name in LIBRARIES:
        spec = importlib.util.find_spec(name)
        folders += [str(Path(p).resolve()) for p in (spec.submodule_search_locations or []) if spec]
    return tuple(folders)


class LibraryInfoFilter(logging.Filter):
    """Drops info lines logged from the libraries' own code; keeps warnings and errors, and the lines of selfsup
    (which logs through Lightning's ``rank_zero_info`` too: the record names the caller's file)."""

    def __init__(self) -> None:
        super().__init__()
        self.folders = _library_folders()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not str(Path(record.pathname).resolve()).startswith(self.folders)


def quiet_libraries() -> None:
    """Hide Lightning's info lines (seed, devices, tips, why fit stopped) and the warnings raised in the libraries'
    own code; selfsup's lines and warnings about selfsup's or the user's code still show."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        for handler in logging.getLogger(name).handlers or logging.getLogger().handlers:
            if not any(isinstance(f, LibraryInfoFilter) for f in handler.filters):
                handler.addFilter(LibraryInfoFilter())
    warnings.filterwarnings("ignore", module=rf"({'|'.join(LIBRARIES)})(\.|$)")


def selfsup_warnings_as_lines() -> None:
    """Show a warning selfsup raises as ``selfsup: warning: MESSAGE``, one line without the file and source line
    (others as Python shows them)."""
    shown = warnings.showwarning
    if getattr(shown, "selfsup", False):
        return

    def show(message, category, filename, lineno, file=None, line=None) -> None:
        if str(Path(filename).resolve()).startswith(str(PACKAGE)):
            print(f"selfsup: warning: {message}", file=file or sys.stderr, flush=True)
        else:
            shown(message, category, filename, lineno, file, line)

    show.selfsup = True
    warnings.showwarning = show
