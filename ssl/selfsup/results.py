"""`selfsup results`: run every method's CPU recipe and the evaluations it is judged by, against its random
init and the raw pixels, and write one table (``docs/results.md``), a chart (``docs/results.png``) and the figures
(``docs/results.json``, from which ``--only`` keeps the rows it does not rerun).

    selfsup results                         # every recipe of experiments/results.yaml (about an hour on 2 cores)
    selfsup results --only simclr swav      # some of them (the other rows are kept from docs/results.json)
    selfsup results --quick                 # seconds-long smoke runs of the same steps (tests)

A recipe with ``seeds: [0, 1, 2]`` is pretrained once per seed; every evaluation runs on the first seed's backbone,
and the evaluation it is judged by on every seed's too, so the table gives the median and the spread.

Every step is the real command a user would type (`selfsup fit`, `selfsup knn`), run as a child process with its
output in ``<work>/<recipe>/<step>.log``; a step that fails marks its cells with the reason and the rest goes on.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from selfsup.errors import ConfigError
from selfsup.recipes import recipe_path
from selfsup.training.atomic import atomic_write

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this selfsup, first on the children's path
VARIANTS = ("pretrained", "random", "pixels")  # the backbones each evaluation runs on
METRICS = {"linear": "val/top1", "block": "val/top1", "finetune": "val/top1", "dense": "val/miou",
           "dense_finetune": "val/miou"}  # the fit-based evaluations
COLUMNS = ("knn", "linear", "block", "finetune", "dense", "dense_finetune")


@dataclass
class Row:
    """One recipe's outcome: pretraining wall time (first seed), wall time of all its steps, scores[evaluation]
    [variant], the judged-by score and pretraining wall time of each seed, and failures by step."""

    key: str
    name: str
    judged_by: str
    backbone: str = ""
    seconds: float | None = None
    total_seconds: float = 0.0
    scores: dict[str, dict[str, float]] = field(default_factory=dict)
    seed_scores: dict[int, float] = field(default_factory=dict)
    seed_seconds: dict[int, float] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)


def run_step(argv: list[str], log: Path) -> str | None:
    """Run ``selfsup ARGV`` (this interpreter, this selfsup) with its output in ``log``; None on success, else
    the reason: the command's own one-line error, or its last line."""
    log.parent.mkdir(parents=True, exist_ok=True)
    paths = (str(PACKAGE_ROOT), os.environ.get("PYTHONPATH"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    with log.open("w") as out:
        proc = subprocess.run([sys.executable, "-m", "selfsup", *argv], stdout=out, stderr=subprocess.STDOUT,
                              env=env, text=True)
    if proc.returncode == 0:
        return None
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("selfsup: error:")]
    return (errors or lines or [f"exit code {proc.returncode}"])[-1][:300]


def last_metric(run_dir: Path, name: str) -> float:
    """The last logged value of ``name`` in the metrics.csv under ``run_dir``."""
    values = [row[name] for path in sorted(run_dir.rglob("metrics.csv")) for row in csv.DictReader(path.open())
              if row.get(name)]
    if not values:
        raise ConfigError(f"no {name} was logged under {run_dir}")
    return float(values[-1])


def baseline_checkpoints(trained: Path, pixels: dict[str, Any] | None, out: Path) -> dict[str, Path]:
    """Checkpoints of the baselines beside ``trained``: the same architecture at a seeded random init (fed the
    trained one's normalised inputs), and (if ``pixels`` gives its image size) the identity ``pixels`` backbone
    (raw pixels); both hold only the backbone and its spec, which is all that `selfsup knn` and the probes'
    ``init_from`` read."""
    import torch

    from selfsup.eval.checkpoint import BackboneSpec, backbone_spec, load_checkpoint
    from selfsup.eval.transform import KEY

    ckpt = load_checkpoint(trained)
    spec = backbone_spec(ckpt, trained)
    specs = {"random": spec}
    if pixels:
        specs["pixels"] = BackboneSpec("pixels", dict(pixels), spec.in_channels)
    paths = {}
    for variant, s in specs.items():
        torch.manual_seed(0)
        state = {f"backbone.{k}": v for k, v in s.build().state_dict().items()}
        hparams = {"backbone": s.name, "backbone_args": s.args, "in_channels": s.in_channels}
        paths[variant] = out / f"{variant}.ckpt"
        recorded = {KEY: ckpt[KEY]} if variant == "random" and KEY in ckpt else {}
        torch.save({"state_dict": state, "hyper_parameters": hparams, **recorded}, paths[variant])
    return paths


def evaluate(kind: str, config: str, ckpt: Path, work: Path, quick: list[str]) -> float:
    """One evaluation of one checkpoint through the CLI; raises ConfigError with the reason if it fails."""
    if kind == "knn":
        out = work / f"{ckpt.stem}-knn.json"
        reason = run_step(["knn", "--ckpt", str(ckpt), "-c", config, "--k", "20", "--out", str(out)],
                          work / f"knn-{ckpt.stem}.log")
        if reason is None:
            return float(json.loads(out.read_text())["results"][0]["top1"])
    else:
        run_dir = work / f"{kind}-{ckpt.stem}"  # the probe reads the architecture from the checkpoint
        reason = run_step(["fit", "-c", config, "--model.init_from", str(ckpt), "--run_dir", str(run_dir), *quick],
                          work / f"{kind}-{ckpt.stem}.log")
        if reason is None:
            return last_metric(run_dir, METRICS[kind])
    raise ConfigError(reason)


def pretrain(recipe: dict[str, Any], name: str, work: Path, quick: bool, seed: int | None, say: Any) -> Path:
    """Pretrain ``recipe`` (with ``seed`` when given) into ``work/name``; its last checkpoint, or ConfigError with
    the reason."""
    log = work / f"{name}.log"
    say(f"{recipe.get('name')}: pretraining ({recipe['pretrain']}"
        + (f", seed {seed}" if seed is not None else "") + f"), log in {log}")
    run_dir = work / name
    reason = run_step(["fit", "-c", recipe["pretrain"], "--run_dir", str(run_dir),
                       *(["--seed_everything", str(seed)] if seed is not None else []),
                       *(recipe.get("quick", []) if quick else [])], log)
    trained = max(run_dir.rglob("last.ckpt"), key=lambda p: p.stat().st_mtime, default=None)
    if reason is not None or trained is None:
        raise ConfigError(reason or f"no last.ckpt under {run_dir}")
    return trained


def run_recipe(key: str, recipe: dict[str, Any], work: Path, quick: bool, quick_eval: list[str],
               say: Any) -> Row:
    """Pretrain one recipe (once per seed), then evaluate it and its baselines; failures are recorded, never
    raised."""
    from selfsup.eval.checkpoint import backbone_spec, load_checkpoint

    row = Row(key, recipe.get("name", key), recipe.get("judged_by", "knn"))
    work.mkdir(parents=True, exist_ok=True)
    seeds = list(recipe.get("seeds") or [None])
    start = time.perf_counter()
    try:
        trained = pretrain(recipe, "pretrain", work, quick, seeds[0], say)
    except ConfigError as err:
        row.failures["pretrain"] = str(err)
        say(f"{row.name}: pretraining failed: {err}")
        return row
    finally:
        row.seconds = time.perf_counter() - start
    checkpoints = {"pretrained": trained, **baseline_checkpoints(trained, recipe.get("pixels"), work)}
    row.backbone = str(backbone_spec(load_checkpoint(trained), trained))
    for kind, config in recipe.get("evaluate", {}).items():
        for variant, ckpt in checkpoints.items():
            if variant == "pixels" and kind not in ("knn", "linear"):
                continue
            try:
                score = evaluate(kind, config, ckpt, work, quick_eval if quick else [])
            except ConfigError as err:
                row.failures[f"{kind} ({variant})"] = str(err)
                say(f"{row.name}: {kind} of the {variant} backbone failed: {err}")
                continue
            row.scores.setdefault(kind, {})[variant] = score
            say(f"{row.name}: {kind} {variant} {score:.4f}")
    if seeds[0] is not None:
        row.seed_seconds[seeds[0]] = row.seconds
        if "pretrained" in row.scores.get(row.judged_by, {}):
            row.seed_scores[seeds[0]] = row.scores[row.judged_by]["pretrained"]
    for seed in seeds[1:]:
        try:
            began = time.perf_counter()
            ckpt = pretrain(recipe, f"pretrain-seed{seed}", work, quick, seed, say)
            row.seed_seconds[seed] = time.perf_counter() - began
            score = evaluate(row.judged_by, recipe["evaluate"][row.judged_by], ckpt, work / f"seed{seed}",
                             quick_eval if quick else [])
        except ConfigError as err:
            row.failures[f"seed {seed}"] = str(err)
            say(f"{row.name}: seed {seed} failed: {err}")
            continue
        row.seed_scores[seed] = score
        say(f"{row.name}: seed {seed}: {row.judged_by} {score:.4f}")
    return row


def previous_rows(path: Path) -> dict[str, Row]:
    """The rows an earlier run wrote to ``path`` (results.json beside the page), by recipe key; none if absent."""
    if not path.is_file():
        return {}
    rows = {}
    for raw in json.loads(path.read_text()):
        for name in ("seed_scores", "seed_seconds"):
            raw[name] = {int(k): v for k, v in raw.get(name, {}).items()}
        rows[raw["key"]] = Row(**raw)
    return rows


def cell(row: Row, kind: str) -> str:
    """'pretrained / random / pixels' of one evaluation ('-' for a failed one, no pixels where it does not apply)."""
    scores = row.scores.get(kind)
    if not scores:
        return "failed" if any(k.startswith(kind) for k in row.failures) else ""
    return " / ".join(f"{scores[v]:.3f}" if v in scores else "-" for v in VARIANTS if v in scores or v != "pixels")


def seeds_cell(row: Row) -> str:
    """'median (min-max over N seeds)' of the judged-by score, when the recipe ran several seeds."""
    if len(row.seed_scores) < 2:
        return ""
    values = sorted(row.seed_scores.values())
    return f"{statistics.median(values):.3f} ({values[0]:.3f}-{values[-1]:.3f}, {len(values)} seeds)"


def minutes_cell(row: Row) -> str:
    """The first seed's pretraining time, and the range over the seeds when several were timed."""
    if row.seconds is None:
        return ""
    spread = sorted(row.seed_seconds.values())
    over = f" ({spread[0] / 60:.1f}-{spread[-1] / 60:.1f})" if len(spread) > 1 else ""
    return f"{row.seconds / 60:.1f} min{over}"


def markdown(rows: list[Row], machine: str) -> str:
    """The results page: one table, the chart, failures with their reasons, and how it was made."""
    lines = [
        "Every method's CPU recipe on the built-in data, and the evaluations it is judged by. Each cell is",
        "**pretrained / random init / raw pixels**: the same evaluation of the same architecture before training,",
        "and of the image itself. kNN: top-1, k=20, T=0.07, bank = train; linear: frozen-backbone linear probe,",
        "val top-1; block: the linear probe of an inner block's map (RotNet's measure); fine-tune: val top-1;",
        "dense: dense-probe mIoU; dense fine-tune: its mIoU with the backbone trained too. Seeds: the judged-by",
        "score of the pretrained backbone over the recipe's seeds, median (range); pretraining: the first seed's",
        "wall time (range over the seeds); the other cells are the first seed's.",
        "",
        "| method | backbone | judged by | pretraining | kNN | linear | block | fine-tune | dense | dense fine-tune "
        "| seeds |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = " (pretraining failed)" if "pretrain" in r.failures else ""
        lines.append(f"| {r.name}{status} | {r.backbone} | {r.judged_by} | {minutes_cell(r)} | "
                     + " | ".join(cell(r, k) for k in COLUMNS) + f" | {seeds_cell(r)} |")
    failures = [f"- {r.name}, {step}: {reason}" for r in rows for step, reason in r.failures.items()]
    if failures:
        lines += ["", "Failed steps:", "", *failures]
    lines += ["", "![results](results.png)", "",
              f"Made by `make results` (`selfsup results`) in {sum(r.total_seconds for r in rows) / 60:.0f} min "
              f"(pretraining and evaluations of every row) on {machine}."]
    return "\n".join(lines) + "\n"


START, END = "<!-- results:start -->", "<!-- results:end -->"


def write_table(out: Path, table: str) -> None:
    """Write ``table`` into ``out`` between the START and END markers when the page has them (the text around
    them is the page's own), else as the whole file."""
    page = out.read_text() if out.is_file() else ""
    if not (START in page and END in page):
        page = f"# Results\n\n{START}\n{END}\n"
    head, rest = page.split(START, 1)
    atomic_write(out, f"{head}{START}\n{table}{END}{rest.split(END, 1)[1]}".encode())


def chart(rows: list[Row], out: Path) -> None:
    """Grouped bars per method (pretrained, random init, raw pixels) for kNN and the linear probe, for the rows
    that have them."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r.scores.get("knn") or r.scores.get("linear")]  # not the dense-only rows
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=True)
    for ax, kind in zip(axes, ("knn", "linear")):
        for i, variant in enumerate(VARIANTS):
            values = [r.scores.get(kind, {}).get(variant, 0.0) for r in rows]
            ax.bar([x + (i - 1) * 0.27 for x in range(len(rows))], values, width=0.27, label=variant)
        ax.set_xticks(range(len(rows)), [r.name for r in rows], rotation=30, ha="right")
        ax.set_title({"knn": "kNN top-1 (k=20)", "linear": "linear probe top-1"}[kind])
        ax.set_ylim(0, 1)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=len(VARIANTS), frameon=False)
    fig.tight_layout(rect=(0, 0.08, 1, 1))  # the legend below the bars, never over them
    fig.savefig(out, dpi=110)
    plt.close(fig)


def machine_line() -> str:
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"{platform.machine()}, {os.cpu_count()} cores, load {load:.1f} at the end"


def main(argv: list[str]) -> None:
    """Run the CPU recipes and their evaluations; write the results table and chart."""
    parser = argparse.ArgumentParser(prog="selfsup results", description=main.__doc__)
    parser.add_argument("--recipes", type=Path, default=recipe_path("experiments/results.yaml"),
                        help="the recipes and their evaluations (default: experiments/results.yaml)")
    parser.add_argument("--only", nargs="+", default=None, help="recipe keys to run (default: all)")
    parser.add_argument("--out", type=Path, default=Path("docs/results.md"), help="the Markdown table")
    parser.add_argument("--work", type=Path, default=None, help="where runs and logs go (default: runs/results/TIME)")
    parser.add_argument("--quick", action="store_true", help="seconds-long smoke runs (the recipes' quick overrides)")
    args = parser.parse_args(argv)
    if not args.recipes.is_file():
        raise ConfigError(f"recipes file {args.recipes} does not exist; give --recipes experiments/results.yaml")
    spec = yaml.safe_load(args.recipes.read_text()) or {}
    recipes = spec.get("recipes") or {}
    unknown = sorted(set(args.only or ()) - set(recipes))
    if unknown:
        raise ConfigError(f"--only {' '.join(unknown)}: no such recipe in {args.recipes}; "
                          f"choose from {', '.join(recipes)}")
    keys = args.only or list(recipes)
    work = args.work or Path("runs/results") / time.strftime("%Y%m%d-%H%M%S")
    start = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - start:7.0f} s] {message}", flush=True)

    kept = previous_rows(args.out.with_suffix(".json")) if args.only else {}
    done = {}
    for k in keys:
        began = time.perf_counter()
        done[k] = run_recipe(k, recipes[k], work / k, args.quick, list(spec.get("quick_eval", [])), say)
        done[k].total_seconds = time.perf_counter() - began
    rows = [done.get(k) or kept[k] for k in recipes if k in done or k in kept]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chart(rows, args.out.with_suffix(".png"))
    write_table(args.out, markdown(rows, machine_line()))
    figures = json.dumps([r.__dict__ for r in rows], indent=1) + "\n"
    for path in (work / "results.json", args.out.with_suffix(".json")):
        atomic_write(path, figures.encode())
    print(args.out.read_text())
    print(f"written: {args.out}, {args.out.with_suffix('.png')}, {args.out.with_suffix('.json')} (the figures)")
