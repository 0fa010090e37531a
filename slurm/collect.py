#!/usr/bin/env python3
"""One table of an array job's results: a row per task, the last value of each metric in its metrics.csv.

    python slurm/collect.py runs/slurm/linear-probe-1234 [--metric val/top1 ...] [--json table.json]

Each task folder holds sweep.json (written by linear-probe-array.sbatch: task, lr, status) and, under it, the
run's metrics.csv (ResumableCSVLogger). Without --metric: every val/ and test/ column (all columns if none).
Standard library only, so it runs anywhere the run folders are visible."""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

SKIP = {"epoch", "step"}


def last_values(metrics_csv: Path) -> dict[str, str]:
    """Each column's last non-empty value (a resumed run's later rows win)."""
    values: dict[str, str] = {}
    with metrics_csv.open(newline="") as file:
        for row in csv.DictReader(file):
            values.update({k: v for k, v in row.items() if k and v not in (None, "")})
    return values


def collect(sweep_dir: Path) -> list[dict[str, str]]:
    rows = []
    for note in sorted(sweep_dir.glob("*/sweep.json")):
        task = json.loads(note.read_text())
        found = sorted(note.parent.glob("**/metrics.csv"), key=lambda p: p.stat().st_mtime)
        metrics = last_values(found[-1]) if found else {}
        rows.append({"task": str(task.get("task", "")), "lr": str(task.get("lr", "")),
                     "status": str(task.get("status", "")), **metrics})
    return sorted(rows, key=lambda r: (float(r["lr"]) if r["lr"] else 0.0, r["task"]))


def choose_columns(rows: list[dict[str, str]], wanted: list[str]) -> list[str]:
    if wanted:
        return wanted
    names = sorted({k for r in rows for k in r} - {"task", "lr", "status"} - SKIP)
    evaluated = [n for n in names if n.startswith(("val/", "test/"))]
    return evaluated or names


def fmt(value: str) -> str:
    try:
        return f"{float(value):.4f}"
    except ValueError:
        return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("sweep_dir", type=Path)
    parser.add_argument("--metric", action="append", default=[], help="a metrics.csv column (repeatable)")
    parser.add_argument("--json", type=Path, help="also write the table here as JSON")
    args = parser.parse_args(argv)
    rows = collect(args.sweep_dir)
    if not rows:
        print(f"collect: no */sweep.json under {args.sweep_dir}", file=sys.stderr)
        return 1
    columns = ["task", "lr", "status", *choose_columns(rows, args.metric)]
    cells = [[fmt(r.get(c, "-")) if c not in ("task", "lr", "status") else r.get(c, "-") for c in columns]
             for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths)))
    if args.json:
        args.json.write_text(json.dumps([{c: r.get(c) for c in columns} for r in rows], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
