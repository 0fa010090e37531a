"""The evaluation transform a backbone expects (size, channels, normalisation): recorded in every checkpoint
of `selfsup fit`, written to ``backbone.json`` by `selfsup export`, rebuilt by ``selfsup.load_backbone``."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torchvision.transforms import v2

from selfsup.data.limits import check_sizes
from selfsup.errors import ConfigError

KEY = "eval_transform"  # where a checkpoint keeps it


def describe(data: Any) -> dict[str, Any] | None:
    """``{"media", "channels", "size", "resize", "mean", "std"}`` of an SSLDataModule's evaluation images (the
    un-augmented view kNN and the probes see); None for other data modules."""
    if not hasattr(data, "eval_transform") or getattr(data, "views", None) is None:
        return None
    view = data.eval_transform()
    frame = getattr(view, "_frame", view)  # a video's clips: each frame as an image
    norm = view.normalization
    return {"media": data.media, "channels": data.num_channels, "size": frame.size, "resize": frame.resize,
            "mean": list(norm[0]) if norm else None, "std": list(norm[1]) if norm else None}


class RecordEvalTransform(Callback):
    """Adds ``describe(datamodule)`` to each checkpoint, so an export can say how to feed its backbone."""

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        found = describe(trainer.datamodule)
        if found is not None:
            checkpoint[KEY] = found


class ChannelsAs(torch.nn.Module):
    """An image tensor (C, H, W) with ``channels`` channels: grey repeated to RGB, or RGB averaged to grey."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        if image.shape[-3] == self.channels:
            return image
        if self.channels == 1:
            return v2.functional.rgb_to_grayscale(image[..., :3, :, :])
        return image[..., :1, :, :].expand(*image.shape[:-3], self.channels, *image.shape[-2:])


def build_transform(spec: dict[str, Any] | None, where: str) -> v2.Compose:
    """The transform of a recorded ``spec``: a PIL image or uint8 tensor -> the float tensor (C, size, size) the
    backbone was evaluated on (resize the short side, centre crop, [0, 1], normalise)."""
    if not spec:
        raise ConfigError(f"{where} records no evaluation transform (written before selfsup recorded one); export "
                          "it again from a checkpoint of a newer `selfsup fit`")
    check_sizes(spec, f"{where}'s evaluation transform")
    steps = [v2.ToImage(), ChannelsAs(spec["channels"]), v2.Resize(spec["resize"], antialias=True),
             v2.CenterCrop(spec["size"]), v2.ToDtype(torch.float32, scale=True)]
    if spec.get("mean") is not None:
        steps.append(v2.Normalize(spec["mean"], spec["std"]))
    return v2.Compose(steps)
