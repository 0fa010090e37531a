"""Files replaced whole or not at all, and never written through something selfsup did not create: every file
selfsup writes (checkpoints, exports and their specs, evaluation results) goes through ``atomic_write``."""

from __future__ import annotations

import errno
import io
import os
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from selfsup.errors import ConfigError


def check_target(target: Path, inputs: Iterable[Path] = (), replace: bool = True, flag: str = "--out") -> None:
    """Refuse to write ``target`` when it is a symbolic link, a device, FIFO, socket or folder, the same file as one
    of ``inputs`` (hard links included), or (unless ``replace``) any existing file; one line naming the fix."""
    try:
        info = target.lstat()
    except FileNotFoundError:
        return
    except OSError as err:
        raise ConfigError(f"cannot write {target} ({err.strerror or err}); choose another {flag}") from None
    for source in inputs:
        try:
            same = os.path.samestat(info, Path(source).stat())
        except OSError:
            continue
        if same:
            raise ConfigError(f"{target} is {source}, the file this command reads; choose another {flag}")
    if stat.S_ISLNK(info.st_mode):
        raise ConfigError(f"{target} is a symbolic link; selfsup does not write through links it did not make: "
                          f"remove it or choose another {flag}")
    if not stat.S_ISREG(info.st_mode):
        kind = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file (a device, FIFO or socket)"
        raise ConfigError(f"{target} is {kind}; selfsup never replaces it: choose another {flag}")
    if not replace:
        raise ConfigError(f"{target} already exists; choose another {flag}, or add --force to replace it")


def atomic_write(target: Path, data: bytes | memoryview, inputs: Iterable[Path] = (), replace: bool = True,
                 flag: str = "--out") -> None:
    """Write ``data`` to a new temporary file beside ``target``, flushed and fsynced, then rename it over
    ``target`` (after ``check_target``): a crash or a full disk leaves the previous ``target`` whole, and a link at
    ``target`` is never followed (a temporary file in ``$TMPDIR``, then a move, would be a truncating copy when the
    folder is on another filesystem)."""
    target = Path(target)
    check_target(target, inputs, replace, flag)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        temporary.unlink(missing_ok=True)  # a killed write's leftover (never a link's target: unlink removes a link)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
        with open(fd, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, target)
    except OSError as err:
        temporary.unlink(missing_ok=True)
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ConfigError(f"disk full while saving {target} ({err.strerror}); {target.name} is "
                              "unchanged; free space (or write to a larger disk) and run again") from None
        if err.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise ConfigError(f"cannot write {target} ({err.strerror}); choose a writable folder") from None
        raise
    folder = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a crash
    finally:
        os.close(folder)


def atomic_save(obj: Any, target: Path, inputs: Iterable[Path] = (), replace: bool = True) -> None:
    """``torch.save`` of ``obj`` through ``atomic_write``."""
    import torch

    buffer = io.BytesIO()  # serialised first (as Lightning does), so that a full disk fails in write() with ENOSPC
    torch.save(obj, buffer)
    atomic_write(target, buffer.getbuffer(), inputs, replace)
