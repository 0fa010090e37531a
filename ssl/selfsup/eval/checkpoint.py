"""A backbone out of a selfsup checkpoint: its architecture (from the hyper-parameters) and its weights.

Every file selfsup unpickles passes ``selfsup.gate.existing_checkpoint`` (local regular files only) and loads with
``torch.load(weights_only=True)``: only tensors and plain containers are unpickled.
Works for any checkpoint whose module has ``backbone`` as a submodule and ``backbone``, ``backbone_args`` and
``in_channels`` as hyper-parameters: every method and the probes.
"""

from __future__ import annotations

import os
import pickle
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from selfsup.backbones import Backbone, build_backbone
from selfsup.data.limits import check_sizes
from selfsup.errors import ConfigError
from selfsup.eval.transform import KEY as EVAL_TRANSFORM
from selfsup.gate import existing_checkpoint


@dataclass(frozen=True)
class BackboneSpec:
    """What builds a backbone: registry name, keyword arguments, input channels; and the mean/std its inputs were
    normalised with in pretraining (None: [0, 1] pixels), which evaluations apply unless their views set one."""

    name: str
    args: dict[str, Any] = field(default_factory=dict)
    in_channels: int = 3
    normalization: tuple[tuple[float, ...], tuple[float, ...]] | None = field(default=None, compare=False)

    def build(self) -> Backbone:
        return build_backbone(self.name, in_channels=self.in_channels, **self.args)

    def __str__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in sorted(self.args.items()))
        return f"{self.name}({args}{', ' if args else ''}in_channels={self.in_channels})"




