"""The gate every file selfsup unpickles passes: a local regular file, checked before anything is opened or
fetched. Standard library only, so a command refuses a wrong path at once, before torch loads."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

from selfsup.errors import ConfigError

# A URL (``http://``, ``s3://``, ``file:/``) or an fsspec chain (``simplecache::http://...``): never opened.
REMOTE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:/|::")
# Words Lightning's loader turns into a path it finds itself (``last`` is resolved by selfsup, then gated).
KEYWORDS = ("best", "hpc", "registry")
HINTS = {"checkpoint": "give the path of a .ckpt written by `selfsup fit`",
         "exported backbone": "give the .pt file `selfsup export --out` wrote (its .json beside it) or a .ckpt",
         "backbone spec": "export the backbone again with `selfsup export` (it writes the .json beside the .pt)"}


def existing_checkpoint(path: str | Path, what: str = "checkpoint") -> Path:
    """The gate every file selfsup unpickles passes: the local regular file ``path`` names, symlinks resolved.
    Anything else (a URL or fsspec chain, Lightning's ``hpc``/``best``, a device, FIFO, socket, folder or missing
    file) is a one-line ConfigError, raised before anything is opened or fetched."""
    text = str(path)
    if REMOTE.search(text):
        raise ConfigError(f"refused to load {what} {text}: only local files are loaded (a remote {what} would be "
                          "fetched and unpickled); download it first and give its local path")
    if text in KEYWORDS or text.startswith("registry:"):
        raise ConfigError(f"--ckpt_path {text} is not supported by selfsup; give the checkpoint file itself (e.g. "
                          "RUN/checkpoints/epoch=...-step=....ckpt) or `last`")
    try:
        mode = os.stat(text).st_mode
    except FileNotFoundError:
        raise ConfigError(f"{what} {text} does not exist; {HINTS.get(what, HINTS['checkpoint'])}") from None
    except OSError as err:
        raise ConfigError(f"cannot read {what} {text} ({err.strerror or err}); give a readable file") from None
    if stat.S_ISDIR(mode):
        found = sorted(Path(text).glob("**/checkpoints/last.ckpt")) or sorted(Path(text).glob("**/*.ckpt"))
        hint = f", e.g. {found[-1]}" if found else " (this one holds none)"
        raise ConfigError(f"{text} is a folder; give a {what} file written by selfsup{hint}")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"refused to load {what} {text}: it is not a regular file (a device, FIFO, socket or "
                          "pipe); save it to a file first and give that file")
    return Path(text).resolve()
