"""Fine-tuning evaluation: the whole backbone from a checkpoint plus a linear head, with layer-wise lr decay,
drop path and a norm after the pooling (how SimMIM and MAE are judged).

    selfsup fit -c experiments/eval/finetune-mnist5k-vit-tiny.yaml --model.init_from runs/.../last.ckpt
"""

from __future__ import annotations

from typing import Any

import lightning as L
import torch.nn.functional as F
from torch import nn

from selfsup.data.views import CropViews, ViewRecipe
from selfsup.errors import ConfigError
from selfsup.eval.checkpoint import backbone_from
from selfsup.eval.knn import topk_accuracy
from selfsup.heads import LinearClassifier
from selfsup.optim import (
    LRScaling,
    OptimizerName,
    apply_lr_scale,
    backbone_layer_groups,
    build_optimizer,
    check_layer_decay,
    global_batch_size,
    scaled_lr,
    warmup_cosine_scheduler,
)


class FineTune(L.LightningModule):
    """Train the whole backbone (weights from ``init_from``; None: random init, the baseline) and a linear head
    on its pooled features with cross-entropy (label smoothing); logs ``val/top1`` and ``val/top5``. One path
    for SimMIM's and MAE's recipes: MAE's adds ``drop_path``, ``pool_norm`` and ``head_init_std``.

    Layer-wise lr decay: a parameter in transformer block i of L gets lr x ``layer_decay`` ^ (L + 1 - i); the
    patch embedding (and mask token, position tables) is depth 0, the final norm and the head depth L + 1
    (the backbone's ``layer_id``; ``layer_decay: 1`` for backbones without blocks, e.g. ResNets).

    Args:
        init_from: a selfsup checkpoint (any method's); its backbone architecture must be ``backbone``.
        backbone, backbone_args: the architecture; None: the checkpoint's (a value that differs is refused).
        in_channels, num_classes, batch_size: linked from the data by the CLI.
        optimizer, lr, lr_scaling, weight_decay, momentum, betas: lr is scaled by the global batch
            (``linear512``: x BS/512, SimMIM's rule); no weight decay for norms, biases, tokens, position tables.
        layer_decay: per-block lr decay factor (SimMIM: 0.9 Swin-B, 0.65 ViT-B [unverified]).
        label_smoothing: of the cross-entropy (SimMIM fine-tuning: 0.1).
        drop_path: the ViT's largest drop-path rate, reached at its last block (MAE: 0.1 ViT-B, 0.2 ViT-L);
            None keeps the checkpoint's.
        pool_norm: a LayerNorm on the pooled feature before the head (MAE's global pool + ``fc_norm``; our ViT's
            last norm stays in front of the pooling), at the head's depth.
        head_init_std: std of the head's normal initial weights (MAE: 2e-5).
        warmup_epochs, warmup_start_factor, final_lr_factor: warmup + cosine schedule.
    """

    evaluate_at_end = True  # the CLI validates after fit if the last epoch did not

    def __init__(
        self,
        init_from: str | None = None,
        backbone: str | None = None,
        backbone_args: dict[str, Any] | None = None,
        in_channels: int = 3,
        num_classes: int = 0,
        batch_size: int = 256,
        optimizer: OptimizerName = "adamw",
        lr: float = 5e-3,
        lr_scaling: LRScaling = "linear512",
        weight_decay: float = 0.05,
        momentum: float = 0.9,
        betas: tuple[float, float] = (0.9, 0.999),
        layer_decay: float = 0.65,
        label_smoothing: float = 0.1,
        warmup_epochs: float = 5.0,
        warmup_start_factor: float = 0.0,
        final_lr_factor: float = 0.0,
        drop_path: float | None = None,
        pool_norm: bool = False,
        head_init_std: float = 0.01,
    ) -> None:
        super().__init__()
        if num_classes <= 0:
            raise ConfigError("FineTune needs labels, but the data has no classes: give a labelled source "
                              "(one whose manifest.json lists classes, e.g. builtin:mnist5k)")
        self.save_hyperparameters()
        self.backbone, spec = backbone_from(backbone, backbone_args, in_channels, init_from, "FineTune")
        self.hparams.update(backbone=spec.name, backbone_args=spec.args)  # what a checkpoint of this records
        self.input_normalization = spec.normalization  # the pretraining's mean/std, for the default views
        check_layer_decay(self.backbone, layer_decay, spec.name)
        if drop_path is not None:
            if not hasattr(self.backbone, "set_drop_path"):
                raise ConfigError(f"model.drop_path needs one of selfsup's ViTs (vit, vit_tiny, vit_s_16, vit_b_16), "
                                  f"but the backbone is {spec.name}; drop model.drop_path")
            self.backbone.set_drop_path(drop_path)
        width = self.backbone.num_features
        self.pool_norm = nn.LayerNorm(width, eps=1e-6) if pool_norm else nn.Identity()
        self.head = LinearClassifier(width, num_classes, head_init_std)

    def default_views(self, size: int) -> ViewRecipe:
        """Random resized crops and flips, normalised as the backbone's pretraining (set data.views for a
        recipe's own)."""
        mean, std = self.input_normalization or (None, None)
        return CropViews(size, mean=mean, std=std)

    def setup(self, stage: str) -> None:
        views = getattr(self.trainer.datamodule, "views", None) if self._trainer else None
        if views is not None and views.kind != "image":
            raise ConfigError(f"FineTune trains on single images, but data.views makes {views.kind!r} views; "
                              "use CropViews (with the pretraining's mean/std) or EvalView")

    def forward(self, images):
        """Class logits of images."""
        return self.head(self.pool_norm(self.backbone(images)))

    def training_step(self, batch: dict[str, Any], batch_idx: int):
        labels = batch["label"]
        keep = labels >= 0
        logits = self(batch["image"])[keep]
        loss = F.cross_entropy(logits, labels[keep], label_smoothing=self.hparams.label_smoothing)
        top1 = (logits.argmax(1) == labels[keep]).float().mean()
        self.log_dict({"train/loss": loss, "train/top1": top1}, on_step=True, on_epoch=True, batch_size=len(labels))
        self.log("train/lr", self.trainer.optimizers[0].param_groups[-1]["lr"], on_step=True, on_epoch=False)
        return loss

    def _eval_step(self, batch: dict[str, Any], prefix: str) -> None:
        labels = batch["label"]
        keep = labels >= 0
        metrics = topk_accuracy(self(batch["image"])[keep], labels[keep])
        self.log_dict({f"{prefix}/{k}": v for k, v in metrics.items()}, on_epoch=True, sync_dist=True,
                      batch_size=int(keep.sum()))

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def parameter_groups(self) -> list[dict]:
        """Layer-wise decayed groups over the backbone, the pooled feature's norm and the head (both at the top
        depth)."""
        return backbone_layer_groups(self.named_parameters(), self.backbone, self.hparams.layer_decay,
                                     self.hparams.weight_decay)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        lr = scaled_lr(hp.lr, global_batch_size(hp.batch_size, self.trainer), hp.lr_scaling)
        opt = build_optimizer(hp.optimizer, self.parameter_groups(), lr, hp.momentum, hp.weight_decay,
                              tuple(hp.betas))
        apply_lr_scale(opt)
        schedule = warmup_cosine_scheduler(opt, self.trainer, hp.warmup_epochs, hp.warmup_start_factor,
                                           hp.final_lr_factor)
        return {"optimizer": opt, "lr_scheduler": schedule}
