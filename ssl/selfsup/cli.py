"""The ``selfsup`` command: LightningCLI (fit/validate/test/predict) over every method and data module."""

from __future__ import annotations

import re
import sys
from argparse import ArgumentError
from pathlib import Path

import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import selfsup.eval  # noqa: F401  (KNNMonitor and friends resolve by short name in configs)
from selfsup.data import SSLDataModule
from selfsup.errors import ConfigError
from selfsup.methods import SSLMethod

# Values the data decides and the model needs: (data attribute, model argument, when).
LINKED_FROM_DATA = (
    ("data.num_classes", "model.init_args.num_classes", "instantiate"),
    ("data.num_channels", "model.init_args.in_channels", "instantiate"),
    ("data.init_args.batch_size", "model.init_args.batch_size", "parse"),
)
LINK_ORIGIN = {"num_classes": "the data's classes", "in_channels": "the data's image channels",
               "batch_size": "data.batch_size"}

# Trainer arguments where an int counts batches and a float is a fraction. Lightning's signature lists float
# first, so jsonargparse reads `limit_val_batches: 1` as 1.0 (100%); we make int win for whole numbers.
INT_OR_FRACTION = ("limit_train_batches", "limit_val_batches", "limit_test_batches", "limit_predict_batches",
                   "overfit_batches", "val_check_interval")

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
        for name in INT_OR_FRACTION:
            action = parser._option_string_actions.get(f"--trainer.{name}")
            if action is not None and hasattr(action, "_typehint"):
                action._typehint = int | float | None
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "data": {"class_path": "selfsup.data.SSLDataModule"},
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
            found = (re.fullmatch(r"version_(\d+)", p.name) for p in folder.glob("version_*"))
            taken = [int(m.group(1)) for m in found if m]
            chosen[folder] = f"version_{max(taken, default=-1) + 1}"
        args.version = chosen[folder]


def reject_linked_overrides(args: list[str]) -> None:
    """Refuse a hand-set value for a linked model argument: LightningCLI would drop it silently."""
    for i, token in enumerate(args):
        key = token.split("=", 1)[0]
        for name, origin in LINK_ORIGIN.items():
            if key in (f"--model.{name}", f"--model.init_args.{name}"):
                raise ConfigError(f"model.{name} is set from {origin}; remove {key} (change the data instead)")
        if token in ("-c", "--config") and i + 1 < len(args) and Path(args[i + 1]).is_file():
            model = (yaml.safe_load(Path(args[i + 1]).read_text()) or {}).get("model")
            given = {**model, **(model.get("init_args") or {})} if isinstance(model, dict) else {}
            for name, origin in LINK_ORIGIN.items():
                if name in given:
                    raise ConfigError(
                        f"{args[i + 1]}: model.{name} is set from {origin}; remove it from the config"
                    )


def method_names() -> list[str]:
    """Short names of every method (subclasses of SSLMethod)."""
    found, todo = [], list(SSLMethod.__subclasses__())
    while todo:
        cls = todo.pop()
        found.append(cls.__name__)
        todo.extend(cls.__subclasses__())
    return sorted(found)


def reject_unknown_method(args: list[str]) -> None:
    """``--model NAME`` must name a method (or a dotted class path or a config file)."""
    for flag, value in zip(args, args[1:]):
        if flag == "--model" and "." not in value and not Path(value).exists() and value not in method_names():
            raise ConfigError(f"unknown method {value!r}; choose one of: {', '.join(method_names())}")


# Lines of jsonargparse's union-type reports that say nothing to a user.
_NOISE = re.compile(r"Expected a <class 'NoneType'>|^Subtypes:|^Given value|^Errors:$|Does not validate against any")


def summarize_parse_error(message: str) -> str:
    """jsonargparse's multi-line report reduced to the lines that name the problem."""
    lines = [line.strip(" -") for line in message.splitlines()]
    return " ".join(line for line in lines if line and not _NOISE.search(line))


def user_error(err: BaseException) -> ConfigError | None:
    """The ConfigError behind ``err`` (jsonargparse wraps errors raised while instantiating classes)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, ConfigError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def run_lightning(args: list[str] | None) -> None:
    """Run LightningCLI on ``args`` (``fit -c CONFIG ...``; None: the command line)."""
    given = sys.argv[1:] if args is None else args
    reject_unknown_method(given)
    reject_linked_overrides(given)
    SelfsupCLI(
        SSLMethod,
        SSLDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        seed_everything_default=0,
        args=args,
        auto_configure_optimizers=False,
        parser_kwargs={"exit_on_error": False},
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``selfsup`` console script."""
    try:
        run_lightning(argv)
    except ArgumentError as err:
        print(f"selfsup: error: {summarize_parse_error(str(err))} (see selfsup fit --help)", file=sys.stderr)
        sys.exit(2)
    except Exception as err:
        problem = user_error(err)
        if problem is None:
            raise
        print(f"selfsup: error: {problem}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
