"""Parse `selfsup` command lines without running them: ``python parse_commands.py OUT`` reads a JSON list of
{"where", "args", "env"} on stdin and writes to OUT one line per command whose options the command refuses
(nothing when all parse). A command counts as parsed once its parser accepted the line: argparse's ``parse_args``
returned, LightningCLI reached instantiating the classes (``--print_config`` and ``--help`` exit 0 first), or
an evaluation command (with its ``--data.*`` options) reached its checkpoint."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys


class Parsed(Exception):
    """The command's parser accepted its command line."""


def _stop_after_parsing() -> None:
    import selfsup.eval_commands
    from selfsup.cli import SelfsupCLI

    parse_args = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, *args, **kwargs):
        parse_args(self, *args, **kwargs)
        raise Parsed

    def stop(self, *args, **kwargs):
        raise Parsed

    parse_known_args = argparse.ArgumentParser.parse_known_args

    def known_then_stop(self, *args, **kwargs):  # `selfsup pretrain` keeps the options it does not know for fit
        found = parse_known_args(self, *args, **kwargs)
        if self.prog == "selfsup pretrain":
            raise Parsed
        return found

    argparse.ArgumentParser.parse_args = parse_then_stop
    argparse.ArgumentParser.parse_known_args = known_then_stop
    SelfsupCLI.before_instantiate_classes = stop
    selfsup.eval_commands._checked_device_and_checkpoint = stop  # knn, plot, reconstruct: options and data checked


def problem(args: list[str], env: dict[str, str]) -> str | None:
    """Why ``selfsup ARGS`` does not parse (its error output), or None."""
    from selfsup.console import main

    os.environ.update(env)
    err = io.StringIO()
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            main(args)
    except Parsed:
        return None
    except SystemExit as done:
        return None if done.code in (0, None) else err.getvalue().strip()[-500:] or f"exit {done.code}"
    return "ran without parsing any options"


if __name__ == "__main__":
    _stop_after_parsing()
    found = [(command["where"], problem(command["args"], command["env"])) for command in json.load(sys.stdin)]
    with open(sys.argv[1], "w") as out:
        out.writelines(f"{where}: {why}\n" for where, why in found if why)
