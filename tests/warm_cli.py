"""`python -m selfsup` in a process forked from a warm interpreter: one per test worker imports torch, Lightning,
torchvision and FAISS once, and each command is a fresh child of it (its own cwd, environment, stdout, stderr and
exit status; selfsup itself is imported anew in every child, so what it reads from the environment at import is
read for each command). A command then starts in a fraction of a second instead of the ~5 CPU-seconds of imports
that each fresh interpreter pays.

A warm interpreter serves the commands whose environment is its own apart from PYTHONPATH, SELFSUP_*, COVERAGE_*
and PYTEST_CURRENT_TEST, so what the third-party libraries read at import is what they would read in a fresh one;
clirun.selfsup starts a new one when the environment has changed (a test that imports sklearn sets KMP_*).
With SELFSUP_TEST_FRESH_CLI=1 (or ``fresh=True``) every command runs in a fresh interpreter as a user runs it.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import select
import subprocess
import sys
import threading
import traceback
from pathlib import Path

# What every command imports and no command changes: the third-party libraries, not selfsup.
PRELOAD = ("torch", "torchvision", "lightning.pytorch", "lightning.pytorch.cli", "torchmetrics", "faiss",
           "webdataset", "PIL.Image", "numpy", "yaml")


def _import_time_env(env: dict[str, str]) -> dict[str, str]:
    """The part of ``env`` a library may read at import: all of it but the search path, selfsup's own variables
    and the name of the running test."""
    return {k: v for k, v in env.items() if k not in ("PYTHONPATH", "PYTEST_CURRENT_TEST")
            and not k.startswith(("SELFSUP_", "COVERAGE_"))}


class WarmInterpreter:
    """A server process that has imported PRELOAD and forks one child per command."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("COVERAGE_")}
        self.env = _import_time_env(env)
        # unbuffered: each reply is read byte by byte, so none waits in a buffer that select() does not see
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=env, bufsize=0)
        atexit.register(self.close)

    def serves(self, env: dict[str, str]) -> bool:
        return self.proc.poll() is None and _import_time_env(env) == self.env

    def run(self, args: list[str], cwd: Path, env: dict[str, str], out: Path, err: Path, timeout: float) -> int:
        """Run ``python -m selfsup ARGS`` in a forked child; its exit status (negative: killed by that signal)."""
        request = {"args": args, "cwd": str(cwd), "env": env, "out": str(out), "err": str(err)}
        self.proc.stdin.write(json.dumps(request).encode() + b"\n")
        pid = json.loads(self._reply(timeout))["pid"]  # the first waits for the imports
        try:
            return json.loads(self._reply(timeout))["status"]
        except subprocess.TimeoutExpired:
            os.kill(pid, 9)
            self._reply(60)  # its status, so the next command reads its own
            raise subprocess.TimeoutExpired(["selfsup", *args], timeout) from None

    def _reply(self, timeout: float) -> bytes:
        if not select.select([self.proc.stdout], [], [], timeout)[0]:
            raise subprocess.TimeoutExpired("warm selfsup", timeout)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the warm selfsup interpreter exited")
        return line

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=30)


def _child(request: dict) -> None:
    """In the forked child: become ``python -m selfsup ARGS`` run in ``cwd`` with ``env``, then exit as it would."""
    written = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, request["out"], written), (2, request["err"], written)):
        opened = os.open(path, flags, 0o644)
        os.dup2(opened, fd)  # the server's request and reply pipes are closed in the child this way too
        os.close(opened)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [request["cwd"], *extra, *sys.path[1:]]  # as `python -m`: the cwd, PYTHONPATH, the rest
    sys.argv = ["selfsup", *request["args"]]
    if os.environ.get("COVERAGE_PROCESS_START"):  # measured as coverage's .pth file measures a new interpreter
        import coverage

        coverage.process_startup()
    status = 0
    try:
        runpy.run_module("selfsup", run_name="__main__", alter_sys=True)
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            status = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException:  # noqa: BLE001  (what the interpreter does with an uncaught exception)
        traceback.print_exc()
        status = 1
    threading._shutdown()  # what interpreter exit does: join threads, run atexit, flush
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def serve() -> None:
    """The server: import PRELOAD, then for each request line fork a child and answer its pid and status."""
    import importlib

    for name in PRELOAD:
        importlib.import_module(name)
    sys.path.pop(0)  # this file's folder, which `python -m selfsup` would not have
    sys.path.insert(0, "")  # replaced by the cwd in each child
    for line in sys.stdin:
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            _child(json.loads(line))
        print(json.dumps({"pid": pid}), flush=True)
        print(json.dumps({"status": os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])}), flush=True)


if __name__ == "__main__":
    serve()
