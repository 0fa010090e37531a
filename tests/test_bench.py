"""`selfsup bench` runs every method's real step and its measured floor, and writes its table as JSON."""

import json

from clirun import REPO, selfsup


def test_bench_measures_each_method_against_its_backbone_floor(tmp_path, mnist5k):
    out = tmp_path / "bench.json"
    proc = selfsup("bench", "--batch-size", "16", "--repeats", "1", "--repo", str(REPO), "--out", str(out),
                   cwd=tmp_path)
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"SimCLR", "RotNet", "SwAV"} and "overhead" in proc.stdout
    assert rows["SimCLR"]["backbone_images"] == 32  # two views of 16 images
    assert rows["RotNet"]["backbone_images"] == 64  # four rotations of 16 images
    assert rows["SwAV"]["backbone_images"] == 96  # six crops of 16 images, in two forwards (one per size)
    assert all(r["step_ms"] > 0 and r["floor_ms"] > 0 for r in rows.values())


def test_bench_names_unknown_methods(tmp_path):
    proc = selfsup("bench", "--methods", "BYOL", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "no bench config for BYOL" in proc.stderr
