"""KNNMonitor: weighted kNN top-1 of the backbone during pretraining, and against its random init."""

from __future__ import annotations

import lightning as L
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn

from selfsup.eval.features import split_features
from selfsup.eval.knn import knn_accuracy


class KNNMonitor(L.Callback):
    """Every ``every_n_epochs`` (and after the last epoch) embed the un-augmented train (bank) and val
    (queries) images and log ``knn/top1`` and ``knn/top5``. With ``baseline=True`` it also measures the
    backbone before training starts and prints both at the end. Runs on rank 0 only, and not at all under
    ``fast_dev_run`` (a smoke test should not embed the whole data set).
    """

    def __init__(self, every_n_epochs: int = 1, k: int = 20, temperature: float = 0.07, baseline: bool = True):
        self.every_n_epochs, self.k, self.temperature, self.baseline = every_n_epochs, k, temperature, baseline
        self.results: dict[str, dict[str, float]] = {}
        self._said = False  # the reason it cannot measure is given once

    def _unable(self, trainer: L.Trainer) -> str | None:
        """Why the monitor cannot measure on this run's data (None: it can)."""
        data = trainer.datamodule
        if not hasattr(data, "eval_dataloader"):
            return f"the data module {type(data).__name__} has no un-augmented evaluation images"
        if getattr(data, "num_classes", 0) == 0:
            return (f"data source {data.source.spec!r} has no classes; give a labelled source (class folders) or "
                    "drop the KNNMonitor callback")
        if not data.source.has_split("val"):
            return (f"data source {data.source.spec!r} has no val split; write one (selfsup shards write "
                    "--val-fraction 0.1) or drop the KNNMonitor callback")
        return None

    def _measure(self, trainer: L.Trainer, module: L.LightningModule) -> dict[str, float] | None:
        data = trainer.datamodule
        if trainer.fast_dev_run:
            return None
        unable = self._unable(trainer)
        if unable is not None:
            if not self._said:
                rank_zero_warn(f"KNNMonitor does nothing in this run: {unable}")
                self._said = True
            return None
        bank, bank_labels = split_features(module.backbone, data, "train", module.device)
        queries, query_labels = split_features(module.backbone, data, "val", module.device)
        return knn_accuracy(bank, bank_labels, queries, query_labels, self.k, self.temperature, data.num_classes)

    def _log(self, trainer: L.Trainer, result: dict[str, float]) -> None:
        for logger in trainer.loggers:
            logger.log_metrics({f"knn/{name}": value for name, value in result.items()}, step=trainer.global_step)

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        resuming = trainer.ckpt_path is not None  # the backbone is no longer at its initialisation
        if self.baseline and trainer.is_global_zero and not resuming and "init" not in self.results:
            result = self._measure(trainer, pl_module)
            if result is not None:
                self.results["init"] = result
                self._log(trainer, result)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        epoch = trainer.current_epoch + 1
        last = trainer.max_epochs is not None and epoch >= trainer.max_epochs
        if not trainer.is_global_zero or trainer.sanity_checking or not (last or epoch % self.every_n_epochs == 0):
            return
        result = self._measure(trainer, pl_module)
        if result is not None:
            self.results["trained"] = result
            self._log(trainer, result)
            pl_module.print(f"epoch {epoch}: kNN top-1 {result['top1']:.4f} (k={self.k}, T={self.temperature})")

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or "trained" not in self.results:
            return
        rank_zero_info(knn_table(f"kNN on val (k={self.k}, T={self.temperature}, bank: train)",
                                 {label: self.results[name] for name, label in
                                  (("init", "random-init backbone"), ("trained", "pretrained backbone"))
                                  if name in self.results}))


def knn_table(title: str, rows: dict[str, dict]) -> str:
    """``title`` over one row per backbone, the top-1 and top-5 columns under their headers."""
    width = max(len(title), *(2 + len(label) for label in rows))
    lines = [f"{title:<{width}}  {'top-1':>6}  {'top-5':>6}"]
    lines += [f"{'  ' + label:<{width}}  {r['top1']:>6.4f}  {r['top5']:>6.4f}" for label, r in rows.items()]
    return "\n".join(lines)
