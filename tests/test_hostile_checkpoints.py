"""Every route to a checkpoint passes one gate: a pickled checkpoint whose unpickling would create a file, offered
over HTTP (plain and through fsspec chains), as Lightning's ``hpc``, a FIFO, ``/dev/stdin``, a device or a folder,
with and without ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``: each is refused in one line before anything is opened or
fetched, and nothing runs. Routes: the gate itself, Lightning's checkpoint IO, ``--model.init_from``, knn's and
export's readers, ``selfsup.load_backbone``, and the command line (``fit``/``validate`` ``--ckpt_path``, a config's
``ckpt_path``, ``knn``/``export --ckpt``)."""

from __future__ import annotations

import functools
import http.server
import os
import threading
from pathlib import Path

import pytest
import torch

from clirun import REPO, selfsup
from hostile import WritesAFile, cli
from selfsup.errors import ConfigError

SIMCLR = str(REPO / "experiments/simclr/mnist5k.yaml")
DATA = str(REPO / "experiments/eval/mnist5k.yaml")


class Counted(http.server.SimpleHTTPRequestHandler):
    """Serves a folder and counts every request it receives."""

    requests: list[str] = []

    def parse_request(self) -> bool:
        Counted.requests.append(self.raw_requestline.decode(errors="replace").strip())
        return super().parse_request()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def evil(tmp_path, monkeypatch) -> dict[str, object]:
    """A pickled checkpoint that creates ``marker`` when unpickled, served on 127.0.0.1 (the server stops by itself
    after 120 s at the latest), copied to ``hpc_ckpt_1.ckpt`` in the working folder (where Lightning's ``hpc`` looks),
    fed to a FIFO and to this process's standard input."""
    marker = tmp_path / "pwned"
    served = tmp_path / "served"
    served.mkdir()
    torch.save({"state_dict": {}, "hyper_parameters": {"backbone": "resnet18"}, "payload": WritesAFile(marker)},
               served / "evil.ckpt")
    payload = (served / "evil.ckpt").read_bytes()
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(payload)
    monkeypatch.chdir(tmp_path)
    Counted.requests.clear()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Counted, directory=str(served)))
    threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True).start()
    stop = threading.Timer(120, httpd.shutdown)
    stop.start()
    fifo = tmp_path / "evil.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: Path(fifo).write_bytes(payload), daemon=True)  # blocks until read
    writer.start()
    read, write = os.pipe()
    saved_stdin = os.dup(0)
    os.dup2(read, 0)
    os.write(write, payload[:60000])
    url = f"http://127.0.0.1:{httpd.server_address[1]}/evil.ckpt"
    yield {"marker": marker, "payload": payload, "sources": {
        "http": url, "simplecache": f"simplecache::{url}", "filecache": f"filecache::{url}",
        "blockcache": f"blockcache::{url}", "hpc": "hpc", "best": "best", "fifo": str(fifo),
        "stdin": "/dev/stdin", "dev-null": "/dev/null", "folder": str(served), "file-url": f"file://{served}/evil.ckpt",
    }}
    os.dup2(saved_stdin, 0)
    for fd in (read, write, saved_stdin):
        os.close(fd)
    os.close(os.open(fifo, os.O_RDONLY | os.O_NONBLOCK))  # lets the writer go
    stop.cancel()
    httpd.shutdown()


SOURCES = ["http", "simplecache", "filecache", "blockcache", "hpc", "best", "fifo", "stdin", "dev-null", "folder",
           "file-url"]
ENVIRONMENTS = {"default": None, "force-no-weights-only": "1"}


def gate(path):
    from selfsup.gate import existing_checkpoint

    return existing_checkpoint(path)


def lightning_io(path):
    from selfsup.training.checkpointing import AtomicCheckpointIO

    return AtomicCheckpointIO().load_checkpoint(path, weights_only=False)


def init_from(path):
    from selfsup.eval.checkpoint import backbone_from

    return backbone_from(None, None, 1, path, "LinearProbe")


def knn_reader(path):
    from selfsup.eval.checkpoint import load_backbone

    return load_backbone(path)


def export(path):
    from selfsup.eval.export import export_backbone

    return export_backbone(path, Path("backbone.pt"))


def public_loader(path):
    import selfsup

    return selfsup.load_backbone(path)


ROUTES = [gate, lightning_io, init_from, knn_reader, export, public_loader]


def refused_quietly(evil: dict, message: str) -> None:
    """One line, nothing ran, nothing was fetched."""
    assert "\n" not in message and "weights_only=False" not in message, message
    assert not evil["marker"].exists(), "the checkpoint's code ran"
    assert Counted.requests == [], Counted.requests


