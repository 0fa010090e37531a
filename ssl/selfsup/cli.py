"""The ``selfsup`` command: LightningCLI (fit/validate/test/predict) over every method and data module."""

from __future__ import annotations

import re
import sys
from pathlib import Path

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import selfsup.eval  # noqa: F401  (KNNMonitor and friends resolve by short name in configs)
from selfsup.data import SSLDataModule
from selfsup.errors import ConfigError
from selfsup.methods import SSLMethod

# Values the data decides and the model needs: (data attribute, model argument).
LINKED_FROM_DATA = (
    ("data.num_classes", "model.init_args.num_classes", "instantiate"),
    ("data.num_channels", "model.init_args.in_channels", "instantiate"),
    ("data.init_args.batch_size", "model.init_args.batch_size", "parse"),
)

DEFAULT_LOGGERS = [
    {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "runs", "name": "default"}},
    {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
     "init_args": {"save_dir": "runs", "name": "default"}},
]


class SelfsupCLI(LightningCLI):
    """LightningCLI with selfsup's links, checkpointing and logging defaults."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        for source, target, when in LINKED_FROM_DATA:
            parser.link_arguments(source, target, apply_on=when)
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.save_last": True,
            "checkpoint.filename": "{epoch}-{step}",
            "trainer.logger": DEFAULT_LOGGERS,
            "trainer.log_every_n_steps": 10,
        })

    def before_instantiate_classes(self) -> None:
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        share_logger_version(config.trainer.logger)


def share_logger_version(loggers: object) -> None:
    """Give loggers that write under the same ``save_dir/name`` one version, so CSV and TensorBoard files of a
    run share one folder (each would otherwise take the next free ``version_N`` after the other's)."""
    if not isinstance(loggers, list):
        return
    chosen: dict[Path, str] = {}
    for logger in loggers:
        args = getattr(logger, "init_args", None)
        if args is None or getattr(args, "version", "unset") is not None or "save_dir" not in args:
            continue
        folder = Path(args.save_dir) / (args.get("name") or "")
        if folder not in chosen:
            taken = [int(m.group(1)) for p in folder.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
            chosen[folder] = f"version_{max(taken, default=-1) + 1}"
        args.version = chosen[folder]


def run_lightning(args: list[str] | None) -> None:
    """Run LightningCLI on ``args`` (``fit -c CONFIG ...``; None: the command line)."""
    SelfsupCLI(
        SSLMethod,
        SSLDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
        auto_configure_optimizers=False,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``selfsup`` console script."""
    try:
        run_lightning(argv)
    except ConfigError as err:
        print(f"selfsup: error: {err}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
