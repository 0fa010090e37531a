"""Writes that never clobber: what `selfsup export`, the run lock and the run folders write never replaces the
weights just written, a device or FIFO, the target of a link, or a file the command reads; two runs never share
one real folder. Each row is a loss the second hostile pass found."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import torch

from clirun import REPO, TINY, selfsup
from hostile import cli
from selfsup.errors import ConfigError
from selfsup.eval.checkpoint import BackboneSpec


@pytest.fixture
def ckpt(tmp_path, monkeypatch) -> Path:
    """A minimal selfsup checkpoint of a width-4 ResNet-18 (1 channel), in the working folder."""
    monkeypatch.chdir(tmp_path)
    spec = BackboneSpec("resnet18", {"width": 4, "cifar_stem": True}, 1)
    state = {f"backbone.{k}": v for k, v in spec.build().state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"backbone": spec.name, "backbone_args": spec.args,
                                                          "in_channels": 1}}, tmp_path / "last.ckpt")
    return tmp_path / "last.ckpt"


def export(ckpt: Path, out: Path | str, *flags: str, capsys) -> tuple[int, str]:
    return cli("export", "--ckpt", str(ckpt), "--out", str(out), *flags, capsys=capsys)


def test_export_out_json_is_refused_instead_of_losing_the_weights(ckpt, capsys):
    code, printed = export(ckpt, "weights.json", capsys=capsys)
    assert code == 2 and "would be overwritten by its own spec" in printed and not Path("weights.json").exists()


@pytest.mark.parametrize("node", ["fifo", "device"])
def test_export_force_never_replaces_a_special_file(node, ckpt, capsys):
    out = Path(f"out.{node}")
    if node == "fifo":
        os.mkfifo(out)
    elif os.geteuid() == 0:
        os.mknod(out, stat.S_IFCHR | 0o666, os.makedev(1, 3))  # a private /dev/null
    else:
        pytest.skip("making a device node needs root")
    code, printed = export(ckpt, out, "--force", capsys=capsys)
    assert code == 2 and "not a regular file" in printed, printed
    assert not stat.S_ISREG(out.lstat().st_mode)


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_export_force_never_writes_through_a_link_at_the_spec(link, ckpt, capsys):
    other = Path("other.ckpt")
    other.write_bytes(ckpt.read_bytes())
    (Path("backbone.json").symlink_to if link == "symlink" else Path("backbone.json").hardlink_to)(other.resolve())
    code, printed = export(ckpt, "backbone.pt", "--force", capsys=capsys)
    assert other.read_bytes() == ckpt.read_bytes(), printed  # the other checkpoint is whole
    if link == "symlink":
        assert code == 2 and "is a symbolic link" in printed, printed
    else:  # replaced by a new file, the other name keeps its own
        assert code == 0 and "backbone" in Path("backbone.json").read_text()


def test_export_refuses_a_spec_that_is_the_checkpoint_it_reads(ckpt, capsys):
    Path("backbone.json").hardlink_to(ckpt)
    code, printed = export(ckpt, "backbone.pt", "--force", capsys=capsys)
    assert code == 2 and "the file this command reads" in printed, printed
    assert torch.load(ckpt, weights_only=True)["state_dict"]


def test_a_run_lock_that_is_a_symlink_never_truncates_its_target(tmp_path):
    from selfsup.training.runlock import LOCK_NAME, lock_run_folder

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).symlink_to(victim)
    try:
        lock_run_folder(run)
        refusal = ""
    except ConfigError as err:
        refusal = str(err)
    assert victim.read_text() == "keep me\n"
    assert "is a symbolic link" in refusal


@pytest.mark.parametrize("kind", ["folder", "fifo"])
def test_a_run_lock_that_is_a_folder_or_fifo_is_one_line(kind, tmp_path):
    from selfsup.training.runlock import LOCK_NAME, lock_run_folder

    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK_NAME).mkdir() if kind == "folder" else os.mkfifo(run / LOCK_NAME)
    with pytest.raises(ConfigError, match="the run lock .* remove it"):
        lock_run_folder(run)


@pytest.mark.slow
def test_two_runs_that_spell_one_folder_differently_do_not_share_it(mnist5k, tmp_path, monkeypatch, capsys):
    """``--run_dir runs/a`` (this process, which keeps its locks) and ``save_dir runs/a --ckpt_path last`` (another)
    write the same version folder: the second is refused."""
    monkeypatch.chdir(tmp_path)
    fit = ["fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), *TINY, "--trainer.max_steps", "1",
           "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false"]
    code, printed = cli(*fit, "--run_dir", "runs/a", capsys=capsys)
    assert code in (0, None), printed
    proc = selfsup(*fit, "--trainer.logger.init_args.save_dir", "runs/./a", "--ckpt_path", "last", cwd=tmp_path,
                   check=False, timeout=120)
    assert proc.returncode == 2 and "is in use by pid" in proc.stderr, proc.stderr[-2000:]


def test_validate_in_a_read_only_run_folder_is_one_line(ckpt, tmp_path, capsys):
    """An evaluation writes into RUN/eval/: a run on a read-only disk is refused before anything runs."""
    import subprocess

    mnt = tmp_path / "ro"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        (mnt / "run/checkpoints").mkdir(parents=True)
        (mnt / "run/checkpoints/last.ckpt").write_bytes(ckpt.read_bytes())
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        code, printed = cli("validate", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), *TINY, "--ckpt_path",
                            str(mnt / "run/checkpoints/last.ckpt"), capsys=capsys)
        assert code == 2 and "Traceback" not in printed, printed[-2000:]
        assert printed.count("selfsup: error: cannot write run outputs to") == 1 and "copy the run" in printed
    finally:
        subprocess.run(["umount", "--lazy", str(mnt)], check=False)
