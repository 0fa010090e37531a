"""Evaluation follows the data: the eval resize keeps ImageNet's 224/256 margin at any view size (data.eval_crop),
evaluation images take the training views' size, and a ViT is built at the data's view size."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from selfsup.data import SSLDataModule
from selfsup.data.views import MultiCropViews, SimCLRViews
from selfsup.errors import ConfigError
from selfsup.methods import SimCLR, SimMIM


@pytest.fixture
def folder(tmp_path):
    for i in range(4):
        Image.fromarray(np.full((40, 50, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    return f"folder:{tmp_path}"


@pytest.mark.parametrize("size, resize", [(64, 73), (96, 110), (224, 256), (28, 32)])
def test_eval_crop_keeps_the_224_of_256_margin_at_any_size(folder, size, resize):
    view = SSLDataModule(folder, image_size=size, eval_crop=0.875, num_workers=0).eval_transform()
    assert (view.size, view.resize) == (size, resize)


def test_evaluation_takes_the_views_size_and_the_summary_says_both(folder):
    data = SSLDataModule(folder, views=MultiCropViews(sizes=(48, 20)), eval_crop=0.875, num_workers=0)
    assert data.view_size == 48 and (data.eval_transform().size, data.eval_transform().resize) == (48, 55)
    assert data.sizes() == "views 48+20 px, eval 48 of 55 px"
    assert SSLDataModule(folder, views=SimCLRViews(32), num_workers=0).sizes() == "views 32 px, eval 32 of 32 px"


@pytest.mark.parametrize("options, message", [
    ({"eval_crop": 0.875, "eval_resize": 256}, "both set the evaluation resize; keep eval_crop"),
    ({"eval_crop": 1.5}, r"data.eval_crop must be in \(0, 1\]"),
    ({"eval_crop": 0.0}, r"data.eval_crop must be in \(0, 1\]"),
])
def test_eval_crop_mistakes_are_one_line(folder, options, message):
    with pytest.raises(ConfigError, match=message):
        SSLDataModule(folder, image_size=64, **options)


def test_a_fixed_resize_far_above_the_crop_is_warned(folder):
    with pytest.warns(UserWarning, match="evaluation sees only the middle 6% of each image; set data.eval_crop"):
        SSLDataModule(folder, image_size=64, eval_resize=256)


def test_a_vit_is_built_at_the_data_view_size_unless_its_args_say():
    model = SimMIM(backbone="vit_tiny", backbone_args={"patch_size": 8}, image_size=64)
    assert model.backbone.image_size == 64 and model.hparams.backbone_args["image_size"] == 64  # exports rebuild it
    assert SimMIM(backbone="vit_tiny", backbone_args={"image_size": 32}, image_size=64).backbone.image_size == 32
    assert SimCLR(backbone="resnet18", backbone_args={"width": 4}, image_size=64).hparams.backbone_args == {"width": 4}
