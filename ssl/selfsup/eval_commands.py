"""`selfsup knn`, `selfsup export` and `selfsup plot`: evaluation commands on a checkpoint.

    selfsup knn --ckpt runs/.../last.ckpt -c experiments/eval/mnist5k.yaml [--k 10 20 100 200] [--temperature 0.07]
    selfsup export --ckpt runs/.../last.ckpt --out backbone.pt
    selfsup plot --ckpt runs/.../last.ckpt -c experiments/eval/mnist5k.yaml --out emb.png
    selfsup reconstruct --ckpt runs/.../last.ckpt -c experiments/simmim/mnist5k-vit-tiny.yaml --out recon.png

``-c`` takes a YAML file with a ``data:`` section as in `selfsup fit -c` configs (any fit config works).
torch and the data pipeline are imported once the arguments are parsed and the checkpoint's path is checked, so
``--help`` and a wrong path answer at once.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from selfsup.cli_checks import check_option_names
from selfsup.errors import ConfigError
from selfsup.gate import existing_checkpoint
from selfsup.signatures import nearest
from selfsup.training.runs import eval_folder

if TYPE_CHECKING:
    import torch

    from selfsup.data import SSLDataModule
    from selfsup.eval.checkpoint import BackboneSpec


DATA_HELP = ("the data: -c YAML with a data: section (any fit config), and/or --data.* options as `selfsup fit` "
             "takes them (e.g. --data.source shards:DIR --data.image_size 64)")


def load_data(config: Path | None, need_labels: bool, what: str, label: str | None = None,
              overrides: Sequence[str] = ()) -> SSLDataModule:
    """The SSLDataModule of the ``data:`` section of ``config`` (a fit config or just a data block; None: none),
    with the dotted ``overrides`` (``--data.source shards:DIR``) applied; ``label`` replaces its ``label`` (which
    label kNN and the probes read)."""
    section = {"class_path": "selfsup.data.SSLDataModule", "init_args": {}}
    if config is not None:
        raw = _data_section(config)
        section = raw if "class_path" in raw else {**section, "init_args": raw}
    elif not any(o.split("=")[0] in ("--data.source", "--data.init_args.source") for o in overrides):
        raise ConfigError(f"{what} needs {DATA_HELP}")
    from jsonargparse import ArgumentParser

    from selfsup.data import SSLDataModule

    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(SSLDataModule, "data")
    given = ["--data", json.dumps(section), *overrides, *(["--data.label", label] if label is not None else [])]
    data = parser.instantiate_classes(parser.parse_args(given))["data"]
    if need_labels and data.num_classes == 0:
        raise ConfigError(f"{what} needs labels, but data source {data.source.spec!r} has no classes; "
                          "give a labelled source (e.g. builtin:mnist5k)")
    return data


def _data_section(config: Path) -> dict:
    """The ``data:`` section of the YAML file ``config``."""
    if not config.is_file():
        raise ConfigError(f"data config {config} does not exist; give a YAML file with a data: section "
                          "(e.g. experiments/eval/mnist5k.yaml)")
    try:
        raw = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{config} is not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(raw, dict) or "data" not in raw:
        raise ConfigError(f"{config} has no data: section; write one as in experiments/eval/mnist5k.yaml")
    return raw["data"] or {}


def parse_with_data(parser: argparse.ArgumentParser, argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """``argv`` parsed, its ``--data.*`` options (and their values) set aside as overrides of the data section and
    checked against the data's options before torch loads; any other unknown option is refused with the nearest."""
    args, rest = parser.parse_known_args(argv)
    stray = next((t for i, t in enumerate(rest) if (i == 0 or t.startswith("-")) and not t.startswith("--data.")),
                 None)
    if stray is not None:
        known = [o for action in parser._actions for o in action.option_strings if o not in ("-h", "--help")]
        raise ConfigError(f"{parser.prog}: unrecognized argument {stray}{nearest(stray, known)}; see "
                          f"{parser.prog} --help")
    check_option_names([*(["-c", str(args.config)] if getattr(args, "config", None) else []), *rest])
    return args, rest


@contextmanager
def writing(out: Path) -> Iterator[None]:
    """Turn a failure to write ``out`` (read-only folder, no permission, full disk) into one line."""
    try:
        yield
    except OSError as err:
        raise ConfigError(f"cannot write {out} ({err.strerror or err}); choose a writable --out") from None


def _device(name: str | None) -> torch.device:
    """The device ``--device`` names (default: cuda when available); a CUDA device must exist."""
    import torch

    if name and name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA GPU is available here (torch {torch.__version__}, "
                          f"built for CUDA {torch.version.cuda or 'none'}); use --device cpu or run on a GPU node")
    try:
        return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        raise ConfigError(f"--device {name!r} is not a device ({err}); use cpu or cuda") from None


