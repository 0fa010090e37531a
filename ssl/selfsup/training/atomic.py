"""Files replaced whole or not at all."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path
from typing import Any

import torch

from selfsup.errors import ConfigError


def atomic_save(obj: Any, target: Path) -> None:
    """``torch.save`` to a temporary file in ``target``'s folder, flushed and fsynced, then renamed over
    ``target``: a crash or a full disk leaves the previous ``target`` whole (a temporary file in ``$TMPDIR``, then a
    move, would be a truncating copy when the folder is on another filesystem)."""
    buffer = io.BytesIO()  # serialised first (as Lightning does), so that a full disk fails in write() with ENOSPC
    torch.save(obj, buffer)
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as file:
            file.write(buffer.getbuffer())
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
