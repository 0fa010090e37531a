"""What timm and torchvision backbones share: names ``LIBRARY:MODEL[,key=value...]``, refusals of what a config may
not ask a library for (downloads, files), nearest-name suggestions, and the library's own parameter names.

A library backbone holds the library's model as ``model``; its state dict is the model's under ``model.`` (plus
SimMIM's ``mask_token``), so an export strips that prefix and the library loads the weights under its own names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
import yaml

from selfsup.backbones.base import Backbone
from selfsup.errors import ConfigError

LIBRARIES = ("timm", "torchvision")
MODEL_PREFIX = "model."

# Arguments a config may not pass to a library: they download weights or read files (a config names a model,
# never code or a file to load), or they change what the backbone returns.
REFUSED = {
    "checkpoint_path": "it loads a file; load weights with selfsup.load_backbone or model.init_from instead",
    "pretrained_cfg": "it points the model at weights to download", "pretrained_cfg_overlay": "likewise",
    "cache_dir": "nothing is downloaded", "weights": "nothing is downloaded", "features_only": "selfsup pools the "
    "last feature map itself", "num_classes": "selfsup's heads are its own (the classifier is left out)",
    "in_chans": "the data decides the input channels",
}


def is_library_name(name: str) -> bool:
    """Whether ``name`` names a timm or torchvision model (``timm:...``, ``torchvision:...``)."""
    return name.partition(":")[0] in LIBRARIES and ":" in name


def parse_name(name: str) -> tuple[str, str, dict[str, Any]]:
    """``LIBRARY:MODEL[,key=value...]`` -> (library, model, arguments); values read as YAML (``depths=[2,2]``)."""
    library, _, rest = name.partition(":")
    model, *pairs = re.split(r",(?![^\[]*\])", rest)  # commas inside [1,2] stay in the value
    args: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"backbone {name!r}: {pair!r} is not key=value; write e.g. {library}:{model},"
                              "drop_path_rate=0.1")
        args[key.strip()] = yaml.safe_load(value)
    return library, model.strip(), args


def check_arguments(name: str, args: dict[str, Any]) -> None:
    """Refuse ``pretrained=true`` and the arguments in ``REFUSED``, one line each."""
    if args.get("pretrained"):
        raise ConfigError(f"backbone {name!r}: pretrained=true is refused: selfsup downloads no weights; pretrain "
                          "here, or start from weights you have (a selfsup checkpoint as model.init_from, an export "
                          "with selfsup.load_backbone)")
    for key in args:
        if key in REFUSED:
            raise ConfigError(f"backbone {name!r}: the argument {key} is refused ({REFUSED[key]})")


def requested(name: str, args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """The model and its arguments that ``name`` and ``backbone_args`` ask for together, refusals checked."""
    _, model, named = parse_name(name)
    both = {**named, **args}
    check_arguments(name, both)
    return model, both


def unknown_model(library: str, model: str, known: list[str]) -> ConfigError:
    """The error for a model name the library does not have, with the nearest names it does have."""
    near = difflib.get_close_matches(model, known, n=5, cutoff=0.5)
    hint = f"; nearest: {', '.join(f'{library}:{n}' for n in near)}" if near else ""
    return ConfigError(f"{library} has no model {model!r}{hint} (selfsup backbones --search {model[:6]} lists "
                       "names)")


def python_value(value: Any) -> str:
    """``value`` as Python source (YAML's true/false/null become True/False/None)."""
    return repr(tuple(value) if isinstance(value, list) else value)


def call(function: str, args: dict[str, Any], *positional: Any) -> str:
    """``function(positional..., key=value, ...)`` as Python source."""
    values = [python_value(v) for v in positional] + [f"{k}={python_value(v)}" for k, v in args.items()]
    return f"{function}({', '.join(values)})"


# What torch says when a ConvNet's strides shrink an image below a kernel.
TOO_SMALL = ("Kernel size can't be greater than actual input size", "Output size is too small")


@contextmanager
def image_size_check(name: str, x: torch.Tensor) -> Iterator[None]:
    """Turn torch's error for images too small for the model's strides into one line naming the fix."""
    try:
        yield
    except RuntimeError as err:
        if not any(text in str(err) for text in TOO_SMALL):
            raise
        raise ConfigError(f"{name} shrinks {x.shape[-2]}x{x.shape[-1]} px images below its kernels; give it larger "
                          "images (data.image_size and the views' size) or smaller strides (e.g. a timm ConvNeXt's "
                          "patch_size=1 or output_stride=8)") from None


class LibraryBackbone(Backbone):
    """A timm or torchvision model as a backbone: ``model`` is the library's module (classifier removed)."""

    library: str
    model: torch.nn.Module

    def loading_lines(self, path: str) -> list[str]:
        """Python lines that build this model in its library and load an export at ``path`` into it."""
        raise NotImplementedError

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Loads selfsup's state dict, or an export's under the library's own names (the model's keys; a mask
        token it leaves out keeps its value)."""
        if state_dict and not any(k.startswith(MODEL_PREFIX) for k in state_dict):
            own = {k: v for k, v in self.state_dict().items() if not k.startswith(MODEL_PREFIX)}
            state_dict = {**own, **{MODEL_PREFIX + k: v for k, v in state_dict.items()}}
        return super().load_state_dict(state_dict, strict, assign)


def library_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A library backbone's state dict under the library's own names: the model's entries, prefix removed
    (SimMIM's mask token, a pretraining-only parameter, is left out)."""
    return {k[len(MODEL_PREFIX):]: v for k, v in state.items() if k.startswith(MODEL_PREFIX)}
