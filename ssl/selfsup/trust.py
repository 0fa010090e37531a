"""What a config or a checkpoint may make selfsup import or load.

A config's ``class_path`` (and any callable or type given as a value) may only name selfsup, Lightning's callbacks,
loggers, strategies, plugins and profilers, or torch's optimizers and lr schedulers; classes whose job is to call a
function given to them (``LambdaCallback``, ``LambdaLR``, ...) are refused. Trusted code of your own is added with
the environment variable ``SELFSUP_TRUST`` (comma-separated module or class paths). It is an environment variable,
not an option, so that no config file, checkpoint or sweep file can extend the trust it is checked against.

Checkpoints are only read from local regular files, weights-only (``selfsup.gate.existing_checkpoint``).
"""

from __future__ import annotations

import os
import re

from selfsup.errors import ConfigError

TRUST_VARIABLE = "SELFSUP_TRUST"

ALLOWED = (
    "selfsup",
    "lightning.pytorch.callbacks", "lightning.pytorch.loggers", "lightning.pytorch.strategies",
    "lightning.pytorch.plugins", "lightning.pytorch.profilers", "lightning.fabric.plugins",
    "torch.optim",
)

# Allowed modules' classes that exist to call a function given in their arguments (and their defining modules).
DENIED = (
    "lightning.pytorch.callbacks.LambdaCallback", "lightning.pytorch.callbacks.lambda_function",
    "lightning.pytorch.callbacks.BackboneFinetuning", "lightning.pytorch.callbacks.finetuning",
    "lightning.pytorch.callbacks.ModelPruning", "lightning.pytorch.callbacks.pruning",
    "lightning.pytorch.callbacks.StochasticWeightAveraging", "lightning.pytorch.callbacks.stochastic_weight_avg",
    "lightning.pytorch.callbacks.WeightAveraging", "lightning.pytorch.callbacks.weight_averaging",
    "lightning.pytorch.callbacks.ThroughputMonitor", "lightning.pytorch.callbacks.throughput_monitor",
    "torch.optim.lr_scheduler.LambdaLR", "torch.optim.lr_scheduler.MultiplicativeLR",
    "torch.optim.lr_scheduler.CyclicLR", "torch.optim.swa_utils",
)


def trusted() -> list[str]:
    """The import paths ``SELFSUP_TRUST`` adds (empty entries ignored)."""
    return [entry.strip() for entry in os.environ.get(TRUST_VARIABLE, "").split(",") if entry.strip()]


def enforce_import_policy() -> None:
    """Make jsonargparse refuse any import path a parsed value names outside the allow-list."""
    from jsonargparse import set_parsing_settings

    extra = trusted()
    bad = [entry for entry in extra if not all(part.isidentifier() for part in entry.split("."))]
    if bad:
        raise ConfigError(f"{TRUST_VARIABLE} entry {bad[0]!r} is not a dotted module or class path; "
                          "give e.g. SELFSUP_TRUST=mypackage,other.module.MyCallback")
    try:
        set_parsing_settings(import_path_denylist=["*", *DENIED], import_path_allowlist=[*ALLOWED, *extra])
    except ValueError as err:  # jsonargparse refuses to allow itself (it would let a config change the policy)
        raise ConfigError(f"{TRUST_VARIABLE}={','.join(extra)} is refused: {str(err).splitlines()[0]} Remove that "
                          "entry") from None


_DENIED_MESSAGE = re.compile(r"Importing '([\w.]+)' is not allowed")


def import_refusal(message: str) -> ConfigError | None:
    """The one-line refusal for a jsonargparse error caused by a denied import path (None: another error)."""
    found = _DENIED_MESSAGE.search(message)
    if found is None:
        return None
    return ConfigError(
        f"the config names {found.group(1)}, which selfsup does not import: a config may name selfsup, Lightning "
        "callbacks/loggers/strategies/plugins/profilers and torch optimizers, but no class that calls a function "
        f"given to it; to use code of your own that you trust, add its module to {TRUST_VARIABLE} (comma-separated)"
    )
