"""One run per folder: an exclusive ``flock`` on ``.selfsup.lock`` in the run folder, held until the process ends
(the kernel releases it when the process dies, so a crash leaves no stale lock behind)."""

from __future__ import annotations

import fcntl
import os
import socket
import time
from pathlib import Path

from selfsup.errors import ConfigError

LOCK_NAME = ".selfsup.lock"
_held: dict[Path, int] = {}  # folder -> open descriptor, kept for the life of the process


WAIT_SECONDS = 10.0  # a killed or requeued job's process may hold the lock a few seconds while it exits


def _take(fd: int, wait: float) -> bool:
    """Take the lock of ``fd``, trying again for ``wait`` seconds (a holder that is exiting lets go)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.5)


def lock_run_folder(folder: Path) -> None:
    """Take the run folder's lock, or refuse with the pid and host of the process that holds it."""
    folder = folder.resolve()
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    if not _take(fd, wait=WAIT_SECONDS):
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(f"run folder {folder} is in use by {holder}; wait for that run to end, or give another "
                          "--run_dir (or logger version)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)
    _held[folder] = fd
