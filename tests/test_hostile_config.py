"""Hostile configs, checkpoints and command lines through the real `selfsup` entry point: each is refused with one
line and exit 2, and nothing in a file runs code. The next bad input is one row of HOSTILE."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
import torchvision

from clirun import REPO, TINY, selfsup
from hostile import WritesAFile

SIMCLR = str(REPO / "experiments/simclr/mnist5k.yaml")
BASE = ["fit", "-c", SIMCLR, *TINY, "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]",
        "--trainer.enable_progress_bar", "false"]
FIT = [*BASE, "--trainer.max_steps", "1"]
DATA = str(REPO / "experiments/eval/mnist5k.yaml")


def with_hparams(ckpt: Path, out: Path, **changes) -> Path:
    """A copy of checkpoint ``ckpt`` whose hyper-parameters have ``changes``."""
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["hyper_parameters"] = {**state["hyper_parameters"], **changes}
    torch.save(state, out)
    return out


@pytest.fixture(scope="module")
def files(trained, tmp_path_factory) -> dict[str, Path]:
    """Hostile files, by name (the placeholders of HOSTILE)."""
    _, ckpt = trained
    folder = tmp_path_factory.mktemp("hostile")
    good = ckpt.read_bytes()
    made = {"ckpt": ckpt, "marker": folder / "pwned"}
    for name, content in (("zero.ckpt", b""), ("truncated.ckpt", good[: len(good) // 2]),
                          ("text.ckpt", b"this is not a checkpoint\n"), ("existing.pt", b"keep me")):
        (folder / name).write_bytes(content)
        made[name.split(".")[0]] = folder / name
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), folder / "torchvision.pt")
    torch.save({"state_dict": {}, "payload": WritesAFile(made["marker"])}, folder / "evil.ckpt")
    (folder / "shards").mkdir()
    (folder / "shards/manifest.json").write_text("{}\n")
    (folder / "broken.yaml").write_text("model:\n  class_path: [selfsup.methods.SimCLR\n")
    (folder / "remote.yaml").write_text("ckpt_path: https://127.0.0.1:9/last.ckpt\n")
    (folder / "lambda.yaml").write_text("trainer:\n  callbacks:\n    - class_path: lightning.pytorch.callbacks."
                                        "LambdaCallback\n      init_args:\n        setup: os.system\n")
    made.update({name.split(".")[0]: folder / name for name in
                 ("torchvision.pt", "evil.ckpt", "broken.yaml", "remote.yaml", "lambda.yaml")})
    made["manifest"] = folder / "shards/manifest.pt"  # export would write its spec to shards/manifest.json
    (folder / "run/simclr-mnist5k/version_0/checkpoints").mkdir(parents=True)
    (folder / "run/simclr-mnist5k/version_0/checkpoints/last.ckpt").write_bytes(good)
    made["run"] = folder / "run"
    made["rotnet"] = with_hparams(ckpt, folder / "rotnet.ckpt", _class_path="selfsup.methods.RotNet")
    made["foreign"] = with_hparams(ckpt, folder / "foreign.ckpt", _class_path="subprocess.Popen")
    return made


HOSTILE = [
    # checkpoints that are not (whole) selfsup checkpoints
    ([*FIT, "--ckpt_path", "{zero}"], "is empty (0 bytes: a save that was interrupted)"),
    ([*FIT, "--ckpt_path", "{truncated}"], "is truncated or not a torch checkpoint"),
    ([*FIT, "--ckpt_path", "{text}"], "is truncated or not a torch checkpoint"),
    ([*FIT, "--ckpt_path", "{torchvision}"], "is not a selfsup checkpoint"),
    ([*FIT, "--ckpt_path", "{evil}"], "refused to load a checkpoint"),
    (["validate", *FIT[1:], "--ckpt_path", "{evil}"], "refused to load a checkpoint"),
    (["export", "--ckpt", "{torchvision}", "--out", "backbone.pt"], "is not a selfsup checkpoint"),
    (["export", "--ckpt", "{zero}", "--out", "backbone.pt"], "is empty (0 bytes"),
    # checkpoints of something else than the config's model
    ([*FIT, "--ckpt_path", "{rotnet}"], "was written by RotNet, but the config trains SimCLR"),
    ([*FIT, "--ckpt_path", "{foreign}"], "names the class subprocess.Popen, which is not selfsup's"),
    ([*FIT, "--ckpt_path", "{ckpt}", "--model.init_args.backbone_args", "{width: 8, cifar_stem: true}"],
     "holds a resnet18(cifar_stem=True, width=4, in_channels=1) backbone, but the config asks for "
     "resnet18(cifar_stem=True, width=8, in_channels=1)"),
    ([*FIT, "--run_dir", "{run}", "--model.init_args.backbone_args", "{width: 8, cifar_stem: true}"],
     "holds a resnet18(cifar_stem=True, width=4, in_channels=1) backbone, but the config asks for"),
    # remote checkpoints are never fetched
    ([*FIT, "--ckpt_path", "http://127.0.0.1:9/last.ckpt"], "only local files are loaded"),
    ([*FIT, "-c", "{remote}"], "refused to load checkpoint https://127.0.0.1:9/last.ckpt"),
    # configs that name code
    ([*FIT, "-c", "{lambda}"], "names lightning.pytorch.callbacks.LambdaCallback, which selfsup does not import"),
    ([*FIT, "--trainer.callbacks", "[{class_path: os.system}]"], "names os.system, which selfsup does not import"),
    ([*FIT, "--model", "subprocess.Popen"], "names subprocess.Popen, which selfsup does not import"),
    # values out of range, broken YAML
    (["fit", "-c", "{broken}"], "broken.yaml is not valid YAML at line 3"),
    ([*FIT, "--model.init_args.lr", "-0.1"], "model.lr must be a positive number, got -0.1"),
    ([*FIT, "--trainer.max_epochs", "-2"], "`max_epochs` must be a non-negative integer or -1"),
    ([*FIT, "--data.init_args.num_workers", "-1"], "data.num_workers must be zero or more"),
    ([*FIT, "--threads", "0"], "threads must be at least 1, got 0"),
    ([*FIT, "--model.init_args.backbone_args", "{width: 0}"], "width must be at least 1, got 0"),
    *[(["knn", "--ckpt", "{ckpt}", "-c", DATA, "--temperature", t], f"--temperature must be a positive number, got {t}")
      for t in ("0.0", "nan", "-0.07")],
    # export never writes over its input, a manifest, or (without --force) anything
    (["export", "--ckpt", "{ckpt}", "--out", "{ckpt}"], "last.ckpt, the file this command reads"),
    (["export", "--ckpt", "{ckpt}", "--out", "{manifest}", "--force"], "manifest.json, a shard set's manifest"),
    (["export", "--ckpt", "{ckpt}", "--out", "{existing}"], "existing.pt already exists; choose another --out, or add"),
]


def fill(arg: str, files: dict[str, Path]) -> str:
    """``arg`` with each ``{name}`` of ``files`` replaced by its path."""
    for name, path in files.items():
        arg = arg.replace(f"{{{name}}}", str(path))
    return arg


@pytest.mark.parametrize("args, message", HOSTILE, ids=[f"{i}-{m[:40]}" for i, (_, m) in enumerate(HOSTILE)])
def test_hostile_input_is_one_line_and_exit_2(args, message, files, tmp_path):
    before = {name: path.read_bytes() for name, path in files.items() if path.is_file()}
    proc = selfsup(*(fill(a, files) for a in args), cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("selfsup: error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "weights_only=False" not in proc.stderr, proc.stderr[-3000:]
    assert not files["marker"].exists()
    assert before == {name: path.read_bytes() for name, path in files.items() if path.is_file()}  # nothing lost


class Served(http.server.SimpleHTTPRequestHandler):
    """Serves a folder on 127.0.0.1 and counts the requests."""

    requests: list[str] = []

    def log_message(self, *args) -> None:
        Served.requests.append(self.path)


@pytest.fixture
def server(files):
    """An HTTP server on 127.0.0.1 only, serving the hostile files."""
    handler = functools.partial(Served, directory=str(files["evil"].parent))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Served.requests.clear()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


@pytest.mark.parametrize("where", ["fit", "validate", "yaml"])
def test_s1_a_served_checkpoint_is_refused_and_never_fetched(where, server, files, tmp_path):
    url = f"{server}/evil.ckpt"
    config = tmp_path / "remote.yaml"
    config.write_text(f"ckpt_path: {url}\n")
    tail = ["-c", str(config)] if where == "yaml" else ["--ckpt_path", url]
    proc = selfsup("validate" if where == "validate" else "fit", *FIT[1:], *tail, cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.count("selfsup: error: refused to load checkpoint http://127.0.0.1:") == 1
    assert not files["marker"].exists() and Served.requests == []


def test_s2_a_checkpoint_class_path_imports_nothing(trained, tmp_path):
    """Lightning would merge hyper_parameters._class_path over the config and import it."""
    marker = tmp_path / "imported"
    (tmp_path / "sneaky.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).touch()\n"
                                        "from selfsup.methods import SimCLR as Model\n")
    ckpt = with_hparams(trained[1], tmp_path / "sneaky.ckpt", _class_path="sneaky.Model", lr=99.0)
    proc = selfsup(*FIT, "--ckpt_path", str(ckpt), cwd=tmp_path, check=False, path=(tmp_path,))
    assert proc.returncode == 2 and "names the class sneaky.Model, which is not selfsup's" in proc.stderr
    assert not marker.exists()


def test_s3_trusted_code_is_named_in_selfsup_trust(tmp_path):
    callback = ["--trainer.callbacks", "[{class_path: signals.SignalAt, init_args: {step: 3}}]", "--print_config"]
    plugins = (REPO / "tests/plugins",)
    refused = selfsup(*FIT, *callback, cwd=tmp_path, check=False, path=plugins)
    assert refused.returncode == 2 and "names signals.SignalAt, which selfsup does not import" in refused.stderr
    assert "SELFSUP_TRUST" in refused.stderr
    assert "class_path: signals.SignalAt" in selfsup(*FIT, *callback, cwd=tmp_path, path=plugins,
                                                      trust="signals").stdout


def test_d6_a_second_run_in_a_locked_folder_is_refused_then_runs_after_a_crash(mnist5k, tmp_path):
    run_dir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from selfsup.training.runlock import lock_run_folder; "
         f"lock_run_folder(__import__('pathlib').Path({str(run_dir)!r})); print('locked', flush=True); "
         "time.sleep(600)"], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(REPO / "ssl")})
    try:
        assert holder.stdout.readline().strip() == "locked"
        proc = selfsup(*FIT, "--run_dir", str(run_dir), cwd=tmp_path, check=False)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert f"run folder {run_dir} is in use by pid {holder.pid} on " in proc.stderr
        assert not (run_dir / "simclr-mnist5k").exists()  # nothing of the first run touched
    finally:
        holder.kill()  # SIGKILL: no clean-up, the kernel drops the lock
        holder.wait()
    from selfsup.training.runlock import lock_run_folder

    lock_run_folder(run_dir)  # a crashed holder's lock does not block


def test_d4_export_force_replaces_an_existing_file(trained, tmp_path):
    out = tmp_path / "backbone.pt"
    out.write_bytes(b"old")
    selfsup("export", "--ckpt", str(trained[1]), "--out", str(out), "--force", cwd=tmp_path)
    assert len(torch.load(out, weights_only=True)) > 10 and not list(tmp_path.glob(".*.tmp"))


def step_of(ckpt: Path) -> int:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"]


@pytest.fixture
def tmpfs(tmp_path):
    """A tmpfs at ``tmp_path/mnt``: a second filesystem beside $TMPDIR, as a run folder on NFS or Lustre is to a
    node-local /tmp (skipped where the test may not mount)."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=32m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    assert mnt.stat().st_dev != Path(tempfile.gettempdir()).stat().st_dev
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_d1_checkpoints_are_written_beside_their_target_then_renamed(tmpfs, monkeypatch):
    from selfsup.training.checkpointing import AtomicCheckpointIO

    renames, rename = [], os.replace
    monkeypatch.setattr(os, "replace", lambda a, b: (renames.append((Path(a), Path(b))), rename(a, b)))
    target = tmpfs / "checkpoints/last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"w": torch.ones(3)}, target)
    assert renames == [(target.with_name(f".last.ckpt.{os.getpid()}.tmp"), target)]
    assert torch.load(target, weights_only=True)["w"].sum() == 3 and os.listdir(target.parent) == ["last.ckpt"]