def _checked_device_and_checkpoint(args: argparse.Namespace) -> torch.device:
    """``--device`` (a CUDA one must exist) with ``--ckpt`` through the gate; without ``--device`` the path is
    checked first, before torch loads, so a wrong one is refused at once."""
    if args.device is None:
        existing_checkpoint(args.ckpt)
    device = _device(args.device)
    existing_checkpoint(args.ckpt)
    return device


def _backbone_for(ckpt: Path, data: SSLDataModule, frames: bool = False) -> tuple[torch.nn.Module, BackboneSpec]:
    """The checkpoint's backbone (with ``frames``, its image backbone run on each frame), refused with one line
    when it cannot read the data's media (a 2-D backbone and video clips, or the reverse) or channels. The data's
    evaluation images get the backbone's pretraining normalisation (unless its views set one)."""
    from selfsup.eval.checkpoint import load_backbone

    backbone, spec = load_backbone(ckpt, frames=frames)
    if backbone.media != data.media:
        hint = " (--frames runs an image backbone on each frame of the videos)" if data.media == "video" else ""
        raise ConfigError(f"checkpoint {ckpt} holds an {backbone.media} backbone ({spec}), but data source "
                          f"{data.source.spec!r} holds {data.media}s; give {backbone.media} data (-c) or a "
                          f"checkpoint trained on {data.media}s{hint}")
    if spec.in_channels != data.num_channels:
        raise ConfigError(f"checkpoint {ckpt} holds a backbone of {spec.in_channels} input channel(s), but data "
                          f"source {data.source.spec!r} has {data.num_channels}; give data like the pretraining's")
    data.input_normalization = spec.normalization
    return backbone, spec


def command_parser(name: str, description: str, data: bool = True, config_required: bool = False
                   ) -> argparse.ArgumentParser:
    """The parser of ``selfsup NAME`` with ``--ckpt`` and, with ``data``, the data options and ``--device``; no
    abbreviated options (``--temp`` for ``--temperature`` is refused, not guessed)."""
    parser = argparse.ArgumentParser(prog=f"selfsup {name}", description=description, allow_abbrev=False,
                                     epilog=f"data: {DATA_HELP}" if data else None)
    parser.add_argument("--ckpt", type=Path, required=True, help="a checkpoint written by `selfsup fit` "
                        "(RUN/checkpoints/last.ckpt)")
    if data:
        parser.add_argument("-c", "--config", type=Path, required=config_required,
                            help="YAML with a data: section" + ("" if config_required else " (or --data.* options)"))
        parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    return parser


def _frames_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--frames", action="store_true", help="video data: run the checkpoint's image backbone on "
                        "each frame and average (a single-frame baseline, blind to motion)")


DEFAULT_K = (10, 20, 100, 200)


