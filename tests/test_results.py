"""`selfsup results`: the real recipes' steps end to end (quick overrides), baselines beside the pretrained
backbone, and a failing recipe that is reported in its row while the others finish."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from clirun import REPO, selfsup
from selfsup.backbones import build_backbone


def test_the_pixels_backbone_is_the_flattened_image() -> None:
    x = torch.rand(2, 1, 28, 28)
    pixels = build_backbone("pixels", in_channels=1, image_size=28)
    assert pixels.num_features == 784 and torch.equal(pixels(x), x.flatten(1))
    assert list(pixels.state_dict()) == []


def test_the_pretraining_cell_gives_the_range_of_the_seeds_times_and_old_rows_still_load(tmp_path: Path) -> None:
    from selfsup.results import Row, minutes_cell, previous_rows

    row = Row("cvrl", "CVRL", "knn", seconds=480.0, seed_seconds={0: 480.0, 1: 504.0})
    assert minutes_cell(row) == "8.0 min (8.0-8.4)"
    assert minutes_cell(Row("x", "X", "knn", seconds=90.0)) == "1.5 min" and minutes_cell(Row("x", "X", "knn")) == ""
    old = tmp_path / "results.json"  # written before seed times were kept
    old.write_text(json.dumps([{"key": "x", "name": "X", "judged_by": "knn", "seconds": 90.0,
                                "seed_scores": {"0": 0.5}}]))
    assert previous_rows(old)["x"].seed_scores == {0: 0.5} and previous_rows(old)["x"].seed_seconds == {}


@pytest.mark.slow
def test_results_runs_the_recipes_and_marks_a_failing_one(tmp_path: Path) -> None:
    recipes = yaml.safe_load((REPO / "experiments/results.yaml").read_text())
    simclr = {**recipes["recipes"]["simclr"], "seeds": [0, 1]}  # kNN and the linear probe; judged by kNN
    broken = {"name": "Broken", "pretrain": "experiments/simclr/no-such-recipe.yaml", "evaluate": {}}
    spec = tmp_path / "recipes.yaml"
    spec.write_text(yaml.safe_dump({"quick_eval": recipes["quick_eval"],
                                    "recipes": {"broken": broken, "simclr": simclr}}))
    out = tmp_path / "docs/results.md"
    out.parent.mkdir()
    out.write_text("# Results\n\nbefore\n<!-- results:start -->\nold table\n<!-- results:end -->\nafter\n")
    proc = selfsup("results", "--recipes", str(spec), "--quick", "--out", str(out), "--work", str(tmp_path / "w"),
                   cwd=tmp_path)
    table = out.read_text()
    assert table.startswith("# Results\n\nbefore\n") and table.endswith("<!-- results:end -->\nafter\n")
    assert "old table" not in table
    assert "| Broken (pretraining failed) |" in table and "no-such-recipe.yaml" in table, table
    simclr_row = next(line for line in table.splitlines() if line.startswith("| SimCLR |"))
    knn, linear = ([float(v) for v in simclr_row.split("|")[i].split("/")] for i in (5, 6))
    assert simclr_row.split("|")[-2].strip().endswith("2 seeds)"), simclr_row  # median (range) of seeds 0 and 1
    assert len(knn) == len(linear) == 3 and all(0 < v <= 1 for v in knn + linear)  # pretrained / random / pixels
    assert knn[2] > 0.9  # raw pixels on MNIST-5k: about 0.94
    assert out.with_suffix(".png").stat().st_size > 1000
    rows = json.loads((tmp_path / "w/results.json").read_text())
    assert rows[1]["scores"]["knn"].keys() == rows[1]["scores"]["linear"].keys() == {"pretrained", "random", "pixels"}
    assert rows[1]["seed_scores"]["0"] == rows[1]["scores"]["knn"]["pretrained"] and "1" in rows[1]["seed_scores"]
    assert rows[1]["seed_seconds"].keys() == {"0", "1"} and rows[1]["seed_seconds"]["0"] == rows[1]["seconds"]
    assert simclr_row.split("|")[4].strip().endswith(")"), simclr_row  # first seed's minutes (range over seeds)
    assert "written:" in proc.stdout

    # rerun one recipe: the other rows stay, read back from results.json beside the page
    selfsup("results", "--recipes", str(spec), "--quick", "--only", "broken", "--out", str(out), "--work",
            str(tmp_path / "w2"), cwd=tmp_path)
    again = out.read_text()
    assert simclr_row in again.splitlines() and "| Broken (pretraining failed) |" in again
    assert [r["key"] for r in json.loads(out.with_suffix(".json").read_text())] == ["broken", "simclr"]
