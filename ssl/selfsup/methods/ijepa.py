"""I-JEPA (Assran et al. 2023), as in docs/methods/ijepa.md."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from selfsup.data.multiblock import MultiBlockViews
from selfsup.data.views import ViewRecipe
from selfsup.errors import ConfigError
from selfsup.eval.checkpoint import EVALUATED
from selfsup.heads import BlockPredictor
from selfsup.methods.base import SSLMethod, StepOutput
from selfsup.momentum import MomentumSchedule, MomentumTeacher


def gather_tokens(tokens: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """``tokens`` (B, N, D) at patch ``indices`` (M, B, T): (M, B, T, D)."""
    m, b, t = indices.shape
    picked = tokens.gather(1, indices.transpose(0, 1).reshape(b, m * t, 1).expand(-1, -1, tokens.shape[-1]))
    return picked.view(b, m, t, -1).transpose(0, 1)


class IJEPA(MomentumTeacher, SSLMethod):
    """Joint-embedding predictive architecture: from the patches of one large context block, predict a target
    encoder's features of several target blocks of the same image (``MultiBlockViews`` draws the blocks).

    The context encoder (``backbone``, a ViT) runs over the context patches only; the target encoder
    (``momentum_backbone``, its EMA, rising linearly from ``base_momentum`` to 1) over the whole image, its output
    layer-normed once more without scale and shift, then gathered at each target block. ``BlockPredictor`` turns
    the context tokens into predictions for each target block; the loss is the smooth L1 (beta 1) averaged over
    every element. No class token is needed (``backbone_args: {class_token: false}``; with one, it is ignored).

    Optimizer as the official code with ``optimizer: adamw``, ``lr_scaling: none``, warmup from
    ``warmup_start_factor`` of the lr, cosine to ``final_lr_factor``; the weight decay (not on norms, biases,
    tokens, position tables) follows a cosine from ``weight_decay`` to ``weight_decay_end`` over the run, per
    step (logged as ``schedule/weight_decay``). The online probe sees the mean of the context tokens.

    Evaluations of a checkpoint (probes, kNN, fine-tuning, export) read the target encoder, as the paper
    evaluates it (``evaluate_target: false``: the context encoder); the KNNMonitor during training sees the context
    encoder.

    Args:
        pred_dim: the predictor's width (384).
        pred_depth: the predictor's transformer blocks (12).
        pred_heads: its attention heads; None: the backbone's.
        base_momentum: the target encoder's momentum at step 0 (0.996), rising to 1 at the last step.
        momentum_schedule: ``linear`` (I-JEPA) or ``cosine``.
        weight_decay_end: ``SSLMethod``'s cosine weight-decay schedule, I-JEPA's default end: 0.4.
        evaluate_target: evaluations read the target encoder (True) or the context encoder.
        **kwargs: the shared options of ``SSLMethod`` (backbone, optimizer, schedule, probe).
    """

    view_kinds = ("blocks",)

    def __init__(self, pred_dim: int = 384, pred_depth: int = 12, pred_heads: int | None = None,
                 base_momentum: float = 0.996, momentum_schedule: MomentumSchedule = "linear",
                 weight_decay_end: float | None = 0.4, evaluate_target: bool = True, **kwargs: Any) -> None:
        super().__init__(weight_decay_end=weight_decay_end, **kwargs)
        if not callable(getattr(self.backbone, "tokens", None)):
            raise ConfigError(f"I-JEPA runs its encoder over kept patches, which {self.hparams.backbone!r} cannot; "
                              "use a ViT: vit, vit_tiny, vit_s_16, vit_b_16 or a timm one (timm:vit_small_patch16_224)")
        heads = pred_heads or self.backbone.num_heads
        if pred_dim % heads or pred_dim % 4:
            raise ConfigError(f"model.pred_dim {pred_dim} must be a multiple of 4 and of the predictor's {heads} "
                              "heads; choose another pred_dim (or pred_heads)")
        grid = self.backbone.image_size // self.backbone.patch_size
        self.predictor = BlockPredictor(self.backbone.num_features, pred_dim, pred_depth, heads, grid)
        self.add_teacher(["backbone"], base_momentum, momentum_schedule)

    def default_views(self, size: int) -> ViewRecipe:
        return MultiBlockViews(size, self.backbone.patch_size)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        views = getattr(self.trainer.datamodule, "views", None) if self._trainer else None
        if stage == "fit" and isinstance(views, MultiBlockViews):
            patch, size = self.backbone.patch_size, self.backbone.image_size
            if (views.model_patch_size, views.size) != (patch, size):
                raise ConfigError(f"data.views (size {views.size}, model_patch_size {views.model_patch_size}) does not "
                                  f"match the backbone's image_size {size} and patch_size {patch}; set "
                                  f"data.views.init_args.size: {size} and model_patch_size: {patch}")

    def targets(self, images: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
        """The target encoder's features of the whole images, normed without affine, at the target ``blocks``."""
        with torch.no_grad():
            tokens = self.momentum_backbone.tokens(images)[:, self.backbone.num_prefix:]
            return gather_tokens(F.layer_norm(tokens, tokens.shape[-1:]), blocks)

    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        images, context, blocks = batch["images"], batch["context"], batch["targets"]
        tau = self.update_momentum()
        targets = self.targets(images, blocks)
        tokens = self.backbone.tokens(images, keep=context)[:, self.backbone.num_prefix:]
        loss = F.smooth_l1_loss(self.predictor(tokens, context, blocks), targets)
        return StepOutput(loss=loss, features=tokens.mean(dim=1), logs={"train/momentum": torch.tensor(tau)})

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[EVALUATED] = "momentum_backbone" if self.hparams.evaluate_target else "backbone"
