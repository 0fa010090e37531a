"""The README and docs/: every command in them runs here, in page order, through the real `selfsup` (or is marked
as needing a GPU, a cluster or a data set that is not in the repository); the docs site builds strictly; no page
or docstring points outside the repository.

The commands run at the smallest size that still exercises their code, by one rule for every page: each
`selfsup fit` gets SHORT_FIT appended (one epoch of two batches of 32), and every command reads the built-in
data sets cut to their first few hundred samples per split (the `small_builtins` fixture, SMALL_SPLITS in
builtin_cache.py), so that `knn`, `plot`, feature caches and probes pass over hundreds of samples, not
thousands. The full-length runs, and the numbers the pages quote, come from `make results`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from clirun import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]
MARKS = ("# [GPU]", "# [cluster]", "# [data]")  # a command that cannot run on a CPU-only machine with the repo alone
# What the runner appends to every `selfsup fit`: a few steps of the documented command, not the whole schedule.
SHORT_FIT = ("--trainer.max_epochs 1 --trainer.limit_train_batches 2 --trainer.limit_val_batches 2 "
             "--data.init_args.batch_size 32")
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[tuple[str, str]]:
    """The fenced code blocks of a page: (language, text), in order."""
    return BLOCK.findall(page.read_text())


def commands(code: str) -> list[str]:
    """The commands of a bash block, continuation lines joined, comment-only and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", "", code)
    return [line.strip() for line in joined.splitlines() if line.strip() and not line.strip().startswith("#")]


def marked(command: str) -> bool:
    return command.endswith(MARKS)


def page_commands(page: Path) -> list[str]:
    return [c for lang, code in blocks(page) if lang == "bash" for c in commands(code)]


def runnable(page: Path) -> bool:
    return any(not marked(c) and not c.startswith("make ") for c in page_commands(page))


def rel(page: Path) -> str:
    return str(page.relative_to(REPO))


def test_every_command_is_run_here_or_marked():
    targets = set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.M))
    for page in PAGES:
        for command in page_commands(page):
            if marked(command):
                continue
            program = command.split()[0]
            if program == "make":  # CI runs `make docs` and `make test`; `make demo` is simclr.md's commands
                assert command.split()[1] in targets, (rel(page), command)
            else:  # run by test_page_commands_run, or refused here: mark it or make it runnable
                assert (program == "selfsup" or re.match(r"^[A-Z]+=\$\(ls ", command)
                        or command.startswith("export SELFSUP_TRUST=")), (rel(page), command)
            assert "torchrun" not in command and "sbatch" not in command, (rel(page), command)


def test_the_site_quickstart_is_the_readme_quickstart():
    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("## Quickstart"):readme.index("## Which method?")]
    in_readme = [c for lang, code in BLOCK.findall(section) if lang == "bash" for c in commands(code)]
    assert in_readme and page_commands(REPO / "docs/quickstart.md") == in_readme
    python = [code for lang, code in BLOCK.findall(section) if lang == "python"]
    assert python == [code for lang, code in blocks(REPO / "docs/quickstart.md") if lang == "python"]


def test_every_config_named_in_the_docs_exists():
    for page in PAGES:
        for name in re.findall(r"experiments/[\w/.-]+\.yaml", page.read_text()):
            assert "..." in name or (REPO / name).is_file(), (rel(page), name)  # experiments/...yaml: any recipe


def test_nothing_points_outside_the_repository():
    for root in ("ssl", "docs", "tests", "experiments", "slurm", "data", "bench"):
        for path in (REPO / root).rglob("*"):
            if path.suffix in (".py", ".md", ".yaml", ".sbatch", ".sh") and path.name != "test_docs.py":
                assert "METHODS.md" not in path.read_text(), path
    for page in PAGES:
        assert "METHODS.md" not in page.read_text() and "/work/" not in page.read_text(), page


# Modules of selfsup/methods that are not a method: the base class, and the shared parts of a family of methods
# (a page of their own, but no recipe to put in the results table).
NOT_METHODS = {"__init__": None, "base": None, "twoview": "family"}  # any other module: a method


def test_every_method_module_has_a_page_in_the_site_and_a_results_row():
    nav = (REPO / "mkdocs.yml").read_text()
    recipes = yaml.safe_load((REPO / "experiments/results.yaml").read_text())["recipes"]
    pretrained = {Path(r["pretrain"]).parts[1] for r in recipes.values()}  # experiments/METHOD/...
    for module in sorted((REPO / "ssl/selfsup/methods").glob("*.py")):
        kind = NOT_METHODS.get(module.stem, "method")
        if kind is None:
            continue
        page = f"methods/{module.stem}.md"
        assert (REPO / "docs" / page).is_file() and f" {page}\n" in nav, f"{module.name} needs docs/{page} in the nav"
        if kind == "method":
            assert module.stem in pretrained, f"{module.name} needs a row in experiments/results.yaml"
        else:  # a family's shared code: its page says it is no method and has no results row
            assert module.stem not in pretrained and "no recipe" in (REPO / "docs" / page).read_text()


