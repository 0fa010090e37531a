"""`selfsup knn`, `selfsup export` and `selfsup plot`: evaluation commands on a checkpoint.

    selfsup knn --ckpt runs/.../last.ckpt -c experiments/eval/mnist5k.yaml [--k 10 20 100 200] [--temperature 0.07]
    selfsup export --ckpt runs/.../last.ckpt --out backbone.pt
    selfsup plot --ckpt runs/.../last.ckpt -c experiments/eval/mnist5k.yaml --out emb.png

``-c`` takes a YAML file with a ``data:`` section as in `selfsup fit -c` configs (any fit config works).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import yaml

from selfsup.data import SSLDataModule
from selfsup.errors import ConfigError
from selfsup.eval.checkpoint import load_backbone


def load_data(config: Path, need_labels: bool, what: str) -> SSLDataModule:
    """The SSLDataModule of the ``data:`` section of ``config`` (a fit config or just a data block)."""
    from jsonargparse import ArgumentParser

    if not config.is_file():
        raise ConfigError(f"data config {config} does not exist; give a YAML file with a data: section "
                          "(e.g. experiments/eval/mnist5k.yaml)")
    try:
        raw = yaml.safe_load(config.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{config} is not valid YAML ({str(err).splitlines()[0]})") from err
    if not isinstance(raw, dict) or "data" not in raw:
        raise ConfigError(f"{config} has no data: section; write one as in experiments/eval/mnist5k.yaml")
    section = raw["data"] if "class_path" in (raw["data"] or {}) else {
        "class_path": "selfsup.data.SSLDataModule", "init_args": raw["data"] or {}}
    parser = ArgumentParser(exit_on_error=False)
    parser.add_subclass_arguments(SSLDataModule, "data")
    data = parser.instantiate_classes(parser.parse_object({"data": section}))["data"]
    if need_labels and data.num_classes == 0:
        raise ConfigError(f"{what} needs labels, but data source {data.source.spec!r} has no classes; "
                          "give a labelled source (e.g. builtin:mnist5k)")
    return data


@contextmanager
def writing(out: Path) -> Iterator[None]:
    """Turn a failure to write ``out`` (read-only folder, no permission, full disk) into one line."""
    try:
        yield
    except OSError as err:
        raise ConfigError(f"cannot write {out} ({err.strerror or err}); choose a writable --out") from None


def _device(name: str | None) -> torch.device:
    return torch.device(name or ("cuda" if torch.cuda.is_available() else "cpu"))


def _common(parser: argparse.ArgumentParser, data: bool = True) -> None:
    parser.add_argument("--ckpt", type=Path, required=True, help="a checkpoint written by `selfsup fit`")
    if data:
        parser.add_argument("-c", "--config", type=Path, required=True, help="YAML with a data: section")
        parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")


def knn_main(argv: list[str]) -> None:
    """Weighted kNN top-1/top-5 of val queries against the un-augmented train bank, for each k; a table on
    stdout and ``<checkpoint>.knn.json`` beside the checkpoint."""
    from selfsup.eval.features import split_features
    from selfsup.eval.knn import knn_evaluate

    parser = argparse.ArgumentParser(prog="selfsup knn", description=knn_main.__doc__.split(";")[0])
    _common(parser)
    parser.add_argument("--k", type=int, nargs="+", default=[10, 20, 100, 200])
    parser.add_argument("--temperature", type=float, default=0.07)
    parser.add_argument("--out", type=Path, default=None, help="JSON file (default: beside the checkpoint)")
    args = parser.parse_args(argv)
    if min(args.k) < 1:
        raise ConfigError(f"--k must be at least 1, got {min(args.k)}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        raise ConfigError(f"--temperature must be a positive number, got {args.temperature} (the default is 0.07)")
    backbone, spec = load_backbone(args.ckpt)
    data = load_data(args.config, need_labels=True, what="kNN")
    device = _device(args.device)
    bank, bank_labels = split_features(backbone.to(device), data, "train", device, progress=True)
    queries, query_labels = split_features(backbone, data, "val", device, progress=True)
    rows = knn_evaluate(bank, bank_labels, queries, query_labels, args.k, args.temperature, data.num_classes)
    print(f"kNN of {len(queries)} val queries against {len(bank)} train samples ({spec}, T={args.temperature})")
    print(f"{'k':>6} {'top-1':>8} {'top-5':>8}")
    for r in rows:
        print(f"{r['k']:>6} {r['top1']:>8.4f} {r['top5']:>8.4f}")
    out = args.out or args.ckpt.with_suffix(".knn.json")
    with writing(out):
        out.write_text(json.dumps({"checkpoint": str(args.ckpt), "data": data.source.spec, "backbone": str(spec),
                                   "temperature": args.temperature, "bank": len(bank), "queries": len(queries),
                                   "results": rows}, indent=1) + "\n")
    print(f"written: {out}")


def export_main(argv: list[str]) -> None:
    """Write the checkpoint's backbone as a plain state dict with torchvision's keys."""
    from selfsup.eval.export import describe, export_backbone

    parser = argparse.ArgumentParser(prog="selfsup export", description=export_main.__doc__)
    _common(parser, data=False)
    parser.add_argument("--out", type=Path, required=True, help="where to write the state dict (.pt)")
    parser.add_argument("--force", action="store_true", help="replace --out (and its .json) if they exist")
    args = parser.parse_args(argv)
    with writing(args.out):
        print(describe(export_backbone(args.ckpt, args.out, force=args.force), args.out))


def plot_main(argv: list[str]) -> None:
    """t-SNE of the val features of a checkpoint's backbone, coloured by label, as a PNG."""
    from selfsup.eval.features import split_features
    from selfsup.eval.plot import save_embedding_plot

    parser = argparse.ArgumentParser(prog="selfsup plot", description=plot_main.__doc__)
    _common(parser)
    parser.add_argument("--out", type=Path, default=Path("embedding.png"))
    args = parser.parse_args(argv)
    backbone, spec = load_backbone(args.ckpt)
    data = load_data(args.config, need_labels=False, what="plot")
    device = _device(args.device)
    features, labels = split_features(backbone.to(device), data, "val", device, progress=True)
    with writing(args.out):
        out = save_embedding_plot(features, labels, args.out, data.source.classes,
                                  f"t-SNE of {len(labels)} val features, {spec.name}")
    print(f"written: {out}")


COMMANDS = {"knn": knn_main, "export": export_main, "plot": plot_main}
