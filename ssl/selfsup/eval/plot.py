"""Embedding plots: a 2-D t-SNE of val features, one colour per label, saved as a PNG (CLI and callback)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info

from selfsup.errors import ConfigError
from selfsup.eval.features import split_features
from selfsup.training.atomic import atomic_write


def tsne_2d(features: torch.Tensor, seed: int = 0) -> np.ndarray:
    """(N, 2) t-SNE coordinates of L2-normalised features (PCA first to 50 dimensions when wider, or to N when there
    are fewer samples: PCA finds no more components than samples)."""
    from sklearn.decomposition import PCA
    from sklearn.manifold import TSNE

    x = torch.nn.functional.normalize(features.float(), dim=1).numpy()
    width = min(50, len(x))
    if x.shape[1] > width:
        x = PCA(width, random_state=seed).fit_transform(x)
    perplexity = min(30.0, (len(x) - 1) / 3)
    return TSNE(2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(x)


def save_embedding_plot(
    features: torch.Tensor, labels: torch.Tensor, out: str | Path, classes: Sequence[str] = (), title: str = ""
) -> Path:
    """t-SNE of ``features`` coloured by ``labels`` (label -1: grey, unlabelled) written as a PNG to ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xy = tsne_2d(features)
    labels = labels.numpy()
    fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
    cmap = plt.get_cmap("tab10" if labels.max(initial=0) < 10 else "tab20")
    if (labels < 0).any():
        ax.scatter(*xy[labels < 0].T, s=4, c="lightgrey", label="unlabelled")
    for c in np.unique(labels[labels >= 0]):
        name = classes[c] if c < len(classes) else str(c)
        ax.scatter(*xy[labels == c].T, s=4, color=cmap(c % cmap.N), label=name)
    ax.legend(markerscale=3, fontsize=8, loc="best", frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"t-SNE of {len(xy)} val features")
    return save_figure(fig, out)


FIGURE_FORMATS = ("png", "pdf", "svg", "jpg", "jpeg")


def figure_format(out: str | Path) -> str:
    """The image format ``out``'s suffix names; a ConfigError (one line) for any other suffix."""
    fmt = Path(out).suffix[1:].lower()
    if fmt not in FIGURE_FORMATS:
        raise ConfigError(f"--out {out}: a figure is written as {', '.join(FIGURE_FORMATS)}; give --out a name "
                          "ending in one of them, e.g. embedding.png")
    return fmt


def save_figure(fig, out: str | Path) -> Path:
    """Lay out ``fig``, write it to ``out`` (through ``atomic_write``, creating its folder), close it and return
    the path."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=figure_format(out))
    plt.close(fig)
    atomic_write(out, buffer.getbuffer())
    return out


class EmbeddingPlot(L.Callback):
    """After training (and every ``every_n_epochs`` if set) save a t-SNE PNG of the val features, coloured by
    label, as ``embedding-epoch{N}.png`` in the run's folder. Rank 0 only; skipped under ``fast_dev_run``."""

    def __init__(self, every_n_epochs: int | None = None) -> None:
        self.every_n_epochs = every_n_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        due = self.every_n_epochs is not None and epoch % self.every_n_epochs == 0
        data = trainer.datamodule
        if trainer.fast_dev_run or not trainer.is_global_zero or not (last or due) or data is None:
            return
        features, labels = split_features(pl_module.backbone, data, "val", pl_module.device)
        out = Path(trainer.log_dir or ".") / f"embedding-epoch{epoch}.png"
        save_embedding_plot(features, labels, out, data.source.classes, f"t-SNE of val features, epoch {epoch}")
        rank_zero_info(f"embedding plot: {out}")