NUMBERS = {12: "twelve", 13: "thirteen", 14: "fourteen", 15: "fifteen", 16: "sixteen", 17: "seventeen"}


def test_the_readme_names_every_method_and_counts_them():
    """The intro (and so docs/index.md's) lists each method page's title in bold, and says how many there are."""
    readme = (REPO / "README.md").read_text()
    intro = " ".join(readme[:readme.index("<!-- /shared:intro -->")].split())
    methods = [m.stem for m in (REPO / "ssl/selfsup/methods").glob("*.py") if m.stem not in NOT_METHODS]
    titles = [(REPO / f"docs/methods/{m}.md").read_text().splitlines()[0].removeprefix("# ") for m in methods]
    assert [t for t in titles if f"**{t}**" not in intro] == []
    assert f"implements {NUMBERS.get(len(titles), len(titles))} self-supervised methods" in intro


def test_no_page_states_a_test_count():
    """How many tests there are changes with every commit; the pages say what the suite checks instead."""
    for page in PAGES:
        assert not re.search(r"\b\d[\d,]* (quick |slow |fast )?tests\b", page.read_text()), rel(page)


def test_generated_docs_are_current():
    """docs/cli.md's reference (from the parsers) and docs/index.md's sections copied from the README."""
    from selfsup.docgen import COMMAND, pages

    stale = [rel(path) for path, text in pages(REPO).items() if path.read_text() != text]
    assert not stale, f"{', '.join(stale)} stale: regenerate with {COMMAND}"


def test_docgen_catches_every_subcommand():
    from selfsup.console import LIGHTNING, TOOLS
    from selfsup.docgen.cli_page import reference

    page = reference()
    for name in [*LIGHTNING, *TOOLS, "shards write", "shards inspect", "bench data", "bench knn", "bench max-batch",
                 "bench gpu-check"]:
        assert f"`selfsup {name}`" in page or f"### selfsup {name}\n" in page, name
    for option in ("`--val-fraction`", "`--checkpoint.every_minutes`", "`--threads`", "`--k`", "`--budget-s`"):
        assert option in page, option


