"""``selfsup backbones``: the built-in backbone names, and how to name timm's and torchvision's models."""

from __future__ import annotations

import argparse
import difflib
import fnmatch


def matching(names: list[str], pattern: str) -> list[str]:
    """Names that match a shell pattern (``convnext_*``), or that contain ``pattern`` when it has no wildcard."""
    if any(c in pattern for c in "*?["):
        return fnmatch.filter(names, pattern)
    return [n for n in names if pattern.lower() in n.lower()]


def library_names() -> dict[str, list[str]]:
    """timm's and torchvision's image model names."""
    import timm

    from selfsup.backbones.torchvision_models import classification_models

    return {"timm": timm.list_models(), "torchvision": classification_models()}


def builtin_lines() -> list[str]:
    from selfsup.backbones.base import _REGISTRY

    lines = ["built-in backbones (model.backbone: NAME, model.backbone_args: {...}):"]
    for name, factory in sorted(_REGISTRY.items()):
        if not name.endswith(":"):
            doc = " ".join((factory.__doc__ or "").split()).removeprefix(f"{name}: ").split(". ")[0]
            lines.append(f"  {name:<17} {doc[:100]}".rstrip())
    return lines


def search_lines(pattern: str, names: dict[str, list[str]]) -> list[str]:
    found = [f"{library}:{n}" for library, known in names.items() for n in matching(known, pattern)]
    if found:
        return [f"{len(found)} models match {pattern!r}:", *(f"  {n}" for n in found)]
    every = [f"{library}:{n}" for library, known in names.items() for n in known]
    near = difflib.get_close_matches(pattern, every, n=8, cutoff=0.4) or difflib.get_close_matches(
        pattern, [n.partition(":")[2] for n in every], n=8, cutoff=0.4)
    return [f"no model matches {pattern!r}; nearest: {', '.join(near) or 'none'}"]


def main(argv: list[str]) -> None:
    """The built-in backbones, how to name a timm or torchvision model, and a search over their names."""
    parser = argparse.ArgumentParser(prog="selfsup backbones", description=main.__doc__)
    parser.add_argument("--search", metavar="PATTERN", help="list timm and torchvision models whose name contains "
                        "PATTERN (or matches it: convnext_*); nearest names when none does")
    args = parser.parse_args(argv)
    names = library_names()
    if args.search:
        print("\n".join(search_lines(args.search, names)))
        return
    print("\n".join([
        *builtin_lines(), "",
        "library models (model.backbone: LIBRARY:NAME[,key=value...]): built without weights, with the data's "
        "channels (and, for ViTs and Swins, its image size)",
        f"  timm:NAME         any of {len(names['timm'])} timm models, e.g. timm:convnext_atto, "
        "timm:vit_small_patch16_224,img_size=32",
        f"  torchvision:NAME  any of {len(names['torchvision'])} torchvision classification models, e.g. "
        "torchvision:efficientnet_b0, torchvision:vit_b_16,image_size=32",
        "  selfsup backbones --search PATTERN  lists them (e.g. --search convnext)",
    ]))
