"""Where a run's minutes go: every test's time (setup + call + teardown, so a session fixture counts in the first
test that needs it) and each file's total, written to DURATIONS after each run (parallel workers' included);
`.ci/run` prints its head, `python tests/durations.py` too."""

from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import pytest

DURATIONS = Path(__file__).resolve().parents[1] / "runs" / "test-durations.txt"
_times: dict[str, float] = defaultdict(float)
_outcomes: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _times[report.nodeid] += report.duration
    if report.when == "call" or report.outcome != "passed":
        _outcomes.setdefault(report.nodeid, report.outcome)


def table(times: dict[str, float], outcomes: dict[str, str]) -> str:
    """Files by total time, then tests by time; seconds."""
    files: dict[str, float] = defaultdict(float)
    for nodeid, seconds in times.items():
        files[nodeid.split("::")[0]] += seconds
    lines = [f"{sum(times.values()):9.1f} s  in {len(times)} tests, {len(files)} files", "", "per file:"]
    lines += [f"{s:9.1f}  {name}" for name, s in sorted(files.items(), key=lambda kv: -kv[1])]
    lines += ["", "per test:"]
    lines += [f"{s:9.2f}  {nodeid}  {outcomes.get(nodeid, '')}" for nodeid, s in
              sorted(times.items(), key=lambda kv: -kv[1])]
    return "\n".join(lines) + "\n"


def pytest_sessionfinish(session: pytest.Session) -> None:
    if hasattr(session.config, "workerinput") or not _times:  # a pytest-xdist worker: its controller writes
        return
    DURATIONS.parent.mkdir(exist_ok=True)
    DURATIONS.write_text(table(_times, _outcomes))


if __name__ == "__main__":  # the head of the last run's table
    lines = DURATIONS.read_text().splitlines() if DURATIONS.is_file() else ["no durations yet: run the tests"]
    print("\n".join(lines[: int(sys.argv[1]) if len(sys.argv) > 1 else 40]))
