"""Masked-image reconstructions as a PNG grid: original / masked / reconstruction of a few val images (SimMIM,
MAE: each method hands over its ``reconstructor``).

    selfsup reconstruct --ckpt runs/.../last.ckpt -c experiments/simmim/mnist5k-vit-tiny.yaml --out recon.png

The ``ReconstructionGrid`` callback writes the same grid into the run folder during training.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from selfsup.errors import ConfigError
from selfsup.eval.plot import save_figure
from selfsup.losses.simmim import pixel_mask

if TYPE_CHECKING:
    from selfsup.data import SSLDataModule


def _to_unit(x: torch.Tensor, norm: tuple[tuple[float, ...], tuple[float, ...]] | None) -> torch.Tensor:
    """Normalised images back to [0, 1] pixels (B, C, H, W)."""
    if norm is not None:
        c = x.shape[1]
        mean, std = (torch.tensor(v, dtype=x.dtype) for v in norm)
        if len(mean) != c:  # statistics of 3 channels on 1-channel images: their averages (as ``normalize``)
            mean, std = mean.mean(0, keepdim=True), std.mean(0, keepdim=True)
        x = x * std[:, None, None] + mean[:, None, None]
    return x.clamp(0, 1)


def grid_rows(images: torch.Tensor, mask: torch.Tensor, recon: torch.Tensor, patch_size: int,
              norm: tuple[tuple[float, ...], tuple[float, ...]] | None) -> list[torch.Tensor]:
    """The three rows of the grid in [0, 1] pixels: the original, the masked input (masked pixels grey), and the
    reconstruction (predicted pixels where masked, the original elsewhere: the loss scores only the masked)."""
    m = pixel_mask(mask, patch_size).to(images.dtype)
    original, predicted = _to_unit(images, norm), _to_unit(recon, norm)
    masked = original * (1 - m) + 0.5 * m
    return [original, masked, original * (1 - m) + predicted * m]


def save_reconstruction_grid(rows: list[torch.Tensor], out: str | Path, title: str = "") -> Path:
    """A PNG with one row per tensor of ``rows`` (each (B, C, H, W) in [0, 1]) and one column per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ["original", "masked", "reconstruction"]
    n = rows[0].shape[0]
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n + 0.9, 1.1 * len(rows) + 0.4), dpi=80, squeeze=False)
    for r, row in enumerate(rows):
        for i in range(n):
            image = row[i].permute(1, 2, 0).squeeze(-1).float().numpy()
            ax = axes[r][i]
            ax.imshow(image, cmap="gray" if image.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(names[r] if r < len(names) else "", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out)


Reconstruct = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, torch.Tensor]]
"""What a masked-image method hands evaluation: ``f(images, generator) -> (mask (B, h, w), reconstruction
(B, C, H, W))``, masks drawn with ``generator``, 1 = masked, pixels in the views' normalisation."""


@torch.no_grad()
def reconstruction_rows(reconstruct: Reconstruct, data: SSLDataModule, num_images: int = 8, seed: int = 0,
                        device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """Original / masked / reconstruction rows of the first ``num_images`` un-augmented val images, with masks
    drawn by ``seed`` (the same masks every time). Call it with the model in eval mode."""
    images = next(iter(data.eval_dataloader("val", all_ranks=True)))["image"][:num_images]
    mask, recon = reconstruct(images.to(device), torch.Generator().manual_seed(seed))
    mask, recon = mask.cpu(), recon.float().cpu()
    return grid_rows(images, mask, recon, images.shape[-1] // mask.shape[-1], data.views.normalization)


class ReconstructionGrid(L.Callback):
    """Every ``every_n_epochs`` and after the last epoch, write ``reconstruction-epoch{N}.png`` (original /
    masked / reconstruction of ``num_images`` val images, fixed masks, from the method's ``reconstructor(views)``)
    into the run folder. Rank 0; not under ``fast_dev_run``."""

    def __init__(self, every_n_epochs: int = 5, num_images: int = 8, seed: int = 0) -> None:
        self.every_n_epochs, self.num_images, self.seed = every_n_epochs, num_images, seed

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        data = trainer.datamodule
        if trainer.fast_dev_run or not trainer.is_global_zero or not (last or epoch % self.every_n_epochs == 0):
            return
        if data is None or not data.source.has_split("val"):
            return
        if not hasattr(pl_module, "reconstructor"):
            raise ConfigError(f"ReconstructionGrid pictures masked-image methods (SimMIM, MAE), not "
                              f"{type(pl_module).__name__}; drop it from trainer.callbacks")
        was_training = pl_module.training
        pl_module.eval()
        try:
            rows = reconstruction_rows(pl_module.reconstructor(data.views), data, self.num_images, self.seed,
                                       pl_module.device)
        finally:
            pl_module.train(was_training)
        out = save_reconstruction_grid(rows, Path(trainer.log_dir or ".") / f"reconstruction-epoch{epoch}.png",
                                       f"{type(pl_module).__name__} reconstructions, epoch {epoch}")
        rank_zero_info(f"reconstruction grid: {out}")
