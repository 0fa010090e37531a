"""The markers that say what a test needs, given by rule at collection, so a new test file gets them without
listing them (a test may also carry any of them itself):

- ``docs``: the README's and docs/' checks (tests/test_docs.py).
- ``slurm``: a real SLURM cluster (a module named for it; tests/test_slurm.py skips without one).
- ``multiproc``: several processes training together (gloo ranks, torchrun nodes, DDP devices): a test whose
  code or fixtures start them, or a module named for multi-node training.
- ``video``: PyAV and video data: a module that imports ``av``, or a test whose code or fixtures name video
  data.
- ``slow``: more than a few seconds (marked by hand where the test is written).

``serial`` (no marker of its own) is every ``slurm`` and ``multiproc`` test and every timing test (a module in
SERIAL_MODULES): under pytest-xdist they all go to one worker (``--dist loadgroup``), so that no two of them
compete for the cores, the cluster or the ports.
"""

from __future__ import annotations

import inspect
import re

import pytest

MULTIPROC = re.compile(r"mp\.spawn\(|start_processes\(|init_process_group\(|\"--trainer\.devices\", \"[2-9]\"")
VIDEO = re.compile(r"moving-mnist|\bmp4\b|import av\b|encode_video|EvalClips|ClipViews|CVRL\(|r3d_|mc3_|r2plus1d")
IMPORTS_AV = re.compile(r"^(import av\b|(av = )?pytest\.importorskip\(\"av\"\))", re.M)
SERIAL_MODULES = ("test_perf.py", "test_bench.py")


def _source(obj: object) -> str:
    try:
        return inspect.getsource(obj)
    except (OSError, TypeError):
        return ""


def _fixture_code(item: pytest.Item) -> str:
    """The source of the fixtures ``item`` uses (a fixture may start the processes its tests read)."""
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info is not None else []
    return "".join(_source(found[-1].func) for found in defs if found)


def rule_markers(item: pytest.Item) -> set[str]:
    """The markers ``item`` gets by the rules of the module docstring."""
    module = item.path.name
    code = _source(getattr(item, "function", None)) + _fixture_code(item)
    module_code = _source(getattr(item, "module", None))
    names = set()
    if module == "test_docs.py":
        names.add("docs")
    if "slurm" in module:
        names.add("slurm")
    if "multinode" in module or MULTIPROC.search(code):
        names.add("multiproc")
    if IMPORTS_AV.search(module_code) or VIDEO.search(code):
        names.add("video")
    return names


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group markers
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for name in sorted(rule_markers(item) - {m.name for m in item.iter_markers()}):
            item.add_marker(name)
        if item.get_closest_marker("slurm") or item.get_closest_marker("multiproc") or \
                item.path.name in SERIAL_MODULES:
            item.add_marker(pytest.mark.xdist_group("serial"))