def read_weights(path: str | Path, what: str = "checkpoint") -> Any:
    """The object in the file ``path`` (through ``existing_checkpoint``), unpickled weights-only onto the CPU,
    whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` says; a ConfigError (one line) for an empty, truncated, foreign or
    code-carrying file. The file is opened once, and read only if what was opened is a regular file."""
    real = existing_checkpoint(path, what)
    try:
        file = open(os.open(real, os.O_RDONLY | os.O_NONBLOCK), "rb")  # a FIFO swapped in does not block
    except OSError as err:
        raise ConfigError(f"cannot read {what} {path} ({err.strerror or err}); give a readable file") from None
    with file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"refused to load {what} {path}: it is not a regular file; give a checkpoint file")
        if info.st_size == 0:
            raise ConfigError(f"{what} {path} is empty (0 bytes: a save that was interrupted); give another "
                              f"{what}, e.g. one of the epoch=...-step=....ckpt files beside it")
        try:
            return torch.load(file, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise code_refusal(err, path) from err
        except Exception as err:  # the unpickler fails on garbage with any error (EOF, KeyError, IndexError, ...)
            raise ConfigError(f"{what} {path} is truncated or not a torch checkpoint ({type(err).__name__}); "
                              "give a complete .ckpt written by `selfsup fit`") from err


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """The selfsup checkpoint at ``path`` as a dict (read by ``read_weights``); a ConfigError (one line) for
    anything else."""
    ckpt = read_weights(path)
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "hyper_parameters" not in ckpt:
        raise ConfigError(f"{path} is not a selfsup checkpoint (no state_dict/hyper_parameters): give a .ckpt "
                          "written by `selfsup fit`, not an exported backbone or a torchvision state dict")
    return ckpt


def code_refusal(err: pickle.UnpicklingError, path: str | Path | None = None) -> ConfigError:
    """One line for a file that torch's weights-only loader refused (without torch's advice to load it unsafely)."""
    text, where = str(err), f" {path}" if path else ""
    if "Weights only load failed" not in text:
        return ConfigError(f"checkpoint{where} is truncated or not a torch checkpoint ({text.splitlines()[0][:80]}); "
                           "give a complete .ckpt written by `selfsup fit`")
    found = re.search(r"GLOBAL [\w.]+", text)
    return ConfigError(
        f"refused to load a checkpoint{where} that holds more than plain weights ("
        f"{found.group(0) if found else 'code objects'}; it was read weights-only, so none of it ran); load only "
        "checkpoints written by selfsup or another source you trust"
    )


def backbone_spec(ckpt: dict[str, Any], path: str | Path = "checkpoint") -> BackboneSpec:
    """The architecture recorded in a checkpoint's hyper-parameters, and the input normalisation recorded with its
    evaluation transform."""
    hp = ckpt["hyper_parameters"]
    if not isinstance(hp, dict) or "backbone" not in hp:
        raise ConfigError(f"{path} records no backbone in its hyper-parameters; it was not written by selfsup")
    recorded = ckpt.get(EVAL_TRANSFORM) or {}
    try:
        mean, std = recorded.get("mean"), recorded.get("std")
        normalization = (tuple(mean), tuple(std)) if mean and std else None
        args, in_channels = dict(hp.get("backbone_args") or {}), hp.get("in_channels", 3)
    except (TypeError, ValueError, AttributeError) as err:
        raise ConfigError(f"{path} records its backbone in a form selfsup did not write ({err}); give a checkpoint "
                          "written by `selfsup fit`") from None
    check_sizes({**args, "in_channels": in_channels}, f"{path}'s hyper-parameters")
    return BackboneSpec(str(hp["backbone"]), args, in_channels, normalization)


EVALUATED = "evaluated_backbone"  # checkpoint key: the module whose weights evaluations read (I-JEPA's target)


def backbone_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The backbone's own state dict: the ``backbone.`` entries of the module's, prefix removed; or those of the
    module the checkpoint names under ``evaluated_backbone`` (``momentum_backbone``: I-JEPA's target encoder)."""
    name = ckpt.get(EVALUATED, "backbone")
    prefix = f"{name if name in ('backbone', 'momentum_backbone') else 'backbone'}."
    return {k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}


def per_frame(spec: BackboneSpec, state: dict[str, torch.Tensor]) -> tuple[BackboneSpec, dict[str, torch.Tensor]]:
    """The ``frames`` backbone that runs the image backbone ``spec`` on each frame of a clip, and its weights."""
    return (BackboneSpec("frames", {"image": spec.name, "image_args": dict(spec.args)}, spec.in_channels,
                         spec.normalization),
            {f"image.{k}": v for k, v in state.items()})


def built_with(spec: BackboneSpec, state: dict[str, torch.Tensor], path: str | Path) -> Backbone:
    """The backbone of ``spec`` with the weights ``state`` (read from ``path``); a ConfigError (one line) when the
    spec names no backbone selfsup can build or the weights do not fit it."""
    try:
        backbone = spec.build()
    except (TypeError, ValueError, KeyError) as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{path} records a backbone selfsup cannot build ({spec}: {str(err).splitlines()[0]}); "
                          "give a file written by selfsup") from None
    try:
        backbone.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        found = str(err).splitlines()[1:2] or [str(err)]
        raise ConfigError(f"the weights in {path} do not fit its {spec} backbone ({found[0].strip()[:160]}); "
                          "give a file written by selfsup") from None
    return backbone


def load_backbone(path: str | Path, frames: bool = False) -> tuple[Backbone, BackboneSpec]:
    """The checkpoint's backbone with its trained weights (in eval mode), and its spec; with ``frames`` its image
    backbone applied to each frame of a clip (``per_frame``)."""
    ckpt = load_checkpoint(path)
    spec, state = backbone_spec(ckpt, path), backbone_state(ckpt)
    if frames:
        spec, state = per_frame(spec, state)
    return built_with(spec, state, path).eval(), spec


def backbone_from(name: str | None, args: dict[str, Any] | None, in_channels: int, init_from: str | Path | None,
                  who: str) -> tuple[Backbone, BackboneSpec]:
    """The backbone of ``who`` (a probe, a fine-tune) and its spec: the architecture of checkpoint ``init_from``
    with its weights, unless ``name``/``args`` (None: the checkpoint's) ask for another one, which is refused.
    ``name`` ``frames`` with an image checkpoint applies its backbone to each frame (``per_frame``). Without
    ``init_from``, ``name`` randomly initialised, with a warning."""
    from lightning.pytorch.utilities import rank_zero_warn

    if not init_from:
        if name is None:
            raise ConfigError(f"{who}: set model.init_from (a checkpoint of `selfsup fit`; the backbone is read from "
                              "it) or model.backbone (a randomly initialised baseline)")
        rank_zero_warn(f"{who}: no model.init_from, so this starts from a randomly initialised backbone")
        spec = BackboneSpec(name, dict(args or {}), in_channels)
        return spec.build(), spec
    ckpt = load_checkpoint(init_from)
    found, state = backbone_spec(ckpt, init_from), backbone_state(ckpt)
    if name == "frames" != found.name:
        found, state = per_frame(found, state)
    spec = BackboneSpec(name or found.name, dict(found.args if args is None else args), in_channels,
                        found.normalization)
    check_same_architecture(found, spec, init_from)
    return built_with(spec, state, init_from), spec


def check_same_architecture(spec: BackboneSpec, expected: BackboneSpec, path: str | Path) -> None:
    """Refuse a checkpoint whose backbone is not the one a config asks for, naming both."""
    if spec != expected:
        raise ConfigError(
            f"checkpoint {path} holds a {spec} backbone, but the config asks for {expected}; drop "
            "model.backbone/backbone_args from the config (they are read from the checkpoint) or set them to the "
            f"checkpoint's, and use data with {spec.in_channels} channel(s)"
        )
