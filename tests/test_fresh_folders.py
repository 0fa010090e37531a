"""A start that fails removes the run folders it made, and nothing else."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from selfsup.fresh_folders import FreshFolders


def made(fresh: FreshFolders, folder: Path) -> Path:
    missing = fresh.missing(folder)
    folder.mkdir(parents=True)
    fresh.own(missing)
    return folder


def test_a_failed_start_removes_its_folders_and_only_the_parents_left_empty(tmp_path):
    fresh = FreshFolders()
    made(fresh, tmp_path / "runs/a/version_0")
    made(fresh, tmp_path / "runs/b/version_0")
    (tmp_path / "runs/a/version_1").mkdir()  # another run started beside it meanwhile
    (tmp_path / "runs/a/version_0/config.yaml").write_text("x")
    fresh.remove_if_unused()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "runs", "runs/a", "runs/a/version_1"]


def test_a_start_that_took_a_step_keeps_what_it_wrote(tmp_path):
    fresh = FreshFolders()
    folder = made(fresh, tmp_path / "runs/a/version_0")
    fresh.trainer = SimpleNamespace(global_step=3)
    fresh.remove_if_unused()
    assert folder.is_dir()


def test_folders_that_existed_before_the_start_are_kept(tmp_path):
    fresh = FreshFolders()
    (tmp_path / "run").mkdir()
    made(fresh, tmp_path / "run/version_0")
    fresh.remove_if_unused()
    assert (tmp_path / "run").is_dir() and not (tmp_path / "run/version_0").exists()


def test_a_folder_holding_a_checkpoint_is_kept(tmp_path):
    fresh = FreshFolders()
    folder = made(fresh, tmp_path / "runs/a/version_0")
    (folder / "checkpoints").mkdir()
    (folder / "checkpoints/last.ckpt").write_bytes(b"x")  # e.g. saved by SIGTERM before the first step ended
    fresh.remove_if_unused()
    assert (folder / "checkpoints/last.ckpt").is_file()
