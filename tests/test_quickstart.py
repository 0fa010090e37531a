"""The README quickstart, run after `make demo`, writes and reads only run folders of its own."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import yaml

from clirun import REPO
from selfsup.pretraining import DEFAULT_METHOD, default_name
from test_docs import BLOCK, commands

DEMO_TARGET = re.compile(r"^demo:.*\n((?:\t.*\n)+)", re.M)


def quickstart() -> list[str]:
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quickstart"):readme.index("## Which method?")]
    return [c for lang, code in BLOCK.findall(section) if lang == "bash" for c in commands(code)]


def demo() -> list[str]:
    """The commands of the Makefile's demo target (lines joined, split at ``&&``), as a shell would run them."""
    recipe = DEMO_TARGET.search((REPO / "Makefile").read_text()).group(1)
    joined = re.sub(r"\\\n\s*", "", recipe).replace("$(BIN)/", "").replace("$$", "$")
    return [part.strip() for line in joined.splitlines() for part in line.split("&&") if part.strip()]


def option(words: list[str], name: str) -> str | None:
    return words[words.index(name) + 1] if name in words else None


def run_folders(command: str) -> set[str]:
    """The ``runs/NAME`` folders ``command`` writes or reads."""
    words = shlex.split(command, comments=True)
    found = {f"runs/{m}" for w in words for m in re.findall(r"runs/([\w.-]+)", w)}
    if words[:2] == ["selfsup", "pretrain"]:
        method = option(words, "--method") or DEFAULT_METHOD
        found.add(f"runs/{option(words, '--name') or default_name(method, Path(words[2]))}")
    elif words[:2] == ["selfsup", "fit"]:
        config = yaml.safe_load((REPO / option(words, "-c")).read_text())
        loggers = config.get("trainer", {}).get("logger") or []
        found |= {f"runs/{option(words, '--name') or lg['init_args']['name']}" for lg in loggers}
    return found


def test_the_quickstart_never_touches_the_demo_run():
    mine = set().union(*map(run_folders, quickstart()))
    theirs = set().union(*map(run_folders, demo()))
    assert theirs == {"runs/simclr-mnist5k", "runs/linear-mnist5k"}, theirs
    assert mine == {"runs/simclr-photos", "runs/linear-photos"}, mine
    assert not any("ls -t" in c or "version_*" in c for c in quickstart())  # no "newest checkpoint" guessing
