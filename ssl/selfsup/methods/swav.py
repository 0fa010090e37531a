"""SwAV (Caron et al. 2020), as in docs/methods/swav.md."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_warn

from selfsup.data.views import MultiCropViews, ViewRecipe
from selfsup.distributed import gather, is_distributed, rank, world_size
from selfsup.errors import ConfigError
from selfsup.heads import MLP, Prototypes
from selfsup.losses import sinkhorn, swapped_prediction_loss
from selfsup.methods.base import SSLMethod, StepOutput, host_scalar


class SwAV(SSLMethod):
    """Multi-crop -> backbone (one forward per crop size) -> projector -> unit-length z -> scores against K
    unit-length prototypes. Codes of the assigned (large) crops come from Sinkhorn-Knopp over all ranks (with
    a queue of past embeddings once it is full); every crop predicts the codes of the other assigned crops.

    Args:
        num_prototypes: K (3000 on ImageNet).
        proj_dim: width of z (128).
        proj_hidden_dim: hidden width of the projector Linear-BN-ReLU-Linear (2048).
        temperature: softmax temperature of the predictions (0.1).
        sinkhorn_eps: entropy regularisation of the codes (0.05).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3).
        crops_for_assign: indices of the crops codes are computed for (the large ones: 0 and 1).
        queue_length: embeddings kept over ALL ranks (rounded down to a multiple of the global batch);
            0: no queue.
        queue_start_epoch: epoch at which the queue is created; it is used once it is full.
        freeze_prototypes_iters: optimizer steps during which the prototypes get no update (one epoch's worth
            in the paper).
        freeze_prototypes_epochs: the same in epochs of the data being trained on (the paper: 1), so a recipe
            need not know its data's size; set this or ``freeze_prototypes_iters``.
        **kwargs: the shared options of ``SSLMethod`` (backbone, optimizer, schedule, probe).
    """

    view_kinds = ("multicrop",)

    def __init__(
        self,
        num_prototypes: int = 3000,
        proj_dim: int = 128,
        proj_hidden_dim: int = 2048,
        temperature: float = 0.1,
        sinkhorn_eps: float = 0.05,
        sinkhorn_iterations: int = 3,
        crops_for_assign: Sequence[int] = (0, 1),
        queue_length: int = 0,
        queue_start_epoch: int = 15,
        freeze_prototypes_iters: int = 0,
        freeze_prototypes_epochs: float = 0.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if freeze_prototypes_iters and freeze_prototypes_epochs:
            raise ConfigError("SwAV: set model.freeze_prototypes_iters or model.freeze_prototypes_epochs, not both")
        self.frozen_steps = freeze_prototypes_iters  # in steps once training starts (freeze_prototypes_epochs)
        self.projector = MLP([self.backbone.num_features, proj_hidden_dim, proj_dim])
        self.prototypes = Prototypes(proj_dim, num_prototypes)
        self.crops_for_assign = list(crops_for_assign)
        self.queue: torch.Tensor | None = None  # (assigned crops, queue_length / world, proj_dim), newest first
        self.queue_filled = 0  # rows of the queue written so far

    def default_views(self, size: int) -> ViewRecipe:
        return MultiCropViews(sizes=(size, max(8, round(size * 96 / 224))))

    # ---- the step -------------------------------------------------------------------------------------
    def ssl_step(self, batch: dict[str, Any]) -> StepOutput:
        crops = batch["views"]
        n, hp = len(crops[0]), self.hparams
        if max(self.crops_for_assign) >= len(crops):
            raise ConfigError(f"SwAV: crops_for_assign {self.crops_for_assign} but the views make {len(crops)} crops")
        self.prototypes.normalize_()
        features = self.backbone_by_size(crops)
        projected = self.projector(features)
        with torch.autocast(projected.device.type, enabled=False):  # scores feed exp(s / eps) and a softmax: fp32
            z = F.normalize(projected.float(), dim=1)
            scores = self.prototypes(z).chunk(len(crops))
        codes = self._codes(z.detach().chunk(len(crops)), scores, n)
        loss = swapped_prediction_loss(scores, codes, hp.temperature)
        logs = {"train/queue_in_use": host_scalar(self._queue_full()), **self._health(z.detach()[:n], codes),
                **self._prototype_use(scores[0].detach(), loss.detach())}
        return StepOutput(loss=loss, features=features[:n], logs=logs, embeddings=z[:n])

    @torch.no_grad()
    def _codes(self, z: Sequence[torch.Tensor], scores: Sequence[torch.Tensor], n: int) -> dict[int, torch.Tensor]:
        """Sinkhorn codes of each assigned crop, with the queue's scores (current prototypes) prepended once the
        queue is full; then this batch's embeddings enter the queue."""
        hp, use_queue = self.hparams, self._queue_full()
        codes = {}
        for i, c in enumerate(self.crops_for_assign):
            s = scores[c].detach()
            if use_queue:
                s = torch.cat([self.prototypes(self.queue[i].to(s.dtype)), s])
            codes[c] = sinkhorn(s, hp.sinkhorn_eps, hp.sinkhorn_iterations)[-n:]
        if self.queue is not None:
            new = torch.stack([z[c].float() for c in self.crops_for_assign]).to(self.queue.device)
            self.queue = torch.cat([new, self.queue[:, :-n]], dim=1)
            self.queue_filled = min(self.queue_filled + n, self.queue.shape[1])
        return codes

    def _health(self, z0: torch.Tensor, codes: dict[int, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Collapse signs: mean pairwise cosine of the first crop's z (1: all equal), and how often the first two
        assigned crops of an image get the same code argmax (chance: 1/K)."""
        b = len(z0)
        cos = (z0.float() @ z0.float().T).sum().sub(b).div(max(b * (b - 1), 1))
        logs = {"train/z_mean_cos": cos}
        if len(self.crops_for_assign) >= 2:
            a, c = (codes[i].argmax(dim=1) for i in self.crops_for_assign[:2])
            logs["train/code_agreement"] = (a == c).float().mean()
        return logs

    def _prototype_use(self, scores: torch.Tensor, loss: torch.Tensor) -> dict[str, torch.Tensor]:
        """How many prototypes are the nearest of at least one image of the batch (first crop), and the loss
        minus ln K: 0 when every prediction is uniform over the K prototypes, the collapsed state. Not while the
        prototypes are frozen: their random directions make every prediction nearly uniform by design, and the
        collapse monitor would take a healthy first epoch for a collapse."""
        k = scores.shape[1]
        used = torch.zeros(k, dtype=torch.bool, device=scores.device).index_fill_(0, scores.argmax(1), True)
        if self.global_step < self.frozen_steps:
            return {"train/prototypes_used": used.sum().float()}
        return {"train/prototypes_used": used.sum().float(), "train/loss_minus_lnK": loss - math.log(k)}

    def _queue_full(self) -> bool:
        return self.queue is not None and self.queue_filled >= self.queue.shape[1]

    # ---- queue life cycle and prototype freezing ------------------------------------------------------
    def on_train_start(self) -> None:
        """Turn ``freeze_prototypes_epochs`` into steps of this data, and warn when the freeze or the queue spans the
        whole run or the whole data set (values tied to another data set's size)."""
        super().on_train_start()
        hp, trainer = self.hparams, self.trainer
        per_epoch = trainer.num_training_batches
        if hp.freeze_prototypes_epochs and math.isfinite(per_epoch):
            self.frozen_steps = round(hp.freeze_prototypes_epochs * per_epoch)
        total = trainer.estimated_stepping_batches
        if self.frozen_steps and math.isfinite(total) and self.frozen_steps >= total:
            rank_zero_warn(f"SwAV: the prototypes stay frozen for the whole run ({self.frozen_steps} steps of "
                           f"{int(total)}); lower model.freeze_prototypes_iters, or give it in epochs "
                           "(model.freeze_prototypes_epochs: 1, the paper's)")
        images = getattr(trainer.datamodule, "source", None)
        images = images.split("train").num_samples if images is not None else 0
        if hp.queue_length and images and hp.queue_length >= images:
            rank_zero_warn(f"SwAV: model.queue_length {hp.queue_length} holds the whole training set ({images} "
                           "images): the codes would be computed against stale copies of the same images; keep the "
                           "queue well under the data set (the paper: 3,840 of 1.28M)")
        if hp.queue_length and hp.queue_start_epoch >= (trainer.max_epochs or 0) > 0:
            rank_zero_warn(f"SwAV: model.queue_start_epoch {hp.queue_start_epoch} is not before the run's end "
                           f"({trainer.max_epochs} epochs): the queue is never used")

    def on_train_epoch_start(self) -> None:
        super().on_train_epoch_start()
        hp = self.hparams
        if hp.queue_length > 0 and self.queue is None and self.current_epoch >= hp.queue_start_epoch:
            global_batch = hp.batch_size * self.trainer.world_size
            length = hp.queue_length - hp.queue_length % global_batch
            if length == 0:
                raise ConfigError(f"SwAV: model.queue_length {hp.queue_length} is shorter than the global batch "
                                  f"{global_batch}; raise it to a multiple of {global_batch} or set it to 0")
            self.queue = torch.zeros(len(self.crops_for_assign), length // self.trainer.world_size,
                                     hp.proj_dim, device=self.device)
            self.queue_filled = 0
        elif self.queue is not None:
            self.queue = self.queue.to(self.device)

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.global_step < self.frozen_steps:
            self.prototypes.weight.grad = None  # the optimizer skips it: no momentum, no decay

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.queue is not None:  # every rank's queue (a collective: all ranks save together)
            queues = gather(self.queue[None]) if is_distributed() else self.queue[None]
            checkpoint["swav_queue"] = {"queues": queues.cpu(), "filled": self.queue_filled}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("swav_queue")
        if saved is None:
            return
        queues = saved["queues"]
        if len(queues) != world_size():
            rank_zero_warn(f"SwAV: the checkpoint's queue was saved by {len(queues)} rank(s), this run has "
                           f"{world_size()}; starting a new queue")
            return
        self.queue, self.queue_filled = queues[rank()].clone(), int(saved["filled"])
