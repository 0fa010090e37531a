"""Export a checkpoint's backbone as a plain state dict keyed as its library's model.

A ``timm:`` or ``torchvision:`` backbone is written under the library's own parameter names, with the library,
model and arguments in the ``.json`` beside it, and the message shows the lines that load it there. selfsup's
ResNets use torchvision's parameter names, so the keys carry over unchanged; what the export checks and reports
is which keys and shapes torchvision's model would not accept (a tiny CPU variant, 1-channel input, a CIFAR stem).
Every export loads into ``selfsup.load_backbone`` with the spec written beside the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torchvision
from torchvision.transforms import v2

from selfsup.backbones.library import is_library_name, library_state
from selfsup.data.limits import check_sizes
from selfsup.errors import ConfigError
from selfsup.eval.checkpoint import (
    BackboneSpec,
    backbone_spec,
    backbone_state,
    built_with,
    load_checkpoint,
    read_weights,
)
from selfsup.eval.transform import KEY, build_transform
from selfsup.gate import existing_checkpoint
from selfsup.training.atomic import atomic_save, atomic_write, check_target

# Keys of a torchvision classification model that a backbone does not have (the classifier).
HEAD_PREFIXES = ("fc.", "classifier.", "head.", "heads.")


@dataclass
class ExportReport:
    """What an export wrote and what torchvision's model of the same name would not take."""

    spec: BackboneSpec
    keys: int
    torchvision_model: str | None
    unmapped: list[str] = field(default_factory=list)  # our keys torchvision's model does not have
    missing: list[str] = field(default_factory=list)  # its keys (classifier aside) we do not provide
    shape_mismatch: list[str] = field(default_factory=list)
    library_lines: list[str] = field(default_factory=list)  # a timm/torchvision backbone: how its library loads it

    @property
    def loads_into_torchvision(self) -> bool:
        return self.torchvision_model is not None and not (self.unmapped or self.missing or self.shape_mismatch)


def torchvision_state_shapes(name: str) -> dict[str, torch.Size] | None:
    """Parameter and buffer shapes of torchvision's ``name`` without its classifier (None: no such model)."""
    if name not in torchvision.models.list_models(module=torchvision.models):
        return None
    with torch.device("meta"):
        model = torchvision.models.get_model(name, weights=None)
    return {k: v.shape for k, v in model.state_dict().items() if not k.startswith(HEAD_PREFIXES)}


def to_library_keys(state: dict[str, torch.Tensor], spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """Rename selfsup keys to the library's: a timm/torchvision backbone's model keys without their prefix;
    identity for the ResNet family (built on torchvision's blocks)."""
    return library_state(state) if is_library_name(spec.name) else dict(state)


def description(spec: BackboneSpec) -> dict:
    """The ``.json`` beside an export: the spec, and for a library backbone its library, model and the arguments
    its constructor gets."""
    info = {"backbone": spec.name, "backbone_args": spec.args, "in_channels": spec.in_channels}
    if is_library_name(spec.name):
        backbone = meta_backbone(spec)
        info.update(library=backbone.library, model=backbone.model_name, arguments=backbone.arguments)
    return info


def meta_backbone(spec: BackboneSpec) -> torch.nn.Module:
    """The spec's backbone with its tensors on the meta device (its structure, no memory, no initialisation)."""
    with torch.device("meta"):
        return spec.build()


def library_report(spec: BackboneSpec, state: dict[str, torch.Tensor], out: Path) -> ExportReport:
    """What the library's own model would not accept of ``state``, and the lines that load it there."""
    backbone = meta_backbone(spec)
    expected = {k: v.shape for k, v in backbone.model.state_dict().items()}
    report = ExportReport(spec, len(state), None, library_lines=backbone.loading_lines(str(out)))
    report.unmapped, report.missing = sorted(set(state) - set(expected)), sorted(set(expected) - set(state))
    report.shape_mismatch = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k])
    return report


def spec_path(weights: Path) -> Path:
    """The backbone spec written beside exported weights: their name with suffix ``.json``."""
    return Path(weights).with_suffix(".json")


def check_outputs(out: Path, source: Path, force: bool) -> None:
    """Refuse an ``out`` whose spec would be the same file, a shard set's manifest, the checkpoint being read, a link,
    a special file, and any existing file unless ``force``; before anything is written."""
    if spec_path(out) == out:
        raise ConfigError(f"--out {out} would be overwritten by its own spec ({spec_path(out).name}); give the "
                          "weights another suffix, e.g. --out backbone.pt")
    for path in (out, spec_path(out)):
        if path.name == "manifest.json" and path.exists():
            raise ConfigError(f"export would overwrite {path}, a shard set's manifest; choose another --out")
        check_target(path, [source], replace=force)


