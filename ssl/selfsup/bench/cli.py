"""The arguments of ``selfsup bench``, ``selfsup bench data`` and ``selfsup bench knn``; torch is imported
only once they are parsed (the modules beside it do the work)."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from selfsup.errors import ConfigError

# Each method's recipe (found with selfsup.recipes, so bench runs from any folder).
CONFIGS = {"SimCLR": "experiments/simclr/mnist5k.yaml", "RotNet": "experiments/rotnet/mnist5k.yaml",
           "CVRL": "experiments/cvrl/moving-mnist.yaml",
           "SwAV": "experiments/swav/mnist5k.yaml", "PixPro": "experiments/pixpro/mnist5k.yaml",
           "SimMIM": "experiments/simmim/mnist5k-vit-tiny.yaml", "MAE": "experiments/mae/mnist5k-vit-tiny.yaml",
           "IJEPA": "experiments/ijepa/mnist5k-vit-tiny.yaml",
           "BYOL": "experiments/byol/mnist5k.yaml", "MoCoV3": "experiments/mocov3/mnist5k.yaml",
           "BarlowTwins": "experiments/barlowtwins/mnist5k.yaml", "VICReg": "experiments/vicreg/mnist5k.yaml",
           "DINO": "experiments/dino/mnist5k-vit-tiny.yaml", "iBOT": "experiments/ibot/mnist5k-vit-tiny.yaml"}
# ``selfsup bench NAME ...``: name -> (its main(argv), one line).
NESTED = {
    "data": ("selfsup.bench.data:main", "images/s of the data pipeline: shards against PIL files, views in workers "
             "or on the device"),
    "knn": ("selfsup.bench.cli:knn_main", "FAISS kNN search against brute-force torch on the same features"),
    "max-batch": ("selfsup.bench.maxbatch:main", "the largest per-device batch of a recipe's step that fits in memory"),
    "gpu-check": ("selfsup.bench.gpucheck:main", "every GPU path in one run, each step with its own time limit "
                  "(runs/gpu-check/)"),
}
SUBCOMMANDS = "\n".join(["subcommands:", *(f"  selfsup bench {name:<10} {line}" for name, (_, line) in NESTED.items()),
                         "(each with --help)"])


def at_least(args: argparse.Namespace, least: dict[str, float]) -> argparse.Namespace:
    """``args``, each option named in ``least`` (its dest -> the smallest value it takes; every value of a list)
    checked: ConfigError naming the first below it (a negative or zero size was a traceback deep in the run)."""
    for dest, low in least.items():
        value = getattr(args, dest)
        for v in value if isinstance(value, list) else [value]:
            if v is not None and v < low:
                raise ConfigError(f"--{dest.replace('_', '-')} must be at least {low:g}, got {v:g}; give {low:g} "
                                  "or more")
    return args


def with_values(args: argparse.Namespace) -> argparse.Namespace:
    """``args``, each ``--set`` checked to be ``KEY=VALUE``: ConfigError naming the first without a value."""
    for setting in args.set or []:
        if "=" not in setting:
            raise ConfigError(f"--set {setting!r} gives no value; write it KEY=VALUE, e.g. "
                              "--set model.init_args.proj_dim=2048")
    return args


def methods_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="selfsup bench", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=SUBCOMMANDS,
        description="Each method's training step against its floor (the backbone passes it cannot avoid).")
    parser.add_argument("--methods", nargs="+", default=list(CONFIGS), help=f"of: {', '.join(CONFIGS)} (default: all)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--repeats", type=int, default=20,
                        help="timed step/floor pairs (the 95%% interval of the median ratio narrows with more)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed", "16-mixed", "auto"],
                        help="as trainer.precision: bf16-mixed autocasts the step to bfloat16; auto picks it on CUDA "
                             "and on CPUs with AVX-512 BF16 or AMX")
    parser.add_argument("--channels-last", action="store_true", help="model.channels_last: NHWC convolutions")
    parser.add_argument("--compile", action="store_true", help="model.compile_backbone: torch.compile")
    parser.add_argument("--backbone", default=None, help="model.backbone of every method, e.g. timm:convnext_atto "
                        "(default: each recipe's; `selfsup backbones` lists the names)")
    parser.add_argument("--backbone-args", default="{}", help="model.backbone_args with --backbone (YAML)")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="any other option of every recipe, as `selfsup fit` takes it after -c, e.g. "
                        "model.init_args.proj_dim=2048 or data.init_args.views.init_args.size=32 (repeatable; after "
                        "--backbone)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench.json"))
    parser.add_argument("--repo", type=Path, default=None,
                        help="a folder with your own experiments/ (default: the recipes that ship with selfsup)")
    return parser


def knn_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="selfsup bench knn",
                                     description="FAISS kNN search against brute-force torch on the same features.")
    parser.add_argument("--train", type=int, nargs="+", default=[50_000, 200_000], help="bank sizes")
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048], help="feature widths")
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--against-faiss-cpu", action="store_true",
                        help="also FAISS on the CPU on the same features (faiss-gpu against faiss-cpu on a GPU)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench-knn.json"))
    return parser


def knn_main(argv: list[str]) -> int | None:
    """``selfsup bench knn ...``."""
    args = at_least(knn_parser().parse_args(argv), {"train": 1, "dims": 1, "queries": 1, "k": 1})
    from selfsup.bench.knn import run_knn

    return run_knn(args)


def main(argv: list[str]) -> int | None:
    """``selfsup bench [data|knn|max-batch|gpu-check] ...``."""
    if argv[:1] and argv[0] in NESTED:
        module, function = NESTED[argv[0]][0].split(":")
        return getattr(importlib.import_module(module), function)(argv[1:])
    args = with_values(at_least(methods_parser().parse_args(argv), {"batch_size": 1, "repeats": 1, "warmup": 0}))
    from selfsup.bench.methods import run_methods

    return run_methods(args)
