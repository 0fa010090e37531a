"""`selfsup results` given a broken recipes file, damaged kept figures or outputs it cannot write: one line and exit
2 before any recipe runs (these were tracebacks, some after the whole hour of runs); Ctrl-C keeps what finished
and says how to go on. In this process (`hostile.cli`), with the recipes' runs replaced."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hostile import cli
from selfsup.results import Row

GOOD = "recipes:\n  a: {name: A, pretrain: a.yaml, evaluate: {knn: e.yaml}}\n  b: {name: B, pretrain: b.yaml}\n"
KEPT = [{"key": "b", "name": "B", "judged_by": "knn", "scores": {"knn": {"pretrained": 0.5}}}]

# name: ({file: text}, extra arguments, the message's fragment)
ROWS = {
    "bad YAML": ({"r.yaml": "recipes: {a: [1,\n"}, [], "recipes file r.yaml is not readable YAML at line 2"),
    "not UTF-8": ({"r.yaml": b"\xff\xfe recipes"}, [], "recipes file r.yaml is not readable YAML"),
    "recipes a list": ({"r.yaml": "recipes: [a, b]\n"}, [], "needs a mapping 'recipes:' of recipe name"),
    "a recipe with no pretrain": ({"r.yaml": "recipes: {a: {name: A}}\n"}, [],
                                  "recipe 'a': it has no pretrain: the config it pretrains with"),
    "a recipe's seeds as text": ({"r.yaml": "recipes: {a: {pretrain: a.yaml, seeds: '0 1'}}\n"}, [],
                                 "recipe 'a': seeds must be a list, got '0 1'"),
    "an unknown evaluation": ({"r.yaml": "recipes: {a: {pretrain: a.yaml, evaluate: {knnn: e.yaml}}}\n"}, [],
                              "evaluate 'knnn': each evaluation is one of knn, linear"),
    "results.json cut short": ({"r.yaml": GOOD, "docs/results.json": json.dumps(KEPT)[:30]}, ["--only", "a"],
                               "docs/results.json is damaged (Unterminated string"),
    "results.json a score as text": ({"r.yaml": GOOD, "docs/results.json": json.dumps(
        [{**KEPT[0], "scores": {"knn": {"pretrained": "high"}}}])}, ["--only", "a"],
        "docs/results.json is damaged ('high' where a number belongs)"),
    "results.json an object": ({"r.yaml": GOOD, "docs/results.json": '{"key": "b"}'}, ["--only", "a"],
                               "docs/results.json is damaged"),
    "--work a file": ({"r.yaml": GOOD, "w": ""}, ["--work", "w"], "cannot write run outputs to w (File exists)"),
    "--out a folder": ({"r.yaml": GOOD, "docs/results.md/x": ""}, [],
                       "docs/results.md is a folder; selfsup never replaces it: choose another --out"),
}


def recipes_ran(*args, **kwargs):
    pytest.fail("a recipe ran before the mistake was found")


@pytest.mark.parametrize("name", ROWS)
def test_broken_results_inputs_are_one_line_before_anything_runs(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("selfsup.results.run_recipe", recipes_ran)
    files, extra, message = ROWS[name]
    for path, text in files.items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(text if isinstance(text, bytes) else text.encode())
    code, printed = cli("results", "--recipes", "r.yaml", "--out", "docs/results.md", *extra, capsys=capsys)
    errors = [line for line in printed.splitlines() if line.startswith("selfsup: error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], printed[-2000:]


def test_ctrl_c_publishes_what_finished_and_says_how_to_go_on(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("r.yaml").write_text(GOOD + "  c: {name: C, pretrain: c.yaml}\n")
    Path("docs").mkdir()
    Path("docs/results.json").write_text(json.dumps(KEPT))  # b's row from an earlier run: kept, not lost

    def first_then_ctrl_c(key, *args, **kwargs):
        if key != "a":
            raise KeyboardInterrupt
        return Row("a", "A", "knn", scores={"knn": {"pretrained": 0.75}})

    monkeypatch.setattr("selfsup.results.run_recipe", first_then_ctrl_c)
    code, printed = cli("results", "--recipes", "r.yaml", "--work", "w", capsys=capsys)
    assert code == 130 and "Traceback" not in printed, printed
    assert printed.strip().splitlines()[-1] == ("selfsup: stopped by Ctrl-C; kept: the runs and logs in w, the "
                                                "finished a in docs/results.md; go on with: selfsup results "
                                                "--recipes r.yaml --only b c")
    assert [r["key"] for r in json.loads(Path("docs/results.json").read_text())] == ["a", "b"]
    table = Path("docs/results.md").read_text()
    assert "| A |" in table and "0.750" in table and "| B |" in table and "0.500" in table
