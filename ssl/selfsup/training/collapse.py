"""Collapse and health signs of a pretraining run: the effective rank of recent embeddings (RankMe), their mean
pairwise cosine, the entropy and agreement of a method's target distributions, and a one-line warning when a run
collapses (see docs/troubleshooting.md)."""

from __future__ import annotations

import math
import sys
from collections import deque
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_only

from selfsup.errors import ConfigError

TARGET_SIGNS = ("target_entropy_ratio", "target_top_share")  # what target_health gives, logged as train/<name>
RANKME_EPS = 1e-7  # Garrido et al.'s epsilon: keeps log(p) finite for zero singular values


@torch.no_grad()
def rankme(z: torch.Tensor, eps: float = RANKME_EPS) -> float:
    """RankMe, the effective rank of the rows of ``z`` (N, D): exp of the entropy of its singular values
    normalised to sum 1, ``p_k = s_k / sum(s) + eps``. Between 1 (every row on one line) and min(N, D) (all
    directions used equally); NaN where ``z`` is not finite (the non-finite guard reports that run)."""
    if not torch.isfinite(z).all():
        return float("nan")
    s = torch.linalg.svdvals(z.float())
    p = s / s.sum().clamp_min(torch.finfo(s.dtype).tiny) + eps
    return math.exp(float(-(p * p.log()).sum()))


@torch.no_grad()
def mean_pairwise_cosine(z: torch.Tensor) -> float:
    """The mean cosine similarity over all pairs of distinct rows of ``z`` (N, D); 1 when every row points the
    same way."""
    n = len(z)
    if n < 2:
        return float("nan")
    u = F.normalize(z.float(), dim=1)
    total = u.sum(0).square().sum() - u.square().sum()  # sum over i != j of u_i . u_j
    return float(total / (n * (n - 1)))


