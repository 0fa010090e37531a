"""A backbone out of a selfsup checkpoint: its architecture (from the hyper-parameters) and its weights.

Checkpoints load with ``torch.load(weights_only=True)``: only tensors and plain containers are unpickled.
Works for any checkpoint whose module has ``backbone`` as a submodule and ``backbone``, ``backbone_args`` and
``in_channels`` as hyper-parameters: every method and the probes.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfsup.backbones import Backbone, build_backbone
from selfsup.errors import ConfigError


@dataclass(frozen=True)
class BackboneSpec:
    """What builds a backbone: registry name, keyword arguments, input channels."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    in_channels: int = 3

    def build(self) -> Backbone:
        return build_backbone(self.name, in_channels=self.in_channels, **self.args)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.args.items()))
        return f"{self.name}({args}{', ' if args else ''}in_channels={self.in_channels})"


def existing_checkpoint(path: str | Path) -> Path:
    """``path`` if it is a file; a ConfigError that says what to give instead (a folder names a checkpoint in it)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(path.glob("**/checkpoints/last.ckpt")) or sorted(path.glob("**/*.ckpt"))
        hint = f", e.g. {found[-1]}" if found else " (this one holds none)"
        raise ConfigError(f"{path} is a folder; give a checkpoint file written by `selfsup fit`{hint}")
    if not path.is_file():
        raise ConfigError(f"checkpoint {path} does not exist; give the path of a .ckpt written by `selfsup fit`")
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The checkpoint at ``path`` as a dict, read with ``weights_only=True`` onto the CPU."""
    path = existing_checkpoint(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first = str(err).strip().splitlines()[0]
        raise ConfigError(f"{path} holds objects that weights_only loading refuses ({first})") from err
    except (RuntimeError, EOFError) as err:
        raise ConfigError(f"{path} is not a readable torch checkpoint ({err})") from err
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ConfigError(f"{path} is not a selfsup checkpoint (no state_dict/hyper_parameters): give a .ckpt "
                          "written by `selfsup fit`, not an exported backbone")
    return ckpt


def backbone_spec(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> BackboneSpec:
    """The architecture recorded in a checkpoint's hyper-parameters."""
    hp = ckpt["hyper_parameters"]
    if "backbone" not in hp:
        raise ConfigError(f"{path} records no backbone in its hyper-parameters; it was not written by selfsup")
    return BackboneSpec(hp["backbone"], dict(hp.get("backbone_args") or {}), int(hp.get("in_channels", 3)))


def backbone_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone's own state dict: the ``backbone.`` entries of the module's, prefix removed."""
    prefix = "backbone."
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def load_backbone(path: str | Path) -> tuple[Backbone, BackboneSpec]:
    """The checkpoint's backbone with its trained weights (in eval mode), and its spec."""
    ckpt = load_checkpoint(path)
    spec = backbone_spec(ckpt, path)
    backbone = spec.build()
    backbone.load_state_dict(backbone_state(ckpt))
    return backbone.eval(), spec


def backbone_from(name: str | None, args: dict[str, Any] | None, in_channels: int, init_from: str | Path | None,
                  who: str) -> tuple[Backbone, BackboneSpec]:
    """The backbone of ``who`` (a probe, a fine-tune) and its spec: the architecture of checkpoint ``init_from``
    with its weights, unless ``name``/``args`` (None: the checkpoint's) ask for another one, which is refused.
    Without ``init_from``, ``name`` randomly initialised, with a warning."""
    from lightning.pytorch.utilities import rank_zero_warn

    if not init_from:
        if name is None:
            raise ConfigError(f"{who}: set model.init_from (a checkpoint of `selfsup fit`; the backbone is read from "
                              "it) or model.backbone (a randomly initialised baseline)")
        rank_zero_warn(f"{who}: no model.init_from, so this starts from a randomly initialised backbone")
        spec = BackboneSpec(name, dict(args or {}), in_channels)
        return spec.build(), spec
    ckpt = load_checkpoint(init_from)
    found = backbone_spec(ckpt, init_from)
    spec = BackboneSpec(name or found.name, dict(found.args if args is None else args), in_channels)
    check_same_architecture(found, spec, init_from)
    backbone = spec.build()
    backbone.load_state_dict(backbone_state(ckpt))
    return backbone, spec


def check_same_architecture(spec: BackboneSpec, expected: BackboneSpec, path: str | Path) -> None:
    """Refuse a checkpoint whose backbone is not the one a config asks for, naming both."""
    if spec != expected:
        raise ConfigError(
            f"checkpoint {path} holds a {spec} backbone, but the config asks for {expected}; drop "
            "model.backbone/backbone_args from the config (they are read from the checkpoint) or set them to the "
            f"checkpoint's, and use data with {spec.in_channels} channel(s)"
        )
