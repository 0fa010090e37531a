"""bench/gpu_wheels.py (make gpu-wheels): the wheels it carries to the GPU machine are exactly what selfsup needs
beyond that machine's image, and the command it prints fits and names only what travels. No network."""

import importlib.util
import re
import shlex
from importlib.metadata import requires

import pytest
from packaging.requirements import Requirement

from clirun import REPO

tomllib = pytest.importorskip("tomllib", reason="Python 3.11+ reads pyproject.toml")

spec = importlib.util.spec_from_file_location("gpu_wheels", REPO / "bench" / "gpu_wheels.py")
gpu_wheels = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_wheels)
DEVICE = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux",
          "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython"}


def name(text: str) -> str:
    return re.sub(r"[-_.]+", "-", text).lower()


def device_packages() -> set[str]:
    lines = (REPO / "bench" / "device-packages.txt").read_text().splitlines()
    return {name(line.strip()) for line in lines if line.strip() and not line.startswith("#")}


def applies(req: Requirement, extra: str = "") -> bool:
    return req.marker is None or req.marker.evaluate({**DEVICE, "extra": extra})


def missing_on_device(roots: list[Requirement]) -> set[str]:
    """Each requirement the device's image lacks, and theirs in turn (from the metadata installed here)."""
    device, found, todo = device_packages(), set(), list(roots)
    while todo:
        req = todo.pop()
        if name(req.name) in device or name(req.name) in found:
            continue
        found.add(name(req.name))
        for line in requires(req.name) or []:
            sub = Requirement(line)
            if applies(sub) or any(applies(sub, extra) for extra in req.extras):
                todo.append(sub)
    return found


def test_the_wheels_are_what_selfsup_needs_beyond_the_device_image():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    roots = [Requirement(r) for r in project["dependencies"] + extras["video"] + extras["cpu"]]
    needed = missing_on_device([r for r in roots if applies(r)])
    assert {"jsonargparse", "docstring-parser", "av"} <= needed  # an extra's requirement and an extra's package
    assert "torch" not in needed and "lightning" not in needed  # the image's own, not carried
    assert needed == {name(w) for w in gpu_wheels.WHEELS}
    assert [name(Requirement(r).name) for r in extras["gpu"]] == ["faiss-gpu"]  # too large: faiss-cpu travels


def test_every_wheel_is_pinned_in_constraints():
    pinned = gpu_wheels.pins()
    assert all(name(w) in pinned for w in gpu_wheels.WHEELS)
    assert pinned["docstring-parser"] and gpu_wheels.wheel_key(
        REPO / ".whl" / "docstring_parser-0.18.0-py3-none-any.whl") == ("docstring-parser", "0.18.0")


def test_the_run_command_fits_and_names_only_what_travels():
    command = gpu_wheels.run_command(out="runs/gpu-check")
    assert len(command) < gpu_wheels.COMMAND_LIMIT
    words = shlex.split(command)
    assert "--no-index" in words and f"{gpu_wheels.WHEELS_DIR}/*.whl" in words  # installs the carried wheels only
    assert "PYTHONPATH=/tmp/site:$PWD/ssl" in words and (REPO / "ssl/selfsup/__main__.py").is_file()
    check = words.index("gpu-check")
    assert words[check - 3:check + 3] == ["-m", "selfsup", "bench", "gpu-check", "--out", "runs/gpu-check"]
    assert words[check - 8:check - 4] == ["timeout", "-k", str(gpu_wheels.KILL_AFTER_S), str(gpu_wheels.CHECK_LIMIT_S)]
    assert gpu_wheels.CHECK_LIMIT_S + gpu_wheels.KILL_AFTER_S < gpu_wheels.RUN_LIMIT_S <= 600  # stops, then the copy
    for word in words:  # a path is the wheels, the check's output or a file of the repository
        if "/" in word and not word.startswith(("/", "$", "PYTHONPATH=")):
            assert word.startswith(("runs/gpu-check", f"{gpu_wheels.WHEELS_DIR}/")) or (REPO / word).exists(), word
    assert {"runs/gpu-check/gpu-check.json", "runs/gpu-check/gpu-check.md"} <= set(words)  # what the check writes
    assert command in (REPO / "docs" / "benchmarks.md").read_text()  # the page shows the command as it is
