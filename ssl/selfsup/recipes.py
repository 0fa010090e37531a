"""The recipes (``experiments/**/*.yaml``) that ship with selfsup, found from any folder.

``selfsup/recipes`` is the checkout's ``experiments/`` (a link; a wheel holds a copy as package data), so
``selfsup fit -c experiments/simclr/mnist5k.yaml`` and ``selfsup bench`` work outside the repository too.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED = Path(__file__).resolve().parent / "recipes"


def recipe_path(name: str | Path) -> Path:
    """``name`` itself when that file exists (your own copy wins), else the packaged recipe of that name
    (``experiments/simclr/mnist5k.yaml`` or ``simclr/mnist5k.yaml``), else ``name`` unchanged."""
    path = Path(name)
    if path.exists():
        return path
    parts = path.parts[1:] if path.parts[:1] == ("experiments",) else path.parts
    packaged = PACKAGED.joinpath(*parts)
    return packaged if parts and packaged.is_file() else path


def with_recipes(args: list[str]) -> list[str]:
    """``args`` with each ``-c``/``--config`` file that is not here replaced by the packaged recipe."""
    out = list(args)
    for i, token in enumerate(out):
        if token in ("-c", "--config") and i + 1 < len(out):
            out[i + 1] = str(recipe_path(out[i + 1]))
        elif token.startswith("--config="):
            out[i] = "--config=" + str(recipe_path(token.partition("=")[2]))
    return out
