"""The options selfsup's classes (and Lightning's Trainer) take, read from their source without importing them, so
a misspelled option or method is refused, with the nearest name, before torch and Lightning load."""

from __future__ import annotations

import ast
import difflib
import functools
import importlib.util
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
DEFINED = re.compile(r"^class (\w+)\b", re.MULTILINE)


@functools.cache
def _definitions() -> dict[str, list[Path]]:
    """Class name -> the files of selfsup (and Lightning's trainer module) that define a class of that name."""
    found: dict[str, list[Path]] = {}
    files = [*PACKAGE.rglob("*.py")]
    spec = importlib.util.find_spec("lightning")  # finds the package without importing it
    if spec and spec.submodule_search_locations:
        files.append(Path(next(iter(spec.submodule_search_locations)), "pytorch/trainer/trainer.py"))
    for path in files:
        for name in DEFINED.findall(path.read_text() if path.is_file() else ""):
            found.setdefault(name, []).append(path)
    return found


@functools.cache
def _class(name: str) -> ast.ClassDef | None:
    """The one top-level class ``name`` defines (None: none, or more than one)."""
    paths = _definitions().get(name, [])
    if len(paths) != 1:
        return None
    nodes = [n for n in ast.parse(paths[0].read_text()).body if isinstance(n, ast.ClassDef) and n.name == name]
    return nodes[0] if len(nodes) == 1 else None


def _base_names(node: ast.ClassDef) -> list[str]:
    return [b.attr if isinstance(b, ast.Attribute) else b.id for b in node.bases
            if isinstance(b, (ast.Name, ast.Attribute))]


@functools.cache
def mro(name: str) -> list[str]:
    """The method resolution order of class ``name`` by class names, as Python would build it (classes outside
    these files end a branch)."""
    stand_ins: dict[str, type] = {}

    def stand_in(cls: str) -> type:
        if cls not in stand_ins:
            node = _class(cls)
            stand_ins[cls] = type(cls, tuple(stand_in(b) for b in _base_names(node)) if node else (), {})
        return stand_ins[cls]

    try:
        return [c.__name__ for c in stand_in(name).__mro__[:-1]]
    except TypeError:  # no consistent order: leave it to Python itself
        return [name]


def _init(node: ast.ClassDef) -> ast.FunctionDef | None:
    return next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)


def _forwards_kwargs(init: ast.FunctionDef) -> bool:
    """``__init__`` passes its ``**kwargs`` on to ``super().__init__``."""
    return any(isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr == "__init__"
               and any(k.arg is None and isinstance(k.value, ast.Name) and k.value.id == init.args.kwarg.arg
                       for k in call.keywords)
               for call in ast.walk(init))


@functools.cache
def parameters(name: str) -> frozenset[str] | None:
    """The keyword options class ``name`` takes: its ``__init__``'s, and those of the next ``__init__`` in its MRO
    where it passes ``**kwargs`` on. None where the source does not tell (the class or a class it passes options
    to is not found, or it takes ``**kwargs`` it does not pass on)."""
    names: set[str] = set()
    order = mro(name)
    for cls in order:
        node = _class(cls)
        if node is None:
            return None
        init = _init(node)
        if init is None:
            continue
        args = init.args
        names |= {a.arg for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]} - {"self"}
        if args.kwarg is None:
            return frozenset(names)
        if not _forwards_kwargs(init):
            return None
    return frozenset(names)  # to object, which takes none


def subclasses(*roots: str) -> list[str]:
    """Names of the classes (``roots`` included) that have one of ``roots`` in their MRO, sorted."""
    return sorted(name for name in _definitions() if set(mro(name)) & set(roots) and _class(name) is not None)


# Names one family of classes uses for what another calls ``name``: offered before the spelling neighbours.
SYNONYMS = {"width": ("hidden_dim", "embed_dim"), "depth": ("num_layers", "depths"), "heads": ("num_heads",),
            "size": ("sizes", "global_size"), "epochs": ("max_epochs",), "gpus": ("devices",)}


def nearest(name: str, known: object) -> str:
    """`` (did you mean X?)`` naming the known names closest to ``name`` (its synonyms first, case aside), or ''."""
    known = sorted(str(k) for k in known)
    lowered = {k.lower(): k for k in known}
    close = [k for k in SYNONYMS.get(name.lower(), ()) if k in known]
    close += [lowered[m] for m in difflib.get_close_matches(name.lower(), list(lowered), n=3, cutoff=0.6)
              if lowered[m] not in close][:3 - len(close)]
    return f" (did you mean {' or '.join(close)}?)" if close else ""
