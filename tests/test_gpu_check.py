"""`selfsup bench gpu-check`: the prepared GPU run, dry-run on the CPU at toy sizes so it cannot rot."""

import json

import pytest

from clirun import REPO, selfsup
from selfsup.bench.gpucheck import Step, markdown, run_step


@pytest.mark.slow
def test_the_dry_run_on_a_cpu_takes_every_step(tmp_path, mnist5k):
    out = tmp_path / "gpu-check"
    proc = selfsup("bench", "gpu-check", "--device", "cpu", "--tiny", "--out", str(out), cwd=tmp_path, timeout=400)
    report = json.loads((out / "gpu-check.json").read_text())
    assert [r["status"] for r in report["steps"]] == ["ok"] * 7, proc.stdout
    convnet, vit, data, knn, resnet, vit_batch, fit = (r["summary"] for r in report["steps"])
    assert "step/floor" in convnet["SimCLR"] and "step/floor" in vit["SimMIM"]  # channels-last, and the ViT
    assert "decode_jpeg on the device" in data and "worker half" in data["SimCLR"]
    assert "same neighbours 1.0000" in knn["2000 x 32"]  # faiss on the device against faiss-cpu
    assert resnet["recipe batch"] == 64 and resnet["activation checkpointing"] == "needed"  # 24 in its 8 MiB
    assert vit_batch["recipe batch"] == 128 and vit_batch["activation checkpointing"] == "unknown"  # 32+
    assert fit["images/s"] and fit["train/data_wait"].endswith("%")
    table = (out / "gpu-check.md").read_text()
    assert table.count("| ok |") == 7 and "GPU check on CPU" in table


@pytest.mark.slow  # three selfsup processes
def test_a_failed_step_is_reported_with_its_reason_and_the_next_one_runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(REPO / "ssl"))  # the steps run this checkout's selfsup
    knn = Step("faiss-gpu", lambda: ["bench", "knn", "--device", "cuda", "--train", "100", "--dims", "4",
                                     "--queries", "5", "--out", str(tmp_path / "knn.json")], 120)
    broken = Step("unprepared", lambda: [][1], 120)  # preparing its arguments fails
    slow = Step("slow", lambda: ["bench", "knn", "--train", "3000", "--dims", "32"], 0.5)  # importing torch is slower
    results = [run_step(step, step.limit_s) for step in (knn, broken, slow)]
    assert [r["status"] for r in results] == ["failed", "failed", "timeout"]
    assert "faiss sees no GPU" in results[0]["reason"]  # faiss-cpu installed: the reason names the fix
    assert results[1]["reason"].startswith("IndexError") and "0 s limit" in results[2]["reason"]
    table = markdown({"card": "CPU", "torch": "x", "seconds": 1.0, "steps": results})
    assert table.count("| failed |") == 2 and "faiss sees no GPU" in table
