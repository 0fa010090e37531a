"""``trainer.precision: auto``: bf16 mixed precision only where the hardware runs bf16 natively."""

import pytest

from clirun import REPO
from selfsup.training import precision
from selfsup.training.precision import auto_precision, cpu_flags, precision_note, resolve_precision

ZEN4 = {"fpu", "avx2", "avx512f", "avx512_bf16"}
SAPPHIRE_RAPIDS = {"fpu", "avx2", "avx512f", "amx_tile", "amx_bf16"}
SKYLAKE = {"fpu", "avx2", "avx512f", "avx512bw"}  # AVX-512 without its bf16 extension: bf16 is emulated


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Fake\nflags\t\t: fpu avx2 avx512_bf16\n\nprocessor\t: 1\n")
    assert cpu_flags(info) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == set()  # not Linux: no flags, so float32


@pytest.mark.parametrize(("device", "flags", "expected"), [
    ("cpu", ZEN4, "bf16-mixed"), ("cpu", SAPPHIRE_RAPIDS, "bf16-mixed"), ("cpu", SKYLAKE, "32-true"),
    ("cpu", set(), "32-true"), ("cuda", set(), "bf16-mixed"), ("mps", ZEN4, "32-true")])
def test_auto_picks_bf16_only_where_it_is_native(device, flags, expected):
    assert auto_precision(device, flags) == expected


def test_only_auto_is_resolved_and_the_accelerator_names_the_device():
    assert resolve_precision("32-true", "cpu", ZEN4) == "32-true"
    assert resolve_precision("bf16-mixed", "cpu", SKYLAKE) == "bf16-mixed"  # a choice the config made stays
    assert resolve_precision("auto", "gpu", set()) == "bf16-mixed"
    assert resolve_precision("auto", "cpu", SKYLAKE) == "32-true"


def test_the_summary_names_the_flags_that_decided():
    assert precision_note("bf16-mixed", "cpu", ZEN4) == "precision bf16-mixed (CPU bf16: avx512_bf16)"
    assert "emulated" in precision_note("32-true", "cpu", SKYLAKE)
    assert precision_note("bf16-mixed", "cuda") == "precision bf16-mixed"


@pytest.mark.parametrize(("flags", "expected"), [(SKYLAKE, "32-true"), (ZEN4, "bf16-mixed")])
def test_a_recipe_with_auto_trains_in_what_the_cpu_runs_fast(monkeypatch, mnist5k, flags, expected):
    from selfsup.cli import SelfsupCLI
    from selfsup.data import SSLDataModule
    from selfsup.methods import SSLMethod

    monkeypatch.setattr(precision, "cpu_flags", lambda: flags)
    cli = SelfsupCLI(SSLMethod, SSLDataModule, subclass_mode_model=True, subclass_mode_data=True, run=False,
                     args=["-c", str(REPO / "experiments/simclr/mnist5k.yaml"), "--trainer.accelerator", "cpu",
                           "--trainer.logger", "false", "--trainer.callbacks", "[]"],
                     save_config_callback=None)
    assert cli.trainer.precision == expected
