"""The streaming reader's edges: the short last batch of a pass, the shuffle buffer, a part that breaks off
inside a member."""

import random
import tarfile
from collections import Counter

from hostile import shard, shard_set
from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream, _shuffled
from selfsup.data.views import DecodedImages


def one_pass(folder, batch_size: int, **kw) -> list[dict]:
    parts = Source(f"shards:{folder}").split("train").parts
    return list(ShardStream(parts, DecodedImages(), batch_size, 1, repeat=False, num_classes=2, **kw))


def pixels(batches: list[dict]) -> list[bytes]:
    return [image.numpy().tobytes() for batch in batches for image in batch["decoded"]]


def test_the_last_batch_of_a_pass_holds_what_is_left(tmp_path):
    batches = one_pass(shard_set(tmp_path, counts=(7, 3)), 4)
    assert [len(b["label"]) for b in batches] == [4, 4, 2]
    assert sorted(label for b in batches for label in b["label"].tolist()) == [0] * 5 + [1] * 5


def test_the_shuffle_buffer_yields_each_item_once_and_none_before_it_is_read():
    out = list(_shuffled(range(100), 10, random.Random(0)))
    assert sorted(out) == list(range(100)) and out != list(range(100))
    assert all(item <= j + 10 for j, item in enumerate(out))  # the j-th item out: read items 0..j+10 only


def test_a_shuffled_pass_reads_every_sample_once_in_another_order(tmp_path):
    folder = shard_set(tmp_path, counts=(12,))
    plain, shuffled = pixels(one_pass(folder, 4)), pixels(one_pass(folder, 4, shuffle_buffer=4))
    assert sorted(shuffled) == sorted(plain) and shuffled != plain


def test_a_part_that_breaks_off_inside_a_member_counts_the_rest_as_skipped(tmp_path, caplog):
    folder = shard_set(tmp_path)  # two parts of 16
    path = shard(folder, 0)
    with tarfile.open(path) as tar:
        sixth = [m for m in tar.getmembers() if m.name.endswith(".png")][5]
    path.write_bytes(path.read_bytes()[: sixth.offset_data + sixth.size // 2])
    batches = one_pass(folder, 1)
    skipped = Counter()
    for batch in batches:
        skipped.update(batch["health"]["skipped"])
    assert len(batches) == 16 + 5 and skipped == {"train-000000.tar": 11}
    assert "skipping the rest of train-000000.tar after 5 of 16 samples: unexpected end of data" in caplog.text
