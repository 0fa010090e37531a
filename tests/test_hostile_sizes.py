"""Sizes read from a checkpoint, a ``backbone.json``, the environment or the command line, and the other inputs the
second hostile pass found ending in a traceback: each is one line and exit 2, before anything is allocated or
written. Run in this process (`hostile.cli`); the next bad input is one row of ROWS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from clirun import REPO
from hostile import cli, photos
from selfsup.eval.checkpoint import BackboneSpec

SIMCLR = str(REPO / "experiments/simclr/mnist5k.yaml")
DATA = str(REPO / "experiments/eval/mnist5k.yaml")
FIT = ["fit", "-c", SIMCLR, "--trainer.max_steps", "1", "--data.init_args.num_workers", "0"]
SPEC = BackboneSpec("resnet18", {"width": 4, "cifar_stem": True}, 1)
TRANSFORM = {"channels": 1, "resize": 28, "size": 28, "mean": None, "std": None}


def checkpoint(path: Path, **hparams) -> Path:
    """A minimal selfsup checkpoint of a width-4 ResNet-18 whose hyper-parameters have ``hparams``."""
    state = {f"backbone.{k}": v for k, v in SPEC.build().state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"backbone": SPEC.name, "backbone_args": SPEC.args,
                                                          "in_channels": 1, **hparams}}, path)
    return path


def export(folder: Path, **spec) -> Path:
    """``backbone.pt`` and a ``backbone.json`` with ``spec`` over a good one."""
    torch.save(SPEC.build().state_dict(), folder / "backbone.pt")
    good = {"backbone": SPEC.name, "backbone_args": SPEC.args, "in_channels": 1, "eval_transform": TRANSFORM}
    (folder / "backbone.json").write_text(json.dumps({**good, **spec}))
    return folder / "backbone.pt"


def load_backbone(path: Path, capsys) -> tuple[int, str]:
    """``selfsup.load_backbone`` as a row: exit 2 and its message for selfsup's own error."""
    import selfsup
    from selfsup.errors import ConfigError

    try:
        selfsup.load_backbone(path)
    except ConfigError as err:
        return 2, f"selfsup: error: {err}"
    return 0, ""


# name: (how the row runs, given the working folder; the message's fragment)
ROWS = {
    "checkpoint width 200000": (lambda d, c: cli("export", "--ckpt", str(checkpoint(
        d / "w.ckpt", backbone_args={"width": 200_000, "cifar_stem": True})), "--out", "b.pt", capsys=c),
        "width 200,000 is over the cap of 16,384 (raise it with SELFSUP_MAX_BACKBONE_WIDTH)"),
    "checkpoint in_channels 10**7": (lambda d, c: cli("knn", "--ckpt", str(checkpoint(
        d / "c.ckpt", in_channels=10**7)), "-c", DATA, capsys=c),
        "in_channels 10,000,000 is over the cap of 1,024 (raise it with SELFSUP_MAX_IN_CHANNELS)"),
    "checkpoint width a string": (lambda d, c: cli("export", "--ckpt", str(checkpoint(
        d / "s.ckpt", backbone_args={"width": "4"})), "--out", "b.pt", capsys=c),
        "width must be at least 1, got '4'"),
    "checkpoint backbone_args a list": (lambda d, c: cli("export", "--ckpt", str(checkpoint(
        d / "l.ckpt", backbone_args=[1, 2])), "--out", "b.pt", capsys=c),
        "records its backbone in a form selfsup did not write"),
    "checkpoint weights of another shape": (lambda d, c: load_backbone(checkpoint(
        d / "x.ckpt", backbone_args={"width": 8, "cifar_stem": True}), c),
        "do not fit its resnet18(cifar_stem=True, width=8, in_channels=1) backbone"),
    "backbone.json eval size 10**5": (lambda d, c: load_backbone(export(
        d, eval_transform={**TRANSFORM, "size": 10**5}), c),
        "size 100,000 is over the cap of 8,192 (raise it with SELFSUP_MAX_IMAGE_SIDE)"),
    "backbone.json width 200000": (lambda d, c: load_backbone(export(d, backbone_args={"width": 200_000}), c),
                                   "width 200,000 is over the cap of 16,384"),
    "backbone.json missing": (lambda d, c: load_backbone(export(d) and (d / "backbone.json").unlink() or
                                                         d / "backbone.pt", c),
                              "backbone spec"),
    "load_backbone of a FIFO": (lambda d, c: load_backbone(Path("/dev/stdin"), c), "not a regular file"),
    "--model.backbone_args width 100000": (lambda d, c: cli(*FIT, "--model.init_args.backbone_args",
                                                           "{width: 100000}", capsys=c),
                                           "model.backbone_args: width 100,000 is over the cap of 16,384"),
    "--data.image_size -28": (lambda d, c: cli(*FIT, "--data.init_args.image_size", "-28", capsys=c),
                              "data.image_size: image_size must be at least 1, got -28"),
    "--threads 100000": (lambda d, c: cli(*FIT, "--threads", "100000", capsys=c),
                         "--threads 100000 is more than 4x this machine's"),
    "SELFSUP_MAX_PIXELS=inf": (lambda d, c: cli("shards", "write", "--from", str(photos(d / "pics")), "--out",
                                                str(d / "out"), "--quiet", capsys=c),
                               "SELFSUP_MAX_PIXELS='inf' is not a finite number"),
    "--ckpt_path best": (lambda d, c: cli("validate", *FIT[1:], "--ckpt_path", "best", capsys=c),
                         "--ckpt_path best is not supported by selfsup; give the checkpoint file itself"),
    "--ckpt_path a folder": (lambda d, c: cli(*FIT, "--ckpt_path", str(d), capsys=c),
                             "is a folder; give a checkpoint file written by selfsup"),
    "SELFSUP_TRUST=jsonargparse": (lambda d, c: cli(*FIT, "--print_config", capsys=c),
                                   "SELFSUP_TRUST=jsonargparse is refused: Import paths under 'jsonargparse' can't be"),
    "plot --out x.txt": (lambda d, c: cli("plot", "--ckpt", str(checkpoint(d / "p.ckpt")), "-c", DATA, "--out",
                                          "x.txt", capsys=c),
                         "--out x.txt: a figure is written as png, pdf, svg, jpg, jpeg"),
    "--weights_only false": (lambda d, c: cli(*FIT, "--ckpt_path", str(checkpoint(d / "r.ckpt", _class_path=
                                                                                   "selfsup.methods.RotNet")),
                                              "--weights_only", "false", capsys=c),
                             "was written by RotNet, but the config trains SimCLR"),
}


@pytest.mark.parametrize("name", ROWS)
def test_hostile_sizes_and_inputs_are_one_line(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if name.startswith("SELFSUP_"):
        monkeypatch.setenv(*name.split("="))
    run, message = ROWS[name]
    code, printed = run(tmp_path, capsys)
    errors = [line for line in printed.splitlines() if line.startswith("selfsup: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], printed[-2000:]
    assert "Traceback" not in printed