def results_figures(name: str) -> dict[str, str]:
    """A kNN-judged row of docs/results.md's table (``| SimCLR |``): its minutes, kNN and linear cells (seed 0;
    pretrained, random init, raw pixels) and the median and range of its 3 seeds."""
    row = next(line for line in (REPO / "docs/results.md").read_text().splitlines() if line.startswith(f"| {name} |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    knn, linear = cells[4].split(" / "), cells[5].split(" / ")
    median, low, high = re.fullmatch(r"([\d.]+) \(([\d.]+)-([\d.]+), 3 seeds\)", cells[10]).groups()
    return {"minutes": cells[3], "knn": knn[0], "knn_random": knn[1], "knn_pixels": knn[2], "linear": linear[0],
            "median": median, "low": low, "high": high}


def test_the_readme_quotes_the_demo_as_the_results_table_has_it():
    """The demo's figures in the README (and so docs/index.md) are the SimCLR row of docs/results.md."""
    f = results_figures("SimCLR")
    readme = (REPO / "README.md").read_text()
    demo = " ".join(readme[readme.index("`make demo` prints"):readme.index("<!-- /shared:install -->")].split())
    assert f"random-init backbone {f['knn_random']}0 " in demo and f"pretrained backbone {f['knn']}0 " in demo
    assert f"LinearProbe on val: top1 {f['linear']}0" in demo and f"({f['minutes']} of pretraining)" in demo
    assert (f"the kNN was {f['low']}-{f['high']} (median {f['median']}), against {f['knn_pixels']} for the raw "
            f"pixels and {f['knn_random']} for the random-init backbone") in demo


@pytest.mark.parametrize("name", ["SimCLR", "SwAV"])
def test_the_method_table_quotes_the_results_table(name):
    """README's (and so docs/index.md's) "Which method?" row of a kNN-judged method: docs/results.md's figures."""
    f = results_figures(name)
    row = next(line for line in (REPO / "README.md").read_text().splitlines() if line.startswith(f"| **{name}** |"))
    assert (f"kNN median {f['median']} over 3 seeds ({f['low']}-{f['high']}; random init {f['knn_random']}, raw "
            f"pixels {f['knn_pixels']}), linear {f['linear']}, {f['minutes']}") in row, row


def test_the_docs_site_builds_strictly(tmp_path):
    mkdocs = shutil.which("mkdocs", path=str(Path(sys.executable).parent))
    if mkdocs is None:
        pytest.skip("mkdocs is not installed: make install (the docs extra)")
    proc = subprocess.run([mkdocs, "build", "--strict", "--site-dir", str(tmp_path / "site")], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "WARNING" not in proc.stderr, proc.stderr[-3000:]
    for page in ("index.html", "quickstart.html", "methods/swav.html", "api.html"):
        assert (tmp_path / "site" / page).is_file(), page
    assert "sinkhorn" in (tmp_path / "site/api.html").read_text()  # the reference is generated from docstrings


def photos(root: Path) -> None:
    """The quickstart's folder: 2 classes x 150 small RGB photos (noise tinted by class)."""
    rng = np.random.default_rng(0)
    for label, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(150):
            pixels = rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)
            pixels[..., 2 * label] = 255 - pixels[..., 2 * label] // 4
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")


def script(page: Path) -> tuple[str, str]:
    """A page's commands and Python blocks as one bash script, in page order; marked commands and `make` left
    out. `selfsup` runs this checkout's CLI; `fit` gets SHORT_FIT appended. Python blocks run with the page's
    earlier Python blocks before them, as in one reader's session. Returned: the script, and the page's Python
    blocks joined (importable as my_methods, which adding-a-method.md trains through the CLI)."""
    lines = ["set -euo pipefail",
             f'selfsup() {{ if [ "$1" = fit ]; then "$PY" -m selfsup.cli "$@" {SHORT_FIT}; '
             'else "$PY" -m selfsup.cli "$@"; fi; }']
    python: list[str] = []
    for lang, code in blocks(page):
        if lang == "bash":
            lines += [c for c in commands(code) if not marked(c) and not c.startswith("make ")]
        elif lang == "python":
            python.append(code)
            lines.append(f"\"$PY\" - <<'PYTHON'\n{''.join(python)}PYTHON")
    return "\n".join(lines) + "\n", "".join(python)


def parse_list(pages: list[Path], root: Path) -> list[dict]:
    """Every `selfsup` command of ``pages`` for parse_commands.py: its arguments, each `$NAME` (a checkpoint the
    page found with `NAME=$(ls ...)`) replaced by ``root``/last.ckpt, and the variables the page exported."""
    out = []
    for page in pages:
        env: dict[str, str] = {}
        for command in page_commands(page):
            if marked(command) or command.startswith("make ") or re.match(r"^[A-Z]+=\$\(ls ", command):
                continue
            if command.startswith("export "):
                name, value = command.split()[1].split("=", 1)
                env[name] = value
            else:
                words = shlex.split(re.sub(r"\$[A-Z]+\b", str(root / "last.ckpt"), command), comments=True)
                out.append({"where": f"{rel(page)}: {command}", "args": words[1:], "env": env.copy()})
    return out


@pytest.mark.timeout(300)
def test_every_page_command_parses(tmp_path):
    """The quick check of every page's commands (test_page_commands_run runs them): `selfsup` accepts each
    command line's options, its Python class paths included, in one process that stops each command once parsed."""
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    (tmp_path / "my_methods.py").write_text(script(REPO / "docs/adding-a-method.md")[1])
    (tmp_path / "last.ckpt").touch()  # the pages' checkpoints: the CLI checks the file is there, then stops parsed
    commands = parse_list(PAGES, tmp_path)
    assert len(commands) > 30
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "ssl"), str(tmp_path)])}
    refused = tmp_path / "refused.txt"
    proc = subprocess.run([sys.executable, str(REPO / "tests/parse_commands.py"), str(refused)], cwd=tmp_path,
                          input=json.dumps(commands), env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not refused.read_text(), "commands the CLI refuses:\n" + refused.read_text()


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("page", [p for p in PAGES if runnable(p) and p.name != "quickstart.md"], ids=rel)
def test_page_commands_run(page, tmp_path, small_builtins):
    """Each page's commands, in order, in a fresh folder that has the repository's experiments/ (and the
    quickstart's photos/), on the small built-in data sets. docs/quickstart.md holds the README's commands (test
    above)."""
    (tmp_path / "experiments").symlink_to(REPO / "experiments")
    photos(tmp_path / "photos")
    text, python = script(page)
    (tmp_path / "my_methods.py").write_text(python)
    env = {**os.environ, "PY": sys.executable, "OMP_NUM_THREADS": "1", "SELFSUP_CACHE": str(small_builtins),
           "PYTHONPATH": os.pathsep.join([str(REPO / "ssl"), str(tmp_path)])}
    proc = subprocess.run(["bash", "-c", text], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=800)
    assert proc.returncode == 0, f"{rel(page)}:\n{text}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    if page.name == "README.md":
        assert "pretrained backbone" in proc.stdout + proc.stderr and (tmp_path / "backbone.pt").is_file()
