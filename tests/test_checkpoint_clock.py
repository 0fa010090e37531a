"""``last.ckpt`` on its own clock: at every training epoch's end and every ``--checkpoint.every_minutes`` whatever
the validation cadence, and on SIGTERM during validation; a run killed after such a save resumes to its planned
final step."""

from __future__ import annotations

import signal

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from clirun import REPO, TINY, selfsup
from selfsup.errors import ConfigError
from selfsup.training.checkpointing import RunCheckpoint

FIT = ["fit", "-c", str(REPO / "experiments/simclr/mnist5k.yaml"), *TINY, "--trainer.limit_train_batches", "5",
       "--trainer.max_epochs", "2", "--trainer.enable_progress_bar", "false", "--trainer.callbacks", "[]"]


def saved(path) -> tuple[int, int]:
    """(epoch, global_step) of a checkpoint."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return ckpt["epoch"], ckpt["global_step"]


class SeenAtEpochStart(pl.Callback):
    """Records, at each training epoch's start, the (epoch, step) of ``last.ckpt`` then on disk (None: none)."""

    def __init__(self, last) -> None:
        self.last, self.seen = last, []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self.seen.append(saved(self.last) if self.last.exists() else None)


def fit(tmp_path, every_minutes: float, **trainer) -> tuple[RunCheckpoint, list, list[int]]:
    """A BoringModel run of 2 epochs x 4 steps, validation every 100 epochs; the callback, what was on disk at each
    epoch's start and the step of each save of ``last.ckpt``."""
    checkpoint = RunCheckpoint(dirpath=tmp_path, save_last=True, every_minutes=every_minutes)
    steps: list[int] = []
    save = checkpoint._save_last_checkpoint
    checkpoint._save_last_checkpoint = lambda t, c: (steps.append(t.global_step), save(t, c))
    seen = SeenAtEpochStart(tmp_path / "last.ckpt")
    pl.Trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=1, check_val_every_n_epoch=100, logger=False,
               enable_progress_bar=False, enable_model_summary=False, callbacks=[checkpoint, seen],
               default_root_dir=tmp_path, **trainer).fit(BoringModel())
    return checkpoint, seen.seen, steps


def test_last_ckpt_is_saved_at_each_epoch_end_without_validation(tmp_path):
    _, seen, steps = fit(tmp_path, every_minutes=30)
    assert seen == [None, (0, 4)]  # epoch 0's end, before epoch 1 starts
    assert steps == [4, 8] and saved(tmp_path / "last.ckpt") == (1, 8)


def test_the_minute_clock_saves_mid_epoch_and_zero_turns_it_off(tmp_path):
    assert fit(tmp_path / "clock", every_minutes=1e-9)[2] == [1, 2, 3, 4, 5, 6, 7, 8]  # due at every step
    assert fit(tmp_path / "off", every_minutes=0)[2] == [4, 8]
    with pytest.raises(ConfigError, match="every_minutes -1"):
        RunCheckpoint(every_minutes=-1)


@pytest.mark.slow
def test_a_run_killed_after_a_clock_save_resumes_to_the_planned_final_step(tmp_path, mnist5k):
    killed = selfsup(*FIT, "--checkpoint.every_minutes", "1e-9", "--trainer.check_val_every_n_epoch", "100",
                     "--trainer.callbacks", f"[{{class_path: signals.SignalAt, init_args: {{step: 3, signum: "
                     f"{int(signal.SIGKILL)}}}}}]", cwd=tmp_path, path=(REPO / "tests/plugins",), trust="signals",
                     check=False)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    last = tmp_path / "runs/simclr-mnist5k/version_0/checkpoints/last.ckpt"
    assert saved(last) == (0, 3)  # mid-epoch: step 3 of 5
    resumed = selfsup(*FIT, "--ckpt_path", "last", cwd=tmp_path)
    assert f"resuming from {last.relative_to(tmp_path)}" in resumed.stderr
    assert saved(last) == (1, 10)  # 2 epochs x 5 steps, not one more or less


@pytest.mark.slow
def test_sigterm_during_validation_saves_and_the_run_resumes(tmp_path, mnist5k):
    validate = ("--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "2")
    stopped = selfsup(*FIT, *validate, "--trainer.callbacks",
                      f"[{{class_path: signals.SignalAt, init_args: {{step: 5, signum: {int(signal.SIGTERM)}, "
                      "during: validation}}]", cwd=tmp_path, path=(REPO / "tests/plugins",), trust="signals",
                      check=False)
    last = tmp_path / "runs/simclr-mnist5k/version_0/checkpoints/last.ckpt"
    assert stopped.returncode == 143, stopped.stderr[-2000:]
    assert "stopped by SIGTERM at step 5" in stopped.stderr and "Traceback" not in stopped.stderr
    assert saved(last)[1] == 5
    selfsup(*FIT, *validate, "--ckpt_path", "last", cwd=tmp_path)
    assert saved(last) == (1, 10)
