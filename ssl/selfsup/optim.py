"""Optimizers and schedules shared by the methods: LARS (SimCLR, PixPro) and LARC (SwAV), no-decay groups,
warmup + cosine."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Literal

import torch
from torch import nn

from selfsup.errors import ConfigError

OptimizerName = Literal["lars", "larc", "lars_pixpro", "sgd", "adamw"]
LARSVariant = Literal["simclr", "larc", "pixpro"]
LRScaling = Literal["linear", "linear512", "sqrt", "none"]


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling, in the three variants the official codes use.

    For each parameter w with gradient g, in a group with ``adapt=True``:

    ``variant="simclr"`` (SimCLR's LARS: the lr goes into the momentum buffer)::

        g <- g + wd * w
        trust = eta * ||w|| / ||g||                          (1 if either norm is 0)
        v <- momentum * v + lr * trust * g ;  w <- w - v

    ``variant="larc"`` (SwAV: apex's LARC without clipping around SGD; the lr multiplies the buffer)::

        trust = eta * ||w|| / (||g|| + wd * ||w|| + eps)     (if either norm is 0: g unchanged, no decay)
        g <- (g + wd * w) * trust
        v <- momentum * v + g ;  w <- w - lr * v

    ``variant="pixpro"`` (PixPro's LARS around torch SGD: decay first, eps in the trust ratio, lr on the buffer)::

        g <- g + wd * w
        trust = eta * ||w|| / (||g|| + eps)                  (1 if either norm is 0)
        v <- momentum * v + trust * g ;  w <- w - lr * v

    Groups with ``adapt=False`` skip the weight decay and the trust ratio: plain momentum SGD at the group's lr
    (SimCLR and PixPro exclude batch-norm parameters and biases, SimCLR the supervised head too; SwAV adapts
    everything).
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 1e-3,
        adapt: bool = True,
        variant: LARSVariant = "simclr",
        eps: float = 1e-8,
    ) -> None:
        if variant not in ("simclr", "larc", "pixpro"):
            raise ConfigError(f"unknown LARS variant {variant!r}; choose simclr, larc or pixpro")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, adapt=adapt,
                        variant=variant, eps=eps)
        super().__init__(params, defaults)

    @staticmethod
    def _adapted(w: torch.Tensor, g: torch.Tensor, group: dict) -> torch.Tensor:
        """The decayed gradient times its trust ratio."""
        wd, eta = group["weight_decay"], group["eta"]
        w_norm = torch.linalg.vector_norm(w)
        if group["variant"] in ("simclr", "pixpro"):
            g = g.add(w, alpha=wd) if wd else g
            g_norm = torch.linalg.vector_norm(g)
            ok = (w_norm > 0) & (g_norm > 0)
            eps = group["eps"] if group["variant"] == "pixpro" else 0.0
            return g * torch.where(ok, eta * w_norm / (g_norm + eps), torch.ones_like(w_norm))
        g_norm = torch.linalg.vector_norm(g)
        trust = eta * w_norm / (g_norm + wd * w_norm + group["eps"])
        return torch.where((w_norm > 0) & (g_norm > 0), g.add(w, alpha=wd) * trust, g)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr_in_buffer = group["variant"] == "simclr"
            for w in group["params"]:
                if w.grad is None:
                    continue
                g = self._adapted(w, w.grad, group) if group["adapt"] else w.grad
                state = self.state[w]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(w)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(g, alpha=group["lr"] if lr_in_buffer else 1.0)
                w.sub_(buf, alpha=1.0 if lr_in_buffer else group["lr"])
        return loss


# Learned tokens and position tables of transformers (torchvision's names, selfsup's mask token, and timm's ViTs'
# own no_weight_decay() set).
NO_DECAY_NAMES = ("mask_token", "class_token", "pos_embedding", "relative_position_bias_table",
                  "cls_token", "reg_token", "dist_token", "pos_embed")


def is_no_decay(name: str, param: nn.Parameter) -> bool:
    """No weight decay for norm weights and biases (every parameter with fewer than 2 dimensions), the mask and
    class tokens and the position tables (SimMIM's exclusions; timm's names for them too)."""
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES


def split_decay(
    named_params: Iterable[tuple[str, nn.Parameter]], weight_decay: float,
    no_decay: Callable[[str, nn.Parameter], bool] = is_no_decay,
) -> list[dict]:
    """Two parameter groups: decayed (LARS-adapted) and not decayed (LARS-excluded); empty groups dropped."""
    decay, plain = [], []
    for name, p in named_params:
        if p.requires_grad:
            (plain if no_decay(name, p) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "adapt": True},
        {"params": plain, "weight_decay": 0.0, "adapt": False},
    ]
    return [g for g in groups if g["params"]]


def layer_decay_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], layer_id: Callable[[str], int], num_layers: int,
    decay: float, weight_decay: float, no_decay: Callable[[str, nn.Parameter], bool] = is_no_decay,
) -> list[dict]:
    """Parameter groups for layer-wise lr decay: a parameter at depth ``layer_id(name)`` (0: embedding, ...,
    ``num_layers + 1``: after the last block, e.g. the head) gets ``lr_scale = decay ** (num_layers + 1 - id)``;
    one group per (depth, decayed or not), no weight decay where ``no_decay`` says so. ``lr_scale`` multiplies
    the optimizer's lr (``apply_lr_scale``)."""
    groups: dict[tuple[int, bool], dict] = {}
    for name, p in named_params:
        if not p.requires_grad:
            continue
        depth, plain = layer_id(name), no_decay(name, p)
        group = groups.setdefault((depth, plain), {
            "params": [], "weight_decay": 0.0 if plain else weight_decay, "adapt": not plain,
            "lr_scale": decay ** (num_layers + 1 - depth), "layer": depth})
        group["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def check_layer_decay(backbone: nn.Module, decay: float, name: str) -> None:
    """A ConfigError unless layer-wise lr decay is off (1) or ``backbone`` (called ``name``) has blocks to decay
    over (a ``layer_id``)."""
    if decay != 1.0 and not hasattr(backbone, "layer_id"):
        raise ConfigError(f"model.layer_decay {decay} needs a backbone with transformer blocks (vit_*, swin_*), but "
                          f"{name} has none; set model.layer_decay: 1.0")


def backbone_layer_groups(
    named_params: Iterable[tuple[str, nn.Parameter]], backbone: nn.Module, decay: float, weight_decay: float,
    no_decay: Callable[[str, nn.Parameter], bool] = is_no_decay, prefix: str = "backbone.",
) -> list[dict]:
    """``layer_decay_groups`` of a model's parameters: those named ``prefix`` + a backbone parameter at the
    backbone's ``layer_id`` depth, every other one (heads, norms after the backbone; all of them for a backbone
    without blocks) at the top depth, L + 1."""
    blocks, layer_id = getattr(backbone, "num_blocks", 0), getattr(backbone, "layer_id", None)

    def depth(name: str) -> int:
        return layer_id(name.removeprefix(prefix)) if layer_id and name.startswith(prefix) else blocks + 1

    return layer_decay_groups(named_params, depth, blocks, decay, weight_decay, no_decay)


def apply_lr_scale(optimizer: torch.optim.Optimizer) -> None:
    """Set each group's lr (and the scheduler's base lr) to the optimizer's lr x the group's ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)


def scaled_lr(base_lr: float, batch_size: int, rule: LRScaling, reference: int = 256) -> float:
    """The learning rate for a global batch: ``base x BS/reference`` (linear), ``base x BS/512`` (linear512,
    SimMIM), ``base x sqrt(BS)`` or ``base``."""
    if rule == "linear":
        return base_lr * batch_size / reference
    if rule == "linear512":
        return base_lr * batch_size / 512
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size)
    if rule == "none":
        return base_lr
    raise ConfigError(f"unknown lr scaling rule {rule!r}; choose linear, linear512, sqrt or none")


def build_optimizer(
    name: OptimizerName, groups: list[dict], lr: float, momentum: float, weight_decay: float,
    betas: tuple[float, float] = (0.9, 0.999), nesterov: bool = False,
) -> torch.optim.Optimizer:
    """LARS (SimCLR), LARC (SwAV), PixPro's LARS, SGD (momentum; Nesterov's with ``nesterov``) or AdamW over
    parameter groups that carry ``weight_decay`` and ``adapt`` keys."""
    if name in ("lars", "larc", "lars_pixpro"):
        variant = {"lars": "simclr", "larc": "larc", "lars_pixpro": "pixpro"}[name]
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay, variant=variant)
    plain = [{k: v for k, v in g.items() if k != "adapt"} for g in groups]
    if name == "sgd":
        return torch.optim.SGD(plain, lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    if name == "adamw":
        return torch.optim.AdamW(plain, lr=lr, betas=betas, weight_decay=weight_decay)
    raise ConfigError(f"unknown optimizer {name!r}; choose lars, larc, lars_pixpro, sgd or adamw")


def warmup_cosine(
    step: int, total_steps: int, warmup_steps: int, start_factor: float = 0.0, final_factor: float = 0.0
) -> float:
    """Learning-rate multiplier at ``step``: linear from ``start_factor`` to 1 over the warmup, then cosine
    from 1 down to ``final_factor`` at ``total_steps``."""
    if step < warmup_steps:
        return start_factor + (1.0 - start_factor) * step / warmup_steps
    return cosine_ramp(step - warmup_steps, total_steps - warmup_steps, 1.0, final_factor)


def cosine_ramp(step: int, total_steps: int, start: float, end: float) -> float:
    """``end + (start - end) * (1 + cos(pi * step / total_steps)) / 2``: ``start`` at step 0, ``end`` at
    ``total_steps`` and after. The one cosine of every schedule: the lr after its warmup, the weight decay
    (``weight_decay`` -> ``weight_decay_end``), the momentum of a cosine EMA (``base_momentum`` -> 1)."""
    progress = min(1.0, step / max(1, total_steps))
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def global_batch_size(batch_size: int, trainer) -> int:
    """Samples per optimizer step: per-device batch x devices x nodes x gradient accumulation."""
    return batch_size * trainer.world_size * trainer.accumulate_grad_batches


def warmup_cosine_scheduler(
    optimizer: torch.optim.Optimizer, trainer, warmup_epochs: float, start_factor: float = 0.0,
    final_factor: float = 0.0,
) -> dict:
    """Lightning's scheduler config for ``warmup_cosine`` stepped every optimizer step over the whole fit
    (warmup given in epochs, fractions allowed)."""
    total = max(1, int(trainer.estimated_stepping_batches))
    epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
    warmup = round(warmup_epochs * total / epochs) if epochs else 0
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: warmup_cosine(step, total, warmup, start_factor, final_factor)
    )
    return {"scheduler": schedule, "interval": "step"}


@torch.no_grad()
def clip_grad_per_tensor_(params: Iterable[nn.Parameter], max_norm: float) -> None:
    """Scale each gradient whose L2 norm exceeds ``max_norm`` by ``max_norm / (norm + 1e-6)``, tensor by tensor
    (DINO's clipping; not one global norm)."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    scales = [(max_norm / (n + 1e-6)).clamp(max=1.0) for n in torch._foreach_norm(grads)]
    torch._foreach_mul_(grads, scales)
