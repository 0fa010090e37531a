"""A picture of a dense probe's work: image / true mask / predicted mask for a few val images, as a PNG."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from selfsup.data.members import IGNORE
from selfsup.eval.plot import save_figure


def mask_colours(mask: np.ndarray) -> np.ndarray:
    """RGB (H, W, 3) of a label map: background black, class c + 1 in tab10/tab20's colour c, ignored grey."""
    import matplotlib.pyplot as plt

    many = mask[mask != IGNORE].max(initial=0) > 10  # ignored pixels (255) do not make it tab20
    palette = np.array([(0.0, 0.0, 0.0), *(plt.get_cmap("tab20" if many else "tab10")(i)[:3] for i in range(20))])
    rgb = palette[np.clip(mask, 0, len(palette) - 1)]
    rgb[mask == IGNORE] = 0.5
    return rgb


def save_dense_grid(images: torch.Tensor, truth: torch.Tensor, pred: torch.Tensor, out: str | Path,
                    title: str = "") -> Path:
    """Three rows (image, truth, prediction) of ``images`` (N, C, H, W) in [0, 1] and label maps (N, H, W)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(images)
    fig, axes = plt.subplots(3, n, figsize=(1.2 * n, 3.9), dpi=80, squeeze=False)
    for i in range(n):
        image = images[i].permute(1, 2, 0).float().clamp(0, 1).numpy()
        rows = (image[:, :, 0] if image.shape[2] == 1 else image, mask_colours(truth[i].numpy()),
                mask_colours(pred[i].numpy()))
        for row, (ax, picture) in enumerate(zip(axes[:, i], rows)):
            ax.imshow(picture, cmap="gray" if row == 0 else None, vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
    for ax, name in zip(axes[:, 0], ("image", "truth", "prediction")):
        ax.set_ylabel(name, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, out)


class DensePlot(L.Callback):
    """After training a dense probe, save image / truth / prediction of the first ``num_images`` val images
    as ``dense-val.png`` in the run's folder (rank 0; skipped under ``fast_dev_run``). Un-normalised [0, 1]
    inputs are shown as they are."""

    def __init__(self, num_images: int = 8) -> None:
        self.num_images = num_images

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        if trainer.fast_dev_run or not trainer.is_global_zero or data is None or not data.source.has_split("val"):
            return
        images, truth, preds = [], [], []
        with torch.no_grad():
            for batch in data.eval_dataloader("val", all_ranks=True):
                x = batch["image"][: self.num_images - len(images)]
                logits, masks = pl_module._logits_and_masks({**batch, "image": x.to(pl_module.device),
                                                             "label": batch["label"][: len(x)],
                                                             **({"mask": batch["mask"][: len(x)]}
                                                                if "mask" in batch else {})})
                images += list(x)
                truth += list(masks.cpu())
                preds += list(logits.argmax(1).cpu())
                if len(images) >= self.num_images:
                    break
        if not images:
            return
        out = Path(trainer.log_dir or ".") / "dense-val.png"
        metrics = trainer.callback_metrics
        title = f"dense probe, val mIoU {float(metrics['val/miou']):.3f}" if "val/miou" in metrics else ""
        save_dense_grid(torch.stack(images), torch.stack(truth), torch.stack(preds), out, title)
        rank_zero_info(f"dense predictions: {out}")
