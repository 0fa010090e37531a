"""``trainer.precision: auto``: bf16 mixed precision where the hardware runs it fast, float32 elsewhere, decided
once at start-up from the accelerator and, on a CPU, its feature flags."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import torch

# x86 flags of native bfloat16 arithmetic (Intel Cooper Lake / Sapphire Rapids, AMD Zen 4): without them oneDNN
# emulates bf16, slower than float32.
FAST_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
AUTO = "auto"


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set[str]:
    """The CPU's feature flags from ``cpuinfo`` (empty where it is missing: not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return set()
    line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    return set(line.partition(":")[2].split())


def fast_bf16_flags(flags: Iterable[str] | None = None) -> list[str]:
    """Which of ``FAST_BF16_FLAGS`` the CPU has (``flags``: this machine's by default)."""
    flags = cpu_flags() if flags is None else set(flags)
    return [flag for flag in FAST_BF16_FLAGS if flag in flags]


def device_type(accelerator: Any) -> str:
    """``cuda``, ``cpu`` or another device type for a ``trainer.accelerator`` value (``auto``: CUDA when present)."""
    name = accelerator if accelerator is None or isinstance(accelerator, str) else type(accelerator).__name__.lower()
    if name in (None, AUTO):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return {"gpu": "cuda", "cudaaccelerator": "cuda", "cpuaccelerator": "cpu"}.get(name, name)


def auto_precision(device: str, flags: Iterable[str] | None = None) -> str:
    """``bf16-mixed`` on CUDA and on a CPU with AVX-512 BF16 or AMX; ``32-true`` on any other device."""
    if device == "cuda" or (device == "cpu" and fast_bf16_flags(flags)):
        return "bf16-mixed"
    return "32-true"


def resolve_precision(precision: Any, accelerator: Any, flags: Iterable[str] | None = None) -> Any:
    """``precision`` itself, or for ``auto`` the one ``auto_precision`` picks for ``accelerator``."""
    return auto_precision(device_type(accelerator), flags) if precision == AUTO else precision


def precision_note(precision: Any, device: str, flags: Iterable[str] | None = None) -> str:
    """The run's precision for its summary line, with on a CPU the flags that decide whether bf16 pays off."""
    if device != "cpu":
        return f"precision {precision}"
    found = fast_bf16_flags(flags)
    return f"precision {precision} (CPU bf16: {', '.join(found) if found else 'emulated, no AVX-512 BF16 or AMX'})"


def accept_auto(parser: Any) -> None:
    """Let ``--trainer.precision`` (and the config's ``trainer.precision``) take ``auto``."""
    action = parser._option_string_actions.get("--trainer.precision")
    if action is not None and hasattr(action, "_typehint"):
        action._typehint = action._typehint | Literal["auto"]
