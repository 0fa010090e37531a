"""One run per folder: an exclusive ``flock`` on ``.selfsup.lock`` in the run folder, held until the process ends
(the kernel releases it when the process dies, so a crash leaves no stale lock behind)."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import stat
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


def _open_lock(path: Path) -> int:
    """A descriptor of the lock file ``path``, made if missing; a ConfigError when it is a link (never followed, so
    its target is never truncated), a folder, a FIFO or another special file."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK, 0o644)
    except OSError as err:
        what = "a symbolic link" if err.errno == errno.ELOOP else f"unusable ({err.strerror or err})"
        raise ConfigError(f"the run lock {path} is {what}; remove it (selfsup makes it a plain file) and run "
                          "again") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ConfigError(f"the run lock {path} is not a regular file (a FIFO or device); remove it and run again")
    return fd


def lock_run_folder(folder: Path) -> None:
    """Take the lock of the real folder ``folder`` names (symlinks resolved), or refuse with the pid and host of the
    process that holds it."""
    folder = folder.resolve()
    if folder in _held:
        return
    folder.mkdir(parents=True, exist_ok=True)
    fd = _open_lock(folder / LOCK_NAME)
    if not _take(fd, wait=WAIT_SECONDS):
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise ConfigError(f"run folder {folder} is in use by {holder}; wait for that run to end, or give another "
                          "--run_dir (or logger version)") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n"
              .encode(), 0)
    _held[folder] = fd