@torch.no_grad()
def target_health(probs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Two collapse signs of a batch of target distributions (N, K): ``target_entropy_ratio``, their mean entropy
    over ln K (1: every target uniform), and ``target_top_share``, the share of rows whose largest entry is the
    batch's most common one (1: every row picks the same output). A method logs them as ``train/<name>``."""
    p = probs.float().reshape(-1, probs.shape[-1])
    entropy = -(p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum(dim=-1).mean()
    top = torch.bincount(p.argmax(dim=-1), minlength=p.shape[-1]).max()
    return {"target_entropy_ratio": entropy / math.log(max(p.shape[-1], 2)), "target_top_share": top / len(p)}


class CollapseMonitor(L.Callback):
    """Keeps the last ``buffer_size`` rows of two kinds of training output and, every ``every_n_steps`` steps
    (default: the trainer's ``log_every_n_steps``), logs their RankMe and mean pairwise cosine:
    ``health/rank_features`` and ``health/cos_features`` (pooled backbone features), ``health/rank_embeddings``
    and ``health/cos_embeddings`` (what the method's loss compares: projector outputs, where it has one).

    It warns once, in one line naming the likely cause, when the embeddings' effective rank falls below
    ``min_rank_fraction`` of their width (an embedding of 128 numbers that uses fewer than 6.4 directions: SimCLR
    at lr 100 settles at 3.5 with its loss at the uniform value, healthy MNIST runs use 20 to 70), and
    when a method's ``train/loss_minus_lnK`` (SwAV: the loss minus ln K, 0 when every prediction is uniform)
    stays within ``lnk_margin`` of 0 for a whole epoch, and when a method's targets (``target_health``, logged as
    ``train/target_entropy_ratio`` and ``train/target_top_share``, e.g. DINO's teacher) are, on average over the
    last ``target_window`` steps, near uniform (entropy ratio at least ``uniform_ratio``) or the same output for
    nearly every image (top share at least ``top_share``). Rows are kept on the device and read on the host only
    when measured; each rank measures its own rows, rank 0's values are logged.
    """

    def __init__(self, every_n_steps: int | None = None, buffer_size: int = 512, min_rank_fraction: float = 0.05,
                 lnk_margin: float = 0.01, target_window: int = 20, uniform_ratio: float = 0.95,
                 top_share: float = 0.75) -> None:
        if every_n_steps is not None and every_n_steps < 1:
            raise ConfigError(f"collapse.every_n_steps must be at least 1, got {every_n_steps}")
        if buffer_size < 2:
            raise ConfigError(f"collapse.buffer_size must be at least 2 rows, got {buffer_size}")
        if not 0 <= min_rank_fraction <= 1:
            raise ConfigError(f"collapse.min_rank_fraction must be within 0..1, got {min_rank_fraction}")
        if target_window < 1 or not 0 < uniform_ratio <= 1 or not 0 < top_share <= 1:
            raise ConfigError(f"collapse.target_window must be at least 1 and collapse.uniform_ratio and "
                              f"collapse.top_share within (0, 1]; got {target_window}, {uniform_ratio}, {top_share}")
        self.every_n_steps, self.buffer_size = every_n_steps, buffer_size
        self.min_rank_fraction, self.lnk_margin = min_rank_fraction, lnk_margin
        self.uniform_ratio, self.top_share = uniform_ratio, top_share
        self.buffers: dict[str, deque[torch.Tensor]] = {"features": deque(), "embeddings": deque()}
        self.targets: dict[str, deque[float]] = {k: deque(maxlen=target_window) for k in TARGET_SIGNS}
        self.warned: set[str] = set()

    def _keep(self, name: str, rows: torch.Tensor | None) -> None:
        if rows is None or rows.ndim != 2:
            return
        buffer = self.buffers[name]
        buffer.append(rows.detach()[: self.buffer_size])
        while sum(len(b) for b in buffer) - len(buffer[0]) >= self.buffer_size:
            buffer.popleft()

    def measure(self) -> dict[str, float]:
        """RankMe and mean cosine of each non-empty buffer (its newest ``buffer_size`` rows)."""
        result = {}
        for name, buffer in self.buffers.items():
            if buffer:
                z = torch.cat(list(buffer))[-self.buffer_size:]
                result[f"health/rank_{name}"] = rankme(z)
                result[f"health/cos_{name}"] = mean_pairwise_cosine(z)
                result[f"health/width_{name}"] = z.shape[1]
        return result

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not isinstance(outputs, dict):
            return
        self._keep("features", outputs.get("features"))
        self._keep("embeddings", outputs.get("embeddings"))
        self._check_targets(trainer, pl_module)
        every = self.every_n_steps or trainer.log_every_n_steps or 1
        if (trainer.global_step + 1) % every or not any(self.buffers.values()):
            return
        values = self.measure()
        widths = {k: values.pop(k) for k in [k for k in values if k.startswith("health/width_")]}
        pl_module.log_dict({k: torch.tensor(v) for k, v in values.items()}, on_step=True, on_epoch=False,
                           batch_size=1)
        name = "embeddings" if "health/rank_embeddings" in values else "features"
        rank, width = values[f"health/rank_{name}"], widths[f"health/width_{name}"]
        if name == "embeddings" and rank < self.min_rank_fraction * width:
            self._warn("rank", f"collapse: the {type(pl_module).__name__} embeddings span {rank:.2f} of "
                               f"{width} dimensions (RankMe, step {trainer.global_step}, mean cosine "
                               f"{values['health/cos_embeddings']:.3f}): the model maps every image to nearly the "
                               "same point. Likely causes: a learning rate too high for the batch, views too "
                               "weak or too strong, or (SwAV) too few prototypes; lower model.init_args.lr first")

    def _check_targets(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Warn when the targets' recent mean entropy is near ln K or one output wins for nearly every image."""
        for name, values in self.targets.items():
            value = trainer.callback_metrics.get(f"train/{name}_step", trainer.callback_metrics.get(f"train/{name}"))
            if value is not None:
                values.append(float(value))
        ratio, share = (self.targets[k] for k in TARGET_SIGNS)
        method, step, window = type(pl_module).__name__, trainer.global_step, ratio.maxlen
        if len(ratio) == window and sum(ratio) / window >= self.uniform_ratio:
            self._warn("uniform", f"collapse: {method}'s targets stayed near uniform for {window} steps (entropy "
                                  f"{sum(ratio) / window:.3f} of ln K up to step {step}): no output is preferred for "
                                  "any image. Likely causes: a teacher temperature too high "
                                  "(model.init_args.teacher_temp), crops that show too little of the image, or an "
                                  "lr too high for the batch")
        if len(share) == window and sum(share) / window >= self.top_share:
            self._warn("one-hot", f"collapse: {method}'s targets picked the same output for "
                                  f"{sum(share) / window:.0%} of each batch over {window} steps (up to step {step}): "
                                  "one output wins for every image. Likely causes: no centering "
                                  "(model.init_args.center_momentum 1.0) or a teacher temperature too low")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        gap = trainer.callback_metrics.get("train/loss_minus_lnK_epoch")
        if gap is not None and abs(float(gap)) < self.lnk_margin:
            self._warn("lnk", f"collapse: {type(pl_module).__name__}'s loss stayed within {self.lnk_margin} of ln K "
                              f"for epoch {trainer.current_epoch} (loss - ln K = {float(gap):.4f}): every "
                              "prediction is uniform over the prototypes. Likely causes: codes too soft "
                              "(model.init_args.sinkhorn_eps), too few prototypes for the views, or an lr warm-up "
                              "too steep (docs/methods/swav.md)")

    def _warn(self, cause: str, message: str) -> None:
        if cause not in self.warned:
            self.warned.add(cause)
            _print_warning(message)

    def state_dict(self) -> dict[str, Any]:
        return {"warned": sorted(self.warned)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.warned = set(state.get("warned", ()))


@rank_zero_only
def _print_warning(message: str) -> None:
    print(f"selfsup: warning: {message}", file=sys.stderr, flush=True)