def export_backbone(ckpt_path: str | Path, out: str | Path, force: bool = False) -> ExportReport:
    """Write the checkpoint's backbone weights to ``out`` (``torch.save`` of a plain dict of tensors) and its
    spec beside it (``spec_path``); return what torchvision's model of that name would not accept.
    Existing regular files are replaced only with ``force`` (never the checkpoint itself, a manifest, a link or a
    special file), each whole or not at all."""
    out, source = Path(out), Path(ckpt_path)
    check_outputs(out, source, force)
    ckpt = load_checkpoint(ckpt_path)
    spec = backbone_spec(ckpt, ckpt_path)
    state = {k: v.contiguous() for k, v in to_library_keys(backbone_state(ckpt), spec).items()}
    atomic_save(state, out, [source], replace=force)
    written = {**description(spec), "eval_transform": ckpt.get(KEY)}
    atomic_write(spec_path(out), (json.dumps(written, indent=1) + "\n").encode(), [source], replace=force)
    if is_library_name(spec.name):
        return library_report(spec, state, out)
    expected = torchvision_state_shapes(spec.name)
    report = ExportReport(spec, len(state), spec.name if expected is not None else None)
    if expected is not None:
        report.unmapped = sorted(set(state) - set(expected))
        report.missing = sorted(set(expected) - set(state))
        report.shape_mismatch = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k])
    return report


def load_exported(path: str | Path) -> tuple[torch.nn.Module, v2.Compose]:
    """The backbone of an export (``backbone.pt`` with its ``backbone.json``) or of a checkpoint (``.ckpt``), in
    eval mode, and the transform of its evaluation images (PIL image or uint8 tensor -> input tensor)."""
    path = Path(path)
    if path.suffix == ".ckpt" or path.is_dir():
        from selfsup.eval.checkpoint import load_backbone as from_checkpoint

        backbone, _ = from_checkpoint(path)
        return backbone, build_transform(load_checkpoint(path).get(KEY), str(path))
    described = spec_path(path)
    state = read_weights(path, "exported backbone")
    try:
        info = json.loads(existing_checkpoint(described, "backbone spec").read_text())
        spec = BackboneSpec(str(info["backbone"]), dict(info.get("backbone_args") or {}), info["in_channels"])
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise ConfigError(f"{described} is not a backbone description written by `selfsup export` ({err})") from None
    check_sizes({**spec.args, "in_channels": spec.in_channels}, str(described))
    return built_with(spec, state, path).eval(), build_transform(info.get(KEY), str(described))


def describe(report: ExportReport, out: str | Path) -> str:
    """A few lines for the user: what was written and how to load it."""
    lines = [f"wrote {report.keys} tensors of backbone {report.spec} to {out} (spec: {spec_path(Path(out))})"]
    if report.library_lines and not (report.unmapped or report.missing or report.shape_mismatch):
        library = report.spec.name.partition(":")[0]
        lines.append(f"load it into {library} with:")
        lines += [f"    import torch, {library}", *(f"    {line}" for line in report.library_lines)]
        lines.append(f"or: backbone, transform = selfsup.load_backbone({str(out)!r})")
        return "\n".join(lines)
    if report.loads_into_torchvision:
        lines.append(f"loads into torchvision.models.{report.torchvision_model}() with "
                     "load_state_dict(state, strict=False): only the classifier (fc) is left out")
        lines.append(f"or: backbone, transform = selfsup.load_backbone({str(out)!r})")
        return "\n".join(lines)
    if report.torchvision_model is None and not report.library_lines:
        lines.append(f"torchvision has no model named {report.spec.name!r}: no key could be mapped to torchvision")
    for what, keys in (("keys torchvision's model does not have", report.unmapped),
                       ("torchvision keys not in the checkpoint", report.missing),
                       ("keys whose shapes differ from torchvision's", report.shape_mismatch)):
        if keys:
            shown = ", ".join(keys[:6]) + (f", ... ({len(keys)} in all)" if len(keys) > 6 else "")
            lines.append(f"cannot map to torchvision.models.{report.spec.name}: {what}: {shown}")
    lines.append(f"load it with: backbone, transform = selfsup.load_backbone({str(out)!r})")
    lines.append(f"or build it with selfsup.backbones.build_backbone({report.spec.name!r}, "
                 f"in_channels={report.spec.in_channels}, **{report.spec.args})")
    return "\n".join(lines)