def test_the_payload_runs_code_when_unpickled_unsafely(evil):
    """The control: what the other tests show does not happen, happens to an unguarded ``torch.load``."""
    torch.load(Path("hpc_ckpt_1.ckpt"), weights_only=False)
    assert evil["marker"].exists()


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("source", SOURCES)
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.__name__)
def test_every_route_refuses_what_is_not_a_local_regular_file(route, source, env, evil, monkeypatch):
    if ENVIRONMENTS[env]:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", ENVIRONMENTS[env])
    with pytest.raises(ConfigError) as refused:
        route(evil["sources"][source])
    refused_quietly(evil, str(refused.value))


@pytest.mark.parametrize("env", ENVIRONMENTS)
@pytest.mark.parametrize("route", ROUTES, ids=lambda r: r.__name__)
def test_a_local_pickled_file_is_read_weights_only_whatever_the_environment(route, env, evil, monkeypatch):
    if ENVIRONMENTS[env]:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", ENVIRONMENTS[env])
    link = Path("link.ckpt")
    link.symlink_to(Path("hpc_ckpt_1.ckpt").resolve())
    if route is gate:
        assert gate(link) == Path("hpc_ckpt_1.ckpt").resolve()  # symlinks resolved; nothing read yet
        return
    with pytest.raises(ConfigError, match="refused to load a checkpoint") as refused:
        route(link)
    refused_quietly(evil, str(refused.value))


FIT = ["fit", "-c", SIMCLR, "--trainer.max_steps", "1", "--data.init_args.num_workers", "0"]
COMMANDS = {
    "fit": lambda src: [*FIT, "--ckpt_path", src],
    "validate": lambda src: ["validate", *FIT[1:], "--ckpt_path", src],
    "init_from": lambda src: ["fit", "--model", "LinearProbe", "--model.init_from", src, "--data.source",
                              "builtin:mnist5k", "--trainer.max_steps", "1"],
    "knn": lambda src: ["knn", "--ckpt", src, "-c", DATA],
    "export": lambda src: ["export", "--ckpt", src, "--out", "backbone.pt"],
}


# fit and validate reach Lightning's loader, which reads the environment: both settings; the other commands read
# through selfsup's readers only (their rows above cover both settings): the unsafe setting.
CLI_CASES = [(command, source, env) for command in COMMANDS
             for source in ("http", "simplecache", "filecache", "hpc", "fifo", "stdin")
             for env in (ENVIRONMENTS if command in ("fit", "validate") else ["force-no-weights-only"])]


@pytest.mark.parametrize("command, source, env", CLI_CASES, ids=["-".join(case) for case in CLI_CASES])
def test_the_command_line_refuses_in_one_line(command, source, env, evil, monkeypatch, capsys):
    if ENVIRONMENTS[env]:
        monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", ENVIRONMENTS[env])
    try:
        code, printed = cli(*COMMANDS[command](evil["sources"][source]), capsys=capsys)
    except Exception as err:  # a traceback, after whatever it read
        code, printed = 1, f"{type(err).__name__}: {err}"
    assert not evil["marker"].exists(), "the checkpoint's code ran"
    assert Counted.requests == [], Counted.requests
    errors = [line for line in printed.splitlines() if line.startswith("selfsup: error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in printed, printed[-2000:]
    refused_quietly(evil, errors[0])


def test_a_config_ckpt_path_passes_the_same_gate(evil, capsys):
    Path("remote.yaml").write_text(f"ckpt_path: {evil['sources']['simplecache']}\n")
    code, printed = cli(*FIT, "-c", "remote.yaml", capsys=capsys)
    assert code == 2 and printed.count("selfsup: error: refused to load checkpoint simplecache::") == 1, printed
    refused_quietly(evil, printed.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize("args", [["fit", "--ckpt_path", "hpc"], ["validate", "--ckpt_path", "hpc"],
                                  ["fit", "--ckpt_path", "simplecache::{url}"]], ids=["fit-hpc", "validate-hpc",
                                                                                   "fit-simplecache"])
def test_a_real_process_with_the_unsafe_variable_runs_nothing(args, evil, tmp_path, monkeypatch):
    """The exploits of the report, as separate processes with ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1``."""
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    url = evil["sources"]["http"]
    given = [a.replace("{url}", url) for a in args]
    proc = selfsup(given[0], *FIT[1:], *given[1:], cwd=tmp_path, check=False)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("selfsup: error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    refused_quietly(evil, errors[0])
