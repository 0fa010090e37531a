"""``python -m selfsup.docgen [--check]``: write the generated parts of the docs (docs/cli.md's reference
section, docs/index.md's sections shared with the README) in the checkout it runs in; ``--check`` writes
nothing and exits 1 naming the stale pages."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selfsup.docgen import COMMAND, pages

if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m selfsup.docgen", description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is stale")
    parser.add_argument("--repo", type=Path, default=Path.cwd(), help="the checkout (default: this folder)")
    args = parser.parse_args()
    wanted = pages(args.repo)
    stale = [path for path, text in wanted.items() if path.read_text() != text]
    for path in stale:
        if args.check:
            print(f"stale: {path} (regenerate with {COMMAND})")
        else:
            path.write_text(wanted[path])
            print(f"written: {path}")
    sys.exit(1 if stale and args.check else 0)
