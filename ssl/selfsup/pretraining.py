"""``selfsup pretrain PATH`` and ``selfsup.pretrain(...)``: a folder of images (or a shard set) to an exported
backbone in one command.

It takes the method's photo recipe (``experiments/METHOD/photos.yaml``), sizes it to the machine and the data,
writes shards of a folder (listing the files it passes over), runs ``selfsup fit`` with every choice given as an
option (so the run's ``config.yaml`` holds them all and ``selfsup fit -c RUN/config.yaml`` trains it again), and
exports the backbone to ``RUN/export/``. Options it does not know go to ``selfsup fit`` as they are.
"""

from __future__ import annotations

import argparse
import difflib
import math
import os
import shlex
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from selfsup.errors import ConfigError
from selfsup.recipes import PACKAGED, recipe_path

DEFAULT_METHOD = "simclr"  # the docs' recommendation for photos: image-level features for classification
CPU_STEPS = 300  # what a CPU run aims at when --epochs is not given (minutes, not hours, on 2 cores)
VAL_FRACTION = 0.1  # held out of each class of a labelled folder for the kNN before/after
GPU_BACKBONES = {"resnet18": "resnet50", "vit_tiny": "vit_s_16"}  # the CPU recipe's backbone -> the papers'
SIZE_ARGS = ("width", "cifar_stem", "patch_size", "num_layers", "num_heads", "hidden_dim", "mlp_dim")
GPU_IMAGE_SIZE, GPU_BATCH = 224, 256


@dataclass
class Plan:
    """What a pretraining run will do: the recipe, the options given to ``selfsup fit`` and why each."""

    recipe: str
    name: str
    options: list[tuple[str, str, str]] = field(default_factory=list)  # (option, value, why)
    notes: list[str] = field(default_factory=list)

    def choose(self, option: str, value: object, why: str) -> None:
        self.options.append((option, str(value), why))

    def fit_args(self, extra: list[str]) -> list[str]:
        return ["fit", "-c", self.recipe, *(w for option, value, _ in self.options for w in (option, value)),
                *extra]


def photo_methods() -> list[str]:
    """The methods that have a photo recipe (``experiments/METHOD/photos.yaml``; ``eval/`` holds evaluation data)."""
    return sorted(p.parent.name for p in PACKAGED.glob("*/photos.yaml") if p.parent.name != "eval")


def default_name(method: str, path: Path) -> str:
    """The run's name without ``--name``: METHOD-FOLDER (runs/simclr-photos/version_N)."""
    return f"{method.lower()}-{path.resolve().name}"


def photo_recipe(method: str) -> str:
    """``experiments/METHOD/photos.yaml`` (the packaged recipe unless there is a copy here)."""
    recipe = f"experiments/{method.lower()}/photos.yaml"
    if not recipe_path(recipe).is_file():
        near = difflib.get_close_matches(method.lower(), photo_methods(), n=1)
        hint = f"did you mean {near[0]}? " if near else ""
        raise ConfigError(f"--method {method}: no photo recipe for it; {hint}choose one of: "
                          f"{', '.join(photo_methods())}")
    return recipe


def shard_set(path: Path, shards: Path | None, say: Callable[[str], None]) -> Path:
    """The shard set of ``path``: itself when it is one, else the shards written from the folder (to ``shards``,
    default ``data/shards/NAME``; reused when written before), with the files passed over listed."""
    if (path / "manifest.json").is_file():
        return path
    from selfsup.data.folders import list_folder
    from selfsup.data.shard_tools import write

    out = shards or Path("data/shards") / path.resolve().name
    if (out / "manifest.json").is_file():
        say(f"shards: {out} (written before; delete it to write them again from {path})")
        return out
    listing = list_folder(path)
    labelled = bool(listing.classes) and "val" not in listing.splits
    fraction = VAL_FRACTION if labelled else 0.0
    say(f"shards: writing {path} to {out}" + (f", {fraction:.0%} of each class held out as val" if fraction else ""))
    write(argparse.Namespace(source=str(path), out=str(out), maxcount=None, maxsize=None, val_fraction=fraction,
                             channels=None, name=None, seed=0, quiet=not sys.stdout.isatty()))
    return out