@pytest.mark.slow
def test_d2_d3_on_another_filesystem_resume_skips_a_damaged_last_ckpt(tmpfs, mnist5k, tmp_path):
    run = tmpfs / "run"
    fit = [*BASE, "--checkpoint.every_n_train_steps", "2", "--run_dir", str(run)]
    selfsup(*fit, "--trainer.max_steps", "5", cwd=tmp_path)
    folder = run / "simclr-mnist5k/version_0/checkpoints"
    assert step_of(folder / "last.ckpt") == 5 and step_of(folder / "epoch=0-step=4.ckpt") == 4  # D3: the final step
    (folder / "last.ckpt").write_bytes(b"")  # what a truncating cross-filesystem move left after a SIGKILL
    proc = selfsup(*fit, "--trainer.max_steps", "7", cwd=tmp_path)
    assert f"skipping a damaged checkpoint: checkpoint {folder / 'last.ckpt'} is empty" in proc.stderr
    assert f"resuming from {folder / 'epoch=0-step=4.ckpt'}" in proc.stderr
    assert step_of(folder / "last.ckpt") == 7 and not list(run.rglob(".*.tmp"))


@pytest.mark.slow
def test_disk_full_during_a_save_keeps_last_ckpt(tmpfs, mnist5k, tmp_path):
    run = tmpfs / "run"
    selfsup(*BASE, "--trainer.max_steps", "2", "--run_dir", str(run), cwd=tmp_path)
    last = run / "simclr-mnist5k/version_0/checkpoints/last.ckpt"
    room = shutil.disk_usage(tmpfs).used + last.stat().st_size // 3  # less than one more checkpoint
    subprocess.run(["mount", "-o", f"remount,size={room}", str(tmpfs)], check=True)
    proc = selfsup(*BASE, "--trainer.max_steps", "4", "--run_dir", str(run), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "selfsup: error: disk full while saving" in proc.stderr
    assert step_of(last) == 2 and not list(run.rglob(".*.tmp"))


def test_a_read_only_out_is_one_line(trained, tmpfs, tmp_path):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    proc = selfsup("export", "--ckpt", str(trained[1]), "--out", str(tmpfs / "backbone.pt"), cwd=tmp_path,
                   check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert f"cannot write {tmpfs / 'backbone.pt'} (Read-only file system)" in proc.stderr


@pytest.mark.slow
def test_d5_command_line_overrides_win_over_the_checkpoint(trained, tmp_path):
    _, ckpt = trained
    selfsup(*BASE, "--trainer.max_steps", str(step_of(ckpt) + 1), "--ckpt_path", str(ckpt),
            "--model.init_args.lr", "0.05", cwd=tmp_path)
    written = next(tmp_path.glob("runs/*/version_0/checkpoints/last.ckpt"))
    assert torch.load(written, weights_only=True)["hyper_parameters"]["lr"] == 0.05
