"""`selfsup bench gpu-check`: every GPU path of selfsup in one prepared run of at most 8 minutes, for the day a GPU
is lent: each method's step in bf16 (channels-last for the convolutional ones), the device half of
``augment_on: device`` and GPU JPEG decoding, faiss-gpu against faiss-cpu, SimCLR with a ResNet-50 at 224 px on
the real-photo set for 2 minutes with 8+ loader workers, and the largest per-GPU batch of the ResNet-50 and
ViT-B/16 recipes. Each step is a ``selfsup`` subprocess with its own time limit; a failed step is reported and
the next one runs. One JSON file and one markdown table under ``--out``.

``--device cpu --tiny`` runs the same steps at toy sizes (one convolutional and the ViT method, a width-4
ResNet-18 and a 2-layer ViT at 32 px) in about a minute, so the script is tested where no GPU is.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUDGET_S = 480  # the whole check
RESNET50, VIT_B = "experiments/simclr/imagenet-resnet50.yaml", "experiments/simmim/imagenet-vit-base.yaml"
TINY_RESNET = ["--model.init_args.backbone", "resnet18", "--model.init_args.backbone_args",
               "{width: 4, cifar_stem: true}", "--data.init_args.image_size", "32",
               "--data.init_args.views.init_args.size", "32"]
TINY_VIT = ["--model.init_args.backbone", "vit_tiny", "--model.init_args.backbone_args",
            "{image_size: 32, patch_size: 4, num_layers: 2, num_heads: 2, hidden_dim: 32, mlp_dim: 64}",
            "--data.init_args.image_size", "32", "--data.init_args.views.init_args.size", "32",
            "--data.init_args.views.init_args.mask_patch_size", "8",
            "--data.init_args.views.init_args.model_patch_size", "4"]
PROGRESS = re.compile(r"^epoch .* (\d+) images/s(?:\s+data_wait (\d+)%)?", re.M)


@dataclass
class Step:
    """One check: ``selfsup`` with the arguments ``args()`` returns (called when the step starts, so preparing
    them, e.g. writing a data set, counts as the step's), at most ``limit_s`` seconds, writing ``json`` (if any)."""

    name: str
    args: Callable[[], list[str]]
    limit_s: float
    json: Path | None = None
    summary: Callable[[dict[str, Any], str], dict[str, Any]] = field(default=lambda out, stdout: {})


def run_step(step: Step, limit_s: float) -> dict[str, Any]:
    """Run ``step`` as a subprocess for at most ``limit_s`` seconds: its status (ok, failed, timeout), seconds,
    the reason of a failure (the last line it wrote to stderr), and its summary figures."""
    start = time.perf_counter()
    result: dict[str, Any] = {"step": step.name, "limit_s": round(limit_s)}
    stdout = ""
    if step.json is not None:
        step.json.unlink(missing_ok=True)  # a previous run's figures are not this one's
    try:
        args = step.args()
        result["command"] = "selfsup " + " ".join(args)
        proc = subprocess.Popen([sys.executable, "-m", "selfsup", *args], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            stdout, stderr = proc.communicate(timeout=limit_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the step and its loader workers
            stdout, _ = proc.communicate()
            status, result["reason"] = "timeout", f"stopped after its {limit_s:.0f} s limit"
        else:
            status = "ok" if proc.returncode == 0 else "failed"
            if proc.returncode:
                lines = [line for line in stderr.splitlines() if line.strip()]
                result["reason"] = lines[-1] if lines else f"exit code {proc.returncode}"
    except Exception as error:  # preparing the step failed; the next step still runs
        status, result["reason"] = "failed", f"{type(error).__name__}: {error}"
    result.update(status=status, seconds=round(time.perf_counter() - start, 1), stdout_tail=stdout[-2000:])
    out = json.loads(step.json.read_text()) if step.json is not None and step.json.is_file() else {}
    try:
        result["summary"] = step.summary(out, stdout)
    except (KeyError, IndexError, TypeError, ValueError) as error:
        result["summary"] = {"unreadable": f"{type(error).__name__}: {error}"}
    return result


def bench_summary(out: dict[str, Any], stdout: str) -> dict[str, Any]:
    return {r["method"]: f"step/floor {1 + r['overhead']:.3f} [{1 + r['overhead_low']:.3f}, "
                         f"{1 + r['overhead_high']:.3f}], {r['images_per_s']:.0f} images/s" for r in out["rows"]}


def data_summary(out: dict[str, Any], stdout: str) -> dict[str, Any]:
    decode, *methods = out["photos"]
    figures = {"decode_jpeg on the device": f"{decode['decode_jpeg_device']:.0f} images/s",
               "PIL decode, one worker": f"{decode['full']:.0f} images/s"}
    for r in methods:
        device = f", device half {r['device_split_device']:.0f}" if "device_split_device" in r else ""
        figures[r["method"]] = f"views in a worker {r['workers']:.0f}, worker half {r['device_split_workers']:.0f}" \
                               f"{device} images/s"
    return figures


def knn_summary(out: dict[str, Any], stdout: str) -> dict[str, Any]:
    return {f"{r['n_train']} x {r['dim']}": f"faiss {r['faiss_s']:.2f} s, faiss-cpu {r['faiss_cpu_s']:.2f} s, same "
            f"neighbours {r['same_as_faiss_cpu']:.4f}; torch {r['torch_s']:.2f} s" for r in out["rows"]}


def fit_summary(out: dict[str, Any], stdout: str) -> dict[str, Any]:
    lines = PROGRESS.findall(stdout)
    if not lines:
        return {}
    rates = [int(rate) for rate, _ in lines[1:] or lines]  # the first line includes the loader's start
    waits = [int(wait) for _, wait in lines if wait]
    return {"images/s": f"{sorted(rates)[len(rates) // 2]} (median of {len(rates)} progress lines)",
            "train/data_wait": f"{sorted(waits)[len(waits) // 2]}%" if waits else "not logged"}


def batch_summary(out: dict[str, Any], stdout: str) -> dict[str, Any]:
    more = "+" if out["largest_batch"] == out["limit"] else ""
    peak = out["tried"].get(str(out["largest_batch"])) or {}
    return {"largest batch": f"{out['largest_batch']}{more} ({out['precision']}, peak {peak.get('peak_mib', 0):.0f}"
                             f" MiB)", "recipe batch": out["recipe_batch"],
            "activation checkpointing": out["checkpointing"]}


def plan(device: str, tiny: bool, out: Path) -> list[Step]:
    """The steps, in order, with their limits (seconds on one GPU; ``tiny``: toy sizes on any device)."""
    from selfsup.recipes import recipe_path

    dev = ["--device", device]
    fast = ["--precision", "bf16-mixed"]
    size = ["--batch-size", "8", "--repeats", "2", "--warmup", "1"] if tiny else []
    convnets = ["SimCLR"] if tiny else ["SimCLR", "RotNet", "SwAV", "PixPro"]
    workers = 2 if tiny else max(8, min(12, (os.cpu_count() or 8) - 2))
    photos, shards = (16, 4) if tiny else (1024, 16)

    def photo_set() -> str:
        from selfsup.bench.photos import photo_source

        return photo_source(photos, shards).spec

    def bench(name: str, methods: list[str], extra: list[str], limit: float) -> Step:
        json_out = out / f"bench-{name}.json"
        args = ["bench", *dev, *fast, *extra, *size, "--methods", *methods, "--out", str(json_out)]
        return Step(f"selfsup bench {' '.join(methods)}", lambda: args, limit, json_out, bench_summary)

    def max_batch(recipe: str, tiny_args: list[str]) -> Step:
        json_out = out / f"max-batch-{Path(recipe).stem}.json"
        limits = ["--start", "4", "--limit", "32", "--memory-mib", "8", *tiny_args] if tiny else \
            ["--start", "32", "--limit", "2048"]
        return Step(f"largest batch: {recipe}", lambda: ["bench", "max-batch", "-c", str(recipe_path(recipe)),
                                                         "--source", photo_set(), *dev, "--out", str(json_out),
                                                         "--data.init_args.num_workers", "0", *limits],
                    45, json_out, batch_summary)

    data_json, knn_json = out / "bench-data.json", out / "bench-knn.json"
    knn_size = ["--train", "2000", "--dims", "32", "--queries", "200"] if tiny else \
        ["--train", "100000", "--dims", "2048", "--queries", "10000"]
    fit = ["fit", "-c", str(recipe_path(RESNET50)), "--trainer.accelerator", "cpu" if device == "cpu" else "gpu",
           "--trainer.devices", "1", "--trainer.num_nodes", "1", "--trainer.strategy", "auto",
           "--trainer.sync_batchnorm", "false", "--trainer.callbacks", "[]", "--trainer.limit_val_batches", "0",
           "--trainer.max_epochs", "100000", "--trainer.log_every_n_steps", "1" if tiny else "10",
           "--run_dir", str(out / "fit"), "--data.init_args.num_workers", str(workers),
           *(["--trainer.max_steps", "4", "--data.init_args.batch_size", "4", *TINY_RESNET] if tiny else
             ["--trainer.max_time", "00:00:02:00"])]
    return [
        bench("convnets", convnets, ["--channels-last"], 60),
        *([] if tiny else [bench("video", ["CVRL"], ["--channels-last"], 75)]),  # builds moving-MNIST first
        bench("vit", ["SimMIM"], [], 30),
        Step("selfsup bench data --device (views' device half, decode_jpeg)",
             lambda: ["bench", "data", *dev, "--no-small", "--no-clips", "--kinetics", "0", "--repeats", "1",
                      "--photos", "16" if tiny else "256", "--out", str(data_json)], 60, data_json, data_summary),
        Step("selfsup bench knn --against-faiss-cpu",
             lambda: ["bench", "knn", *dev, "--against-faiss-cpu", *knn_size, "--out", str(knn_json)], 45, knn_json,
             knn_summary),
        max_batch(RESNET50, TINY_RESNET),
        max_batch(VIT_B, TINY_VIT),
        Step(f"SimCLR ResNet-50 224 px, real photos, {workers} workers" + (" (tiny)" if tiny else ", 2 min"),
             lambda: [*fit, "--data.init_args.source", photo_set()], 170, None, fit_summary),
    ]


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown table: one row per step and figure."""
    lines = [f"GPU check on {report['card']} (torch {report['torch']}), {report['seconds']:.0f} s in all", "",
             "| step | status | s | figure | value |", "|---|---|---|---|---|"]
    for r in report["steps"]:
        figures = list(r.get("summary", {}).items()) or [("reason", r.get("reason", "-"))]
        if r["status"] != "ok" and figures[0][0] != "reason":
            figures.insert(0, ("reason", r.get("reason", "-")))
        for i, (name, value) in enumerate(figures):
            head = (r["step"], r["status"], f"{r['seconds']:.0f}") if i == 0 else ("", "", "")
            lines.append(f"| {' | '.join(head)} | {name} | {str(value).replace('|', '/')} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="selfsup bench gpu-check", description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="toy sizes: tests the script where no GPU is")
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--budget-s", type=float, default=BUDGET_S, help="the whole check's time limit")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    start, results = time.perf_counter(), []
    for step in plan(args.device, args.tiny, args.out.resolve()):
        left = args.budget_s - (time.perf_counter() - start)
        if left < 5:
            results.append({"step": step.name, "status": "skipped", "seconds": 0.0, "reason": "no time left"})
        else:
            results.append(run_step(step, min(step.limit_s, left)))
        r = results[-1]
        print(f"{r['status']:>7} {r['seconds']:6.0f} s  {step.name}" + (f": {r['reason']}" if "reason" in r else ""),
              flush=True)
        for name, value in r.get("summary", {}).items():
            print(f"{'':>17}{name}: {value}", flush=True)
    import torch  # only now: a CUDA context in this process would hold GPU memory while the steps run

    card = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() else "CPU"
    report = {"card": card, "device": args.device, "tiny": args.tiny, "torch": torch.__version__,
              "seconds": time.perf_counter() - start, "steps": results}
    (args.out / "gpu-check.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / "gpu-check.md").write_text(markdown(report))
    print(f"written: {args.out / 'gpu-check.json'}, {args.out / 'gpu-check.md'}")
    return 0 if all(r["status"] == "ok" for r in results) else 1