def machine(device: str) -> str:
    """``gpu`` or ``cpu``: what the run is sized for."""
    import torch

    if device == "gpu" and not torch.cuda.is_available():
        raise ConfigError("--device gpu: no CUDA GPU is visible here; use --device cpu (or auto)")
    return "gpu" if device == "gpu" or (device == "auto" and torch.cuda.is_available()) else "cpu"


def plan(recipe: str, source: Path, name: str, where: str, epochs: int | None) -> Plan:
    """The options that fit the recipe to this data and machine (see the module docstring)."""
    from selfsup.data.sources import Source

    raw = yaml.safe_load(recipe_path(recipe).read_text())
    data = Source(f"shards:{source}")
    train = data.split("train").num_samples
    result = Plan(recipe, name)
    result.choose("--data.init_args.source", f"shards:{source}", f"{train} training images")
    result.choose("--name", name, f"the run folder runs/{name}/version_N")
    size_to_machine(result, raw["model"]["init_args"], where)
    wanted = GPU_BATCH if where == "gpu" else int(raw["data"]["init_args"]["batch_size"])
    batch = min(wanted, 2 ** int(math.log2(max(train // 2, 1))))
    result.choose("--data.init_args.batch_size", batch,
                  "the recipe's" if batch == wanted else f"at least 2 steps an epoch of {train} images")
    steps, schedule = train // batch, int(raw["trainer"]["max_epochs"])
    if epochs is None:
        epochs = schedule if where == "gpu" else max(1, min(schedule, math.ceil(CPU_STEPS / max(steps, 1))))
        why = "the recipe's" if epochs == schedule else f"about {CPU_STEPS} steps on a CPU; --epochs to change"
    else:
        why = "--epochs"
    result.choose("--trainer.max_epochs", epochs, f"{why}: {epochs} x {steps} steps")
    if not (data.label_classes("cls") and data.has_split("val")):
        result.notes.append("no class folders (or no val split): no kNN before/after")
    return result


def size_to_machine(result: Plan, model: dict, where: str) -> None:
    """A GPU gets the papers' backbone at 224 px; a CPU keeps the recipe's small one, its loader workers and
    torch's threads sharing the cores, with a note of what a GPU would train."""
    cores = os.cpu_count() or 1
    gpu_workers = min(8, max(1, cores - 1))
    backbone = GPU_BACKBONES.get(model["backbone"], model["backbone"])
    if where == "gpu":
        kept = {k: v for k, v in (model.get("backbone_args") or {}).items() if k not in SIZE_ARGS}
        result.choose("--model.init_args.backbone", backbone, "the papers' backbone on a GPU")
        result.choose("--model.init_args.backbone_args", yaml.safe_dump(kept, default_flow_style=True).strip(),
                      "its own sizes")
        result.choose("--data.init_args.image_size", GPU_IMAGE_SIZE, "the papers' view size")
        result.choose("--data.init_args.num_workers", gpu_workers, "loader processes making the views")
        return
    workers = 1 if cores <= 2 else min(8, cores // 2)
    result.choose("--threads", max(1, cores - workers), f"{cores} cores: the loader workers' are left free")
    result.choose("--data.init_args.num_workers", workers, "loader processes making the views")
    result.notes.append(f"on a GPU this would train {backbone} at {GPU_IMAGE_SIZE} px, batch {GPU_BATCH}, "
                        f"{gpu_workers} loader worker(s)")


def pretrain(path: str | os.PathLike, method: str = DEFAULT_METHOD, name: str | None = None,
             epochs: int | None = None, shards: str | os.PathLike | None = None, device: str = "auto",
             fit_options: list[str] | tuple[str, ...] = ()) -> Path:
    """Pretrain ``method`` on the images under ``path`` (a folder, or a shard set) with its photo recipe sized to
    this machine; returns the exported backbone (``RUN/export/backbone.pt``, which ``selfsup.load_backbone``
    reads). ``fit_options``: further ``selfsup fit`` options, e.g. ``["--trainer.max_steps", "10"]``."""
    def say(line: str) -> None:
        print(f"pretrain: {line}", flush=True)

    folder = Path(str(path).removeprefix("shards:").removeprefix("folder:"))
    if not folder.is_dir():
        raise ConfigError(f"{folder} is not a folder; give a folder of images (ROOT/CLASS/*.jpg or ROOT/*.jpg) "
                          "or a shard set (a folder with manifest.json)")
    recipe = photo_recipe(method)
    where = machine(device)
    source = shard_set(folder, Path(shards) if shards else None, say)
    run_name = name or default_name(method, folder)
    chosen = plan(recipe, source, run_name, where, epochs)
    if device == "cpu":
        chosen.choose("--trainer.accelerator", "cpu", "--device cpu")
    say(f"{method} with {recipe} on a {where.upper()}; options given to selfsup fit:")
    for option, value, why in chosen.options:
        say(f"  {option} {value}   ({why})")
    for note in chosen.notes:
        say(note)
    args = chosen.fit_args(list(fit_options))
    say("the same run by hand: selfsup " + shlex.join(args))
    run = train(args, Path("runs") / run_name)
    return export(run, say)


def train(args: list[str], runs: Path) -> Path:
    """Run ``selfsup fit`` with ``args``; the run folder it wrote (``runs/NAME/version_N``)."""
    from selfsup.console import run

    before = set(runs.glob("version_*"))
    run(args)
    new = sorted(set(runs.glob("version_*")) - before, key=lambda p: p.stat().st_mtime)
    if not new or not (new[-1] / "checkpoints/last.ckpt").is_file():
        raise ConfigError(f"selfsup fit wrote no checkpoint under {runs}; see its messages above")
    return new[-1]


def export(run: Path, say: Callable[[str], None]) -> Path:
    """Write ``RUN/export/``: the backbone, its ``backbone.json`` and ``load.py``, the two lines that load it."""
    from selfsup.eval.export import describe, export_backbone

    out = run / "export" / "backbone.pt"
    out.parent.mkdir(exist_ok=True)
    described = describe(export_backbone(run / "checkpoints/last.ckpt", out), out)
    print(described)
    lines = ["# The pretrained backbone of this run, as an nn.Module in eval mode and its evaluation transform.",
             *(f"# {line}" for line in described.splitlines()),
             "import selfsup", "", f"backbone, transform = selfsup.load_backbone({str(out)!r})", ""]
    (out.parent / "load.py").write_text("\n".join(lines))
    say(f"done: run {run}, backbone {out} (load it: {out.parent / 'load.py'})")
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup pretrain", description="A folder of images (or a shard set) to an exported backbone: shards, "
        "the method's photo recipe sized to this machine, kNN before and after, RUN/export/.",
        epilog="Any other option goes to selfsup fit, e.g. --trainer.max_steps 10 or --model.init_args.lr 0.1")
    parser.add_argument("path", help="a folder of images (ROOT/CLASS/*.jpg gives kNN before/after; ROOT/*.jpg) "
                        "or a shard set (a folder with manifest.json)")
    parser.add_argument("--method", default=DEFAULT_METHOD,
                        help=f"the method (default {DEFAULT_METHOD}); one of {', '.join(photo_methods())}")
    parser.add_argument("--name", help="the run's name: runs/NAME/version_N (default METHOD-FOLDER)")
    parser.add_argument("--epochs", type=int, help=f"epochs (default: about {CPU_STEPS} steps on a CPU, the "
                        "recipe's on a GPU)")
    parser.add_argument("--shards", help="where a folder's shards go (default data/shards/FOLDER)")
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto",
                        help="size the run for this (default: a GPU when one is visible)")
    return parser


def main(argv: list[str]) -> int:
    args, fit_options = build_parser().parse_known_args(argv)
    if args.epochs is not None and args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    pretrain(args.path, args.method, args.name, args.epochs, args.shards, args.device, fit_options)
    return 0
