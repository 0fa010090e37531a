"""Built-in MNIST-5k shards and the streaming reader: counts, exactly-once evaluation, equal epochs."""

import io
import json
import os
import socket
import zlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.data import SSLDataModule
from selfsup.data.limits import Limits
from selfsup.data.manifest import Manifest
from selfsup.data.members import BadSample, decode_image, decode_sample
from selfsup.data.shards import encode_png, write_shard_set
from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream
from selfsup.data.views import EvalView, SimCLRViews
from selfsup.errors import ConfigError


def test_mnist5k_manifest(mnist5k):
    manifest = json.loads((mnist5k / "manifest.json").read_text())
    assert manifest["channels"] == 1 and manifest["classes"] == [str(c) for c in range(10)]
    assert sum(manifest["splits"]["train"]["counts"]) == 4000
    assert sum(manifest["splits"]["val"]["counts"]) == 1000
    assert len(manifest["splits"]["train"]["shards"]) == 8


def read_all(parts, **kw):
    stream = ShardStream(parts, EvalView(28), 100, 1, repeat=False, num_classes=10, **kw)
    batches = list(stream)
    return torch.cat([b["image"] for b in batches]), torch.cat([b["label"] for b in batches])


def test_evaluation_reads_every_image_once(mnist5k):
    split = Source("builtin:mnist5k").split("val")
    images, labels = read_all(split.parts)
    assert images.shape == (1000, 1, 28, 28) and 0 <= images.min() and images.max() <= 1
    assert torch.bincount(labels, minlength=10).min() > 50
    assert len({tuple(im.flatten().tolist()) for im in images}) > 990  # distinct digits, not repeats


def test_ranks_read_disjoint_shards(mnist5k):
    urls = Source("builtin:mnist5k").split("train").parts
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
    decoded = decode_sample(sample, channels, num_classes=10)
    assert torch.equal(decoded["image"], image) and decoded["label"] == 3


def _png(array: np.ndarray, mode: str | None, convert: str | None = None, **save) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    image = Image.fromarray(array, mode)
    (image.convert(convert) if convert else image).save(buffer, "PNG", **save)
    return buffer.getvalue()


def _with_chunk(png: bytes, kind: bytes, body: bytes) -> bytes:
    """``png`` with one more chunk right after its header chunk (signature 8 bytes + IHDR 25)."""
    chunk = len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")
    return png[:33] + chunk + png[33:]


_rng = np.random.default_rng(0)
_GRAY, _RGB = _rng.integers(0, 256, (13, 11), np.uint8), _rng.integers(0, 256, (13, 11, 3), np.uint8)
PNG_KINDS = {  # OpenCV decodes the plain 8-bit ones (channels as wanted), Pillow the rest: the same pixels
    "gray": _png(_GRAY, "L"), "rgb": _png(_RGB, "RGB"),
    "gamma": _with_chunk(_png(_RGB, "RGB"), b"gAMA", (45455).to_bytes(4, "big")),
    "gray-key": _png(_GRAY, "L", transparency=7), "rgb-key": _png(_RGB, "RGB", transparency=(1, 2, 3)),
    "gray-alpha": _png(_RGB, "RGB", "LA"), "rgba": _png(_RGB, "RGB", "RGBA"), "palette": _png(_RGB, "RGB", "P"),
    "gray16": _png(_GRAY.astype(np.uint16) * 257, None),
}
OPENCV_DECODES = {("gray", 1), ("rgb", 3), ("gamma", 3), ("gray-key", 1), ("rgb-key", 3)}


@pytest.mark.parametrize("kind", PNG_KINDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_png_decoders_agree_with_pillow(kind, channels):
    from PIL import Image

    from selfsup.data.members import _plain_png, image_pixels

    data = PNG_KINDS[kind]
    assert (_plain_png(data, channels, Limits()) is not None) == ((kind, channels) in OPENCV_DECODES)
    with Image.open(io.BytesIO(data)) as image:
        expected = torch.from_numpy(image_pixels(image, channels).copy()).permute(2, 0, 1)
    assert torch.equal(decode_image(data, channels), expected)


def test_broken_or_oversized_png_is_a_bad_sample():
    data = PNG_KINDS["gray"]
    with pytest.raises(BadSample, match="unreadable image"):
        decode_image(data[: len(data) // 2], 1)
    with pytest.raises(BadSample, match="pixels is over"):
        decode_image(data, 1, Limits(max_pixels=100))


def test_mnist5k_train_and_val_are_disjoint(mnist5k):
    train, val = (read_all(Source("builtin:mnist5k").split(name).parts)[0] for name in ("train", "val"))
    assert not {im.numpy().tobytes() for im in train} & {im.numpy().tobytes() for im in val}


# ---- 2 DDP ranks x 2 loader workers -------------------------------------------------------------------------

SHARDS, PER_SHARD, BATCH, EPOCHS = 16, 50, 20, 2


def indexed_shards(folder: Path) -> Path:
    """16 shards of 8x8 images whose first two pixels spell the sample's index."""
    def samples():
        for i in range(SHARDS * PER_SHARD):
            image = torch.zeros(1, 8, 8, dtype=torch.uint8)
            image[0, 0, 0], image[0, 0, 1] = i // 256, i % 256
            yield {"__key__": f"s{i:05d}", "png": encode_png(image), "cls": str(i % 10).encode()}

    manifest = Manifest(name="indexed", channels=1, classes=[str(c) for c in range(10)])
    write_shard_set(folder, manifest, {"train": samples()}, maxcount=PER_SHARD, progress=False)
    return folder


def _rank_epochs(rank: int, world: int, port: int, folder: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        data = SSLDataModule(f"shards:{folder}", batch_size=BATCH, num_workers=2, views=EvalView(8))
        data.trainer = SimpleNamespace(global_rank=rank, world_size=world, current_epoch=0, lightning_module=None)
        loader = data.train_dataloader()
        epochs = []
        for epoch in range(EPOCHS):
            data.trainer.current_epoch = epoch  # what the Trainer does between epochs
            indices = []
            for batch in loader:
                pixels = (batch["image"][:, 0, 0, :2] * 255).round().long()
                indices.append((pixels[:, 0] * 256 + pixels[:, 1]).tolist())
            epochs.append(indices)
        gathered = [None] * world
        dist.all_gather_object(gathered, epochs)
        if rank == 0:
            torch.save(gathered, out)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_ranks_two_workers_equal_epochs_disjoint_samples(tmp_path):
    folder = indexed_shards(tmp_path / "indexed")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "epochs.pt"
    mp.start_processes(_rank_epochs, args=(2, port, str(folder), str(out)), nprocs=2, start_method="spawn")
    ranks = torch.load(out)  # [rank][epoch][batch] -> sample indices
    total = SHARDS * PER_SHARD
    for epoch in range(EPOCHS):
        batches = [ranks[r][epoch] for r in range(2)]
        assert len(batches[0]) == len(batches[1]) == total // (BATCH * 2)  # equal epochs on both ranks
        seen = [{i for batch in batches[r] for i in batch} for r in range(2)]
        assert not seen[0] & seen[1]  # node splitting: no sample on two ranks within an epoch
        assert len(seen[0] | seen[1]) >= 0.95 * total
        assert [i for batch in batches[0] for i in batch][:5] != [i for batch in ranks[0][1 - epoch] for i in
                                                                    batch][:5]  # reshuffled each epoch
