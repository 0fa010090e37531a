"""Prepare `selfsup bench gpu-check` for a GPU machine that has no network and whose image already holds Python
3.12, torch, torchvision and Lightning (its packages: bench/device-packages.txt), where a copy of this repository
with up to 64 MiB in all travels and one command of at most 2,000 characters runs.

Here, with network (``make gpu-wheels``): download into ``.whl/`` the wheels of what selfsup needs beyond that
image, at the versions constraints.txt pins, for CPython 3.12 on manylinux x86-64; check that the repository's
files and the wheels stay under 64 MiB; print the command to run there, from the repository's root, with ``.whl``
carried along. It installs the wheels into /tmp/site and runs the check, whose log, JSON and markdown table it
copies to ``$OUT``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WHEELS_DIR = ".whl"
TRAVEL_LIMIT_MIB = 64  # the repository's files and the wheels, together
COMMAND_LIMIT = 2000  # characters
# What selfsup imports that the image lacks (pyproject.toml's dependencies, its video extra and a faiss), then
# what those need in turn that the image lacks. faiss-cpu, not faiss-gpu: faiss-gpu's wheel (135 MB, version
# 1.15.1) and the CUDA 12 libraries it loads do not fit in 64 MiB, so the check's faiss step is skipped there.
WHEELS = ["jsonargparse", "docstring-parser", "typeshed-client", "webdataset", "braceexpand", "mlxtend", "av",
          "faiss-cpu"]
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]
CHECK_LIMIT_S = 540  # the check's own 480 s budget, its start, and a step's last seconds; then it stops, writing
KILL_AFTER_S = 20  # its report, or is killed this much later
RUN_LIMIT_S = 590  # ... and installing the wheels


def normalised(name: str) -> str:
    """A distribution's name as package indexes compare it (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(constraints: Path = REPO / "constraints.txt") -> dict[str, str]:
    """Each ``name==version`` line of a constraints file: normalised name -> version."""
    found = (re.match(r"^([A-Za-z0-9_.-]+)==(\S+)", line) for line in constraints.read_text().splitlines())
    return {normalised(m[1]): m[2] for m in found if m}


def wheel_key(wheel: Path) -> tuple[str, str]:
    """(normalised name, version) of a wheel file."""
    name, version = wheel.name.split("-")[:2]
    return normalised(name), version


def run_command(out: str = "runs/gpu-check") -> str:
    """The command to run on the GPU machine, from the repository's root, with ``.whl`` carried along."""
    return (f"python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "
            f"/tmp/site {WHEELS_DIR}/*.whl || exit 1; export PYTHONPATH=/tmp/site:$PWD/ssl PYTHONUNBUFFERED=1; "
            f"nvidia-smi -L; timeout -k {KILL_AFTER_S} {CHECK_LIMIT_S} python3 -m selfsup bench gpu-check --out {out} "
            f"2>&1 | tee $OUT/gpu-check.log; cp {out}/gpu-check.json {out}/gpu-check.md $OUT/")


def travelling_bytes() -> int:
    """The bytes of the repository's files that travel: tracked, and untracked but not ignored."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            check=True, capture_output=True, text=True).stdout
    return sum(p.stat().st_size for p in (REPO / name for name in set(listed.split("\0")) if name) if p.is_file())


def download(dest: Path) -> list[Path]:
    """The pinned wheel of each of ``WHEELS`` in ``dest`` (downloaded unless there); other wheels there removed."""
    pinned = pins()
    wanted = {(normalised(name), pinned[normalised(name)]) for name in WHEELS}
    platforms = [f"--platform={p}" for p in PLATFORMS]
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp", *platforms, "--dest", str(dest),
                    *(f"{name}=={version}" for name, version in sorted(wanted))], check=True)
    wheels = sorted(dest.glob("*.whl"))
    for stale in [w for w in wheels if wheel_key(w) not in wanted]:  # two versions of one package stop the install
        stale.unlink()
    return [w for w in wheels if wheel_key(w) in wanted]


def main() -> int:
    dest = REPO / WHEELS_DIR
    dest.mkdir(exist_ok=True)
    try:
        wheels = download(dest)
    except subprocess.CalledProcessError:
        print(f"error: pip could not download the wheels into {dest} (no network?); run again with network",
              file=sys.stderr)
        return 2
    for wheel in wheels:
        print(f"{wheel.stat().st_size / 2**20:8.2f} MiB  {wheel.name}")
    wheel_mib = sum(w.stat().st_size for w in wheels) / 2**20
    tree_mib = travelling_bytes() / 2**20
    total = wheel_mib + tree_mib
    print(f"{wheel_mib:8.2f} MiB  {len(wheels)} wheels; with the repository's files {total:.2f} MiB of "
          f"{TRAVEL_LIMIT_MIB}")
    if total >= TRAVEL_LIMIT_MIB:
        print(f"error: {total:.1f} MiB would travel, over {TRAVEL_LIMIT_MIB} MiB: remove large untracked files",
              file=sys.stderr)
        return 2
    command = run_command()
    print(f"\nOn the GPU machine, from the repository's root, carrying {WHEELS_DIR} ({len(command)} characters):")
    print(json.dumps({"carry": [WHEELS_DIR], "timeout_s": RUN_LIMIT_S, "command": command}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
