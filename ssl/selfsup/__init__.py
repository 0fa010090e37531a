"""selfsup: self-supervised pretraining for vision on Lightning, webdataset and FAISS."""

from __future__ import annotations

from os import PathLike
from typing import TYPE_CHECKING

from selfsup import moved

if TYPE_CHECKING:
    from torch import nn
    from torchvision.transforms import v2

__version__ = "0.1.0"
moved.install()  # configs saved before the training modules moved into training/ name their old paths


def load_backbone(path: str | PathLike) -> tuple[nn.Module, v2.Compose]:
    """``(backbone, transform)`` of an export of `selfsup export` (``backbone.pt`` + ``backbone.json``) or of a
    ``.ckpt``: the ``nn.Module`` in eval mode (pooled features ``(B, D)``) and the transform of its evaluation
    images (a PIL image or uint8 tensor -> the float tensor ``(C, size, size)`` it expects, normalised as in
    training)::

        backbone, transform = selfsup.load_backbone("backbone.pt")
        features = backbone(transform(PIL.Image.open("photo.jpg")).unsqueeze(0))
    """
    from selfsup.eval.export import load_exported

    return load_exported(path)


def pretrain(path: str | PathLike, method: str = "simclr", **options) -> PathLike:
    """Pretrain ``method`` on a folder of images (or a shard set) with its photo recipe, sized to this machine, as
    ``selfsup pretrain PATH`` does; returns the exported backbone, which ``load_backbone`` reads. ``options``: see
    ``selfsup.pretraining.pretrain`` (name, epochs, shards, device, fit_options)::

        backbone_pt = selfsup.pretrain("photos", method="simclr")
        backbone, transform = selfsup.load_backbone(backbone_pt)
    """
    from selfsup.pretraining import pretrain as run

    return run(path, method, **options)
