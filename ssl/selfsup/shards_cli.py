"""``selfsup shards write`` (folder or built-in -> webdataset shards) and ``selfsup shards inspect``.

The command line only: the work is in `selfsup.data.shard_tools`, imported when a command runs, so
``selfsup shards --help`` answers without loading torch."""

from __future__ import annotations

import argparse


def build_parser() -> argparse.ArgumentParser:
    exact = {"allow_abbrev": False}  # --val 0.1 is refused, not read as --val-fraction
    parser = argparse.ArgumentParser(prog="selfsup shards", description=__doc__.split("\n\n")[0], **exact)
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("write", **exact, help="turn a folder or built-in data set into shards + manifest.json; "
                            "every image is decoded first, and files passed over (not images, unreadable) are listed")
    w.add_argument("--from", dest="source", required=True,
                   help="builtin:NAME, or an image/video folder (ROOT/train/CLASS/*, ROOT/CLASS/* or ROOT/*)")
    w.add_argument("--out", required=True, help="new folder for the shards, e.g. data/shards/NAME")
    limit = w.add_mutually_exclusive_group()
    limit.add_argument("--maxcount", type=int, help="samples per shard (default 1000)")
    limit.add_argument("--maxsize", help="bytes per shard instead, e.g. 1GB")
    w.add_argument("--val-fraction", type=float, default=0.0,
                   help="hold out this fraction of each class of train as val")
    w.add_argument("--channels", type=int, choices=(1, 3), help="decoded channels (default: probed from images)")
    w.add_argument("--name", help="data set name in the manifest (default: the --out folder's name)")
    w.add_argument("--seed", type=int, default=0, help="seed of the file order shuffle")
    w.add_argument("--quiet", action="store_true", help="no progress bar")
    i = commands.add_parser("inspect", **exact, help="read every member; print counts, classes, sizes and problems")
    i.add_argument("path", help="a shard folder, a tar file, or FOLDER/train-{000000..000009}.tar")
    i.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    from selfsup.data.shard_tools import inspect, write

    if args.command == "write":
        write(args)
        return 0
    return inspect(args)
