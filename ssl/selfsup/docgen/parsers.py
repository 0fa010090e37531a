"""The parsers of every ``selfsup`` subcommand, caught as each command builds them and before any of them parses
(so nothing runs): argparse's for our own tools, LightningCLI's for ``fit``, ``validate``, ``test`` and
``predict``."""

from __future__ import annotations

import argparse
import contextlib
import importlib
from collections.abc import Callable, Iterator
from unittest import mock


class _Caught(Exception):
    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser


def _catch(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> None:
    raise _Caught(self)


@contextlib.contextmanager
def _parsing_stops() -> Iterator[None]:
    """Within: any parser raises _Caught (itself) when asked to parse."""
    import jsonargparse

    with contextlib.ExitStack() as stack:
        for cls in (argparse.ArgumentParser, jsonargparse.ArgumentParser):
            for method in ("parse_args", "parse_known_args"):
                stack.enter_context(mock.patch.object(cls, method, _catch))
        yield


def caught_parser(main: Callable[[list[str]], object], argv: list[str]) -> argparse.ArgumentParser:
    """The parser ``main(argv + ["--help"])`` builds. A parser of another kind than those caught would print its
    help and exit (``--help``), never run the command: that is an error naming the command."""
    with _parsing_stops():
        try:
            main([*argv, "--help"])
        except _Caught as caught:
            return caught.parser
        except SystemExit:
            pass
    raise RuntimeError(f"selfsup {' '.join(argv)}: its parser could not be caught (not an argparse parser?)")


def tool_main(target: str) -> Callable[[list[str]], object]:
    """``module:function`` -> the function, its module imported."""
    module, function = target.split(":")
    return getattr(importlib.import_module(module), function)


def lightning_parsers() -> dict[str, argparse.ArgumentParser]:
    """The parser of each LightningCLI subcommand (fit, validate, test, predict), as selfsup sets them up."""
    from selfsup.cli import SelfsupCLI, run_lightning

    def catch(cli: SelfsupCLI, parser: argparse.ArgumentParser, args: object) -> None:
        raise _Caught(parser)

    with mock.patch.object(SelfsupCLI, "parse_arguments", catch):
        try:
            run_lightning(["fit"])
        except _Caught as caught:
            return dict(caught.parser._subcommands_action.choices)
    raise RuntimeError("selfsup fit: LightningCLI's parser could not be caught")


def tool_parsers() -> dict[str, argparse.ArgumentParser]:
    """``"knn"``, ``"shards write"``, ``"bench data"`` ... -> its parser: every subcommand of our own, in the order
    ``selfsup --help`` lists them, each followed by its own subcommands (argparse subparsers, or a ``NESTED`` dict
    of name -> (``module:main``, line) beside the command's main, as ``selfsup bench`` has)."""
    from selfsup.console import TOOLS

    found: dict[str, argparse.ArgumentParser] = {}
    for name, (target, _) in TOOLS.items():
        main = tool_main(target)
        found[name] = caught_parser(main, [])
        for action in found[name]._actions:
            if isinstance(action, argparse._SubParsersAction):
                found.update({f"{name} {sub}": parser for sub, parser in action.choices.items()})
        nested = getattr(importlib.import_module(target.split(":")[0]), "NESTED", {})
        found.update({f"{name} {sub}": caught_parser(main, [sub]) for sub in nested})
    return found