def knn_main(argv: list[str]) -> None:
    """Weighted kNN top-1/top-5 of val queries against the un-augmented train bank, for each k; a table on
    stdout and ``knn.json`` in the run's ``eval/knn-TIME/`` (``<checkpoint>.knn.json`` outside a run folder)."""
    parser = command_parser("knn", knn_main.__doc__.split(";")[0])
    _frames_flag(parser)
    parser.add_argument("--k", type=int, nargs="+", default=None,
                        help=f"neighbours (default: {' '.join(map(str, DEFAULT_K))}, those up to the bank's size)")
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--label", default=None,
                        help="the label to classify: cls (the class, the default) or a json field the data declares "
                             "(builtin:moving-mnist: direction)")
    parser.add_argument("--out", type=Path, default=None,
                        help="JSON file (default: RUN/eval/knn-TIME/knn.json, or beside a checkpoint outside a run)")
    args, overrides = parse_with_data(parser, argv)
    if args.k and min(args.k) < 1:
        raise ConfigError(f"--k must be at least 1, got {min(args.k)}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ConfigError(f"--temperature must be a positive number, got {args.temperature} (the default is 0.07)")
    device = _checked_device_and_checkpoint(args)
    from selfsup.eval.features import split_features
    from selfsup.eval.knn import knn_evaluate
    from selfsup.training.atomic import atomic_write, check_target

    folder = eval_folder(args.ckpt, "knn")
    out = args.out or (folder / "knn.json" if folder else args.ckpt.with_suffix(".knn.json"))
    check_target(out, [args.ckpt])  # before the evaluation, not after
    data = load_data(args.config, need_labels=True, what="kNN", label=args.label, overrides=overrides)
    data.source.split("val")  # no val split: refused before the bank is embedded
    backbone, spec = _backbone_for(args.ckpt, data, args.frames)
    bank, bank_labels = split_features(backbone.to(device), data, "train", device, progress=True)
    queries, query_labels = split_features(backbone, data, "val", device, progress=True)
    ks = args.k or [k for k in DEFAULT_K if k <= len(bank)] or [len(bank)]
    rows = knn_evaluate(bank, bank_labels, queries, query_labels, ks, args.temperature, data.num_classes)
    print(f"kNN of {len(queries)} val queries against {len(bank)} train samples ({spec}, T={args.temperature}, "
          f"label {data.label})")
    print(f"{'k':>6} {'top-1':>8} {'top-5':>8}")
    for r in rows:
        print(f"{r['k']:>6} {r['top1']:>8.4f} {r['top5']:>8.4f}")
    with writing(out):
        atomic_write(out, (json.dumps({"checkpoint": str(args.ckpt), "data": data.source.spec, "backbone": str(spec),
                                       "label": data.label, "temperature": args.temperature, "bank": len(bank),
                                       "queries": len(queries), "results": rows}, indent=1) + "\n").encode(),
                     [args.ckpt])
    print(f"written: {out}")


def export_main(argv: list[str]) -> None:
    """Write the checkpoint's backbone as a plain state dict under its library's keys (timm, torchvision)."""
    parser = command_parser("export", export_main.__doc__, data=False)
    parser.add_argument("--out", type=Path, required=True, help="where to write the state dict (.pt)")
    parser.add_argument("--force", action="store_true", help="replace --out (and its .json) if they exist")
    args = parser.parse_args(argv)
    existing_checkpoint(args.ckpt)  # before torch loads
    from selfsup.eval.export import describe, export_backbone

    with writing(args.out):
        print(describe(export_backbone(args.ckpt, args.out, force=args.force), args.out))


def plot_main(argv: list[str]) -> None:
    """t-SNE of the val features of a checkpoint's backbone, coloured by label, as a PNG."""
    parser = command_parser("plot", plot_main.__doc__)
    _frames_flag(parser)
    parser.add_argument("--out", type=Path, default=Path("embedding.png"))
    args, overrides = parse_with_data(parser, argv)
    device = _checked_device_and_checkpoint(args)
    from selfsup.eval.features import split_features
    from selfsup.eval.plot import figure_format, save_embedding_plot

    figure_format(args.out)  # before the evaluation, not after
    data = load_data(args.config, need_labels=False, what="plot", overrides=overrides)
    backbone, spec = _backbone_for(args.ckpt, data, args.frames)
    features, labels = split_features(backbone.to(device), data, "val", device, progress=True)
    with writing(args.out):
        out = save_embedding_plot(features, labels, args.out, data.source.label_classes(data.label),
                                  f"t-SNE of {len(labels)} val features, {spec.name}")
    print(f"written: {out}")


def masked_image_model(ckpt: Path, config: Path) -> torch.nn.Module:
    """The method of ``config``'s ``model.class_path`` (SimMIM, MAE: one with a ``reconstructor``) built from the
    hyper-parameters and weights of ``ckpt`` (read weights-only)."""
    import selfsup.methods
    from selfsup.eval.checkpoint import load_checkpoint

    raw = yaml.safe_load(config.read_text())
    class_path = str(((raw.get("model") or {}) if isinstance(raw, dict) else {}).get("class_path", ""))
    cls = getattr(selfsup.methods, class_path.removeprefix("selfsup.methods."), None)
    if not class_path.startswith("selfsup.methods.") or not hasattr(cls, "reconstructor"):
        raise ConfigError(f"reconstructions need the fit config of a masked-image run (model.class_path "
                          f"selfsup.methods.SimMIM or selfsup.methods.MAE), but {config} names {class_path or 'none'}")
    state = load_checkpoint(ckpt)
    try:  # another method's options (TypeError) or weights (RuntimeError)
        model = cls(**{k: v for k, v in state["hyper_parameters"].items() if not k.startswith("_")})
        model.load_state_dict(state["state_dict"])
    except (TypeError, RuntimeError):
        raise ConfigError(f"{ckpt} is not a {cls.__name__} checkpoint of this architecture; give the last.ckpt "
                          f"of the run {config} configured") from None
    return model.eval()


def reconstruct_main(argv: list[str]) -> None:
    """Original / masked / reconstruction of a few val images of a SimMIM or MAE checkpoint, as a PNG grid."""
    parser = command_parser("reconstruct", reconstruct_main.__doc__, config_required=True)
    parser.add_argument("--out", type=Path, default=Path("reconstruction.png"))
    parser.add_argument("--num-images", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="seed of the masks")
    args, overrides = parse_with_data(parser, argv)
    device = _checked_device_and_checkpoint(args)
    from selfsup.eval.plot import figure_format
    from selfsup.eval.reconstruction import reconstruction_rows, save_reconstruction_grid

    figure_format(args.out)
    data = load_data(args.config, need_labels=False, what="reconstruct", overrides=overrides)
    model = masked_image_model(args.ckpt, args.config).to(device)
    rows = reconstruction_rows(model.reconstructor(data.views), data, args.num_images, args.seed, device)
    title = f"{type(model).__name__} reconstructions ({args.ckpt.name})"
    print(f"written: {save_reconstruction_grid(rows, args.out, title)}")
