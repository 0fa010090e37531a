"""The generated parts of the docs, so that they follow the code and each other: docs/cli.md's reference
(from the parsers) and docs/index.md's sections shared with the README. ``python -m selfsup.docgen`` writes
them; ``--check`` names the stale pages (tests/test_docs.py runs it)."""

from __future__ import annotations

from pathlib import Path

COMMAND = "python -m selfsup.docgen (or make docs-generate)"
# docs/cli.md: written by hand above this line, generated below it.
CLI_MARKER = ("<!-- Everything below is generated from the parsers by `python -m selfsup.docgen` "
              "(make docs-generate): edit the code, then rerun it. -->\n")


def cli_page(current: str) -> str:
    """docs/cli.md: its hand-written part as it is, the reference regenerated below the marker."""
    from selfsup.docgen.cli_page import reference

    if CLI_MARKER not in current:
        raise ValueError(f"docs/cli.md has no line {CLI_MARKER.strip()!r} to write the reference below")
    return current[:current.index(CLI_MARKER) + len(CLI_MARKER)] + "\n" + reference()


def pages(repo: Path) -> dict[Path, str]:
    """Each generated page of ``repo`` -> the text it should have."""
    from selfsup.docgen.shared import index_page

    cli, index = repo / "docs/cli.md", repo / "docs/index.md"
    return {cli: cli_page(cli.read_text()),
            index: index_page((repo / "README.md").read_text(), index.read_text())}
