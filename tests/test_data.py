"""Built-in MNIST-5k shards and the streaming reader: counts, exactly-once evaluation, equal epochs."""

import json

import pytest
import torch

from selfsup.data import SSLDataModule
from selfsup.data.shards import ShardStream, decode_sample, encode_png
from selfsup.data.sources import Source
from selfsup.data.views import EvalView, SimCLRViews
from selfsup.errors import ConfigError


def test_mnist5k_manifest(mnist5k):
    manifest = json.loads((mnist5k / "manifest.json").read_text())
    assert manifest["channels"] == 1 and manifest["classes"] == [str(c) for c in range(10)]
    assert sum(manifest["splits"]["train"]["counts"]) == 4000
    assert sum(manifest["splits"]["val"]["counts"]) == 1000
    assert len(manifest["splits"]["train"]["shards"]) == 8


def read_all(urls, **kw):
    stream = ShardStream(urls, EvalView(28), 100, 1, repeat=False, **kw)
    batches = list(stream)
    return torch.cat([b["image"] for b in batches]), torch.cat([b["label"] for b in batches])


def test_evaluation_reads_every_image_once(mnist5k):
    split = Source("builtin:mnist5k").split("val")
    images, labels = read_all(split.urls)
    assert images.shape == (1000, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert torch.bincount(labels, minlength=10).min() > 50
    assert len({tuple(im.flatten().tolist()) for im in images}) > 990  # distinct digits, not repeats


def test_ranks_read_disjoint_shards(mnist5k):
    urls = Source("builtin:mnist5k").split("train").urls
    parts = [read_all(urls, rank=r, world_size=2)[0] for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 2000
    first = {tuple(im.flatten().tolist()) for im in parts[0]}
    assert not first & {tuple(im.flatten().tolist()) for im in parts[1]}


def test_training_epochs_have_fixed_length_and_views(mnist5k):
    data = SSLDataModule("builtin:mnist5k", batch_size=64, num_workers=0,
                         views=SimCLRViews(28, scale=(0.3, 1), flip_p=0, blur_p=0))
    data.setup("fit")
    loader = data.train_dataloader()
    assert len(loader) == 4000 // 64
    for _ in range(2):  # the stream repeats: both epochs have the full length
        batches = list(loader)
        assert len(batches) == 62
    view1, view2 = batches[0]["views"]
    assert view1.shape == view2.shape == (64, 1, 28, 28) and not torch.equal(view1, view2)


def test_training_order_is_reproducible(mnist5k):
    def first_labels():
        torch.manual_seed(0)
        data = SSLDataModule("builtin:mnist5k", batch_size=32, num_workers=0, views=SimCLRViews(28))
        return next(iter(data.train_dataloader()))["label"]

    assert torch.equal(first_labels(), first_labels())


@pytest.mark.parametrize("source, message", [
    ("mnist5k", "not understood"),
    ("builtin:cifar", "unknown built-in data set 'cifar'.*mnist5k"),
    ("shards:/no/such/folder", "does not exist"),
])
def test_bad_sources_are_named(source, message):
    with pytest.raises(ConfigError, match=message):
        SSLDataModule(source)


def test_batch_larger_than_the_data_is_named(mnist5k):
    data = SSLDataModule("builtin:mnist5k", batch_size=5000, views=SimCLRViews(28))
    with pytest.raises(ConfigError, match="larger than the 4000 training samples"):
        data.train_dataloader()


@pytest.mark.parametrize("channels", [1, 3])
def test_png_round_trip_is_pixel_exact(channels):
    image = torch.randint(0, 256, (channels, 9, 7), dtype=torch.uint8)
    sample = {"__key__": "x", "png": encode_png(image), "cls": b"3", "pyd": b"not unpickled"}
    decoded = decode_sample(sample, channels)
    assert torch.equal(decoded["image"], image) and decoded["label"] == 3
