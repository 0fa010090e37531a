"""CVRL's clips decoded by seeking (selfsup.data.seek): the frames a full decode gives, fewer frames decoded,
bounded memory, fixed-size clips from the loader workers and the device split."""

from __future__ import annotations

import io
import random
import tracemalloc

import numpy as np
import pytest
import torch

from hostile import cut_after, h264
from selfsup.data.clips import ClipSpec, ClipViews, clip_indices, interval_starts
from selfsup.data.manifest import Manifest
from selfsup.data.members import decode_video, frame_pixels
from selfsup.data.module import SSLDataModule
from selfsup.data.seek import FrameIndex, decode_clip_crops, decode_frames, wanted_frames
from selfsup.data.shards import write_shard_set
from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream

av = pytest.importorskip("av")

VFR_MS = [20 + (37 * i) % 60 for i in range(60)]  # 20 .. 79 ms per frame
VIDEOS = {
    "B-frames": lambda tmp: h264(),
    "no frame count in the header (Matroska)": lambda tmp: h264(fmt="matroska"),
    "variable frame rate": lambda tmp: h264(frame_ms=VFR_MS),
    "variable frame rate, Matroska": lambda tmp: h264(fmt="matroska", frame_ms=VFR_MS),
    "header count lies (cut after 41 frames)": lambda tmp: cut_after(h264(faststart=True, tmp=tmp), 41),
}


class Counting:
    """A container that counts the frames it decodes."""

    def __init__(self, container):
        self.container, self.decoded = container, 0

    def seek(self, *args, **kwargs):
        self.container.seek(*args, **kwargs)

    def decode(self, stream):
        for frame in self.container.decode(stream):
            self.decoded += 1
            yield frame


def full_decode(data: bytes) -> np.ndarray:
    return decode_video(data, 3).permute(0, 2, 3, 1).numpy()  # (T, H, W, C)


@pytest.mark.parametrize("name", VIDEOS)
def test_seeking_gives_the_frames_of_a_full_decode(name, tmp_path):
    data = VIDEOS[name](tmp_path)
    reference = full_decode(data)
    rng = random.Random(0)
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        index = FrameIndex.of(container, stream)
        assert index.count == len(reference) and len(index.keyframes) == -(-len(reference) // 10)
        for _ in range(10):
            wanted = sorted(rng.sample(range(len(reference)), 6))
            got = list(wanted_frames(container, stream, index, wanted))
            assert [i for i, _ in got] == wanted
            for i, frame in got:
                np.testing.assert_array_equal(frame_pixels(frame, 3), reference[i])
        unstamped = FrameIndex(None, index.count, [])  # packets without timestamps: decoded from the start
        wanted = sorted(rng.sample(range(len(reference)), 6))
        got = list(wanted_frames(container, stream, unstamped, wanted))
        assert [i for i, _ in got] == wanted
        for i, frame in got:
            np.testing.assert_array_equal(frame_pixels(frame, 3), reference[i])
        counting = Counting(container)  # two frames of the last GOP: decoded from its keyframe, not from 0
        last_key = (len(reference) - 2) // 10 * 10
        wanted = [last_key + 1, len(reference) - 1]
        assert [i for i, _ in wanted_frames(counting, stream, index, wanted)] == wanted
        assert counting.decoded <= len(reference) - last_key + 3  # + the decoder's reordering delay


def test_b_frames_and_a_lying_header_are_really_there(tmp_path):
    with av.open(io.BytesIO(h264())) as container:
        assert av.video.frame.PictureType.B in {frame.pict_type for frame in container.decode(video=0)}
    cut = VIDEOS["header count lies (cut after 41 frames)"](tmp_path)
    with av.open(io.BytesIO(cut)) as container:
        assert container.streams.video[0].frames == 60 and len(full_decode(cut)) == 41


def whole_frames(frames: int, stride: int, side: int = 32) -> list[ClipSpec]:
    """Two clips whose crop is the whole (square) frame at its own size: the crops are the frames."""
    return [ClipSpec(side, frames, stride, (1.0, 1.0), (1.0, 1.0))] * 2


@pytest.mark.parametrize("frames", [60, 5])  # 5: shorter than one clip, its frames loop
def test_clips_by_seeking_are_the_frames_of_a_full_decode_at_their_indices(frames):
    data = h264(frames)
    reference = full_decode(data)
    for seed in range(5):
        clips = decode_clip_crops(data, 3, whole_frames(8, 3), random.Random(seed))
        starts = interval_starts(frames, 8, 3, random.Random(seed))  # the same draw
        for start, clip in zip(starts, clips.views):
            np.testing.assert_array_equal(clip, reference[clip_indices(start, 8, 3, frames)])
    wanted = [7, 3, 3, 59, 0, 64]  # any order, repeats, past the end (modulo the count)
    np.testing.assert_array_equal(decode_frames(data, 3, wanted), reference[[i % frames for i in wanted]])


def test_a_worker_holds_the_clips_not_the_video():
    data = h264(250, 96, 96)
    spec = [ClipSpec(32, 8, 2, (0.3, 1.0), (0.5, 2.0))] * 2
    peaks = []
    for decode in (lambda: decode_video(data, 3), lambda: decode_clip_crops(data, 3, spec, random.Random(0))):
        tracemalloc.start()
        decode()
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[0] > 250 * 96 * 96 * 3  # the whole decoded video
    assert peaks[1] < 20 * 96 * 96 * 3  # a few frames and two 8-frame clips of 32 px


def test_decode_threads_give_the_same_clips():
    data = h264(60)
    one, four = (decode_clip_crops(data, 3, [ClipSpec(16, 8, 2, (0.3, 1.0), (0.5, 2.0), 0.5, threads)] * 2,
                                   random.Random(1)) for threads in (1, 4))
    for a, b in zip(one.views, four.views):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("threads", [1, 3])
def test_videos_decode_with_the_threads_asked_for_not_ffmpegs_one_per_core(threads):
    from selfsup.data.seek import opened

    with opened(h264(10), threads=threads) as (_, stream, _index):
        assert stream.codec_context.thread_count == threads  # FFmpeg's default is 0: a thread per core
    counts = []

    class Recording:  # a container that notes the thread count its stream decodes with
        def __init__(self, container):
            self.container = container
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            return self.container.__exit__(*exc)
        def __getattr__(self, name):
            return getattr(self.container, name)
        def decode(self, stream):
            counts.append(stream.codec_context.thread_count)
            return self.container.decode(stream)

    real_open = av.open
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(av, "open", lambda *args, **kwargs: Recording(real_open(*args, **kwargs)))
        decode_video(h264(10), 3, threads=threads)
    assert counts == [threads]


def video_shards(root, sizes=((32, 32), (48, 24), (40, 40))):
    samples = [{"__key__": f"v{i}", "mp4": h264(30 + 7 * i, w, h), "cls": b"0"} for i, (w, h) in enumerate(sizes)]
    write_shard_set(root, Manifest("v", 3, ["a"], media="video"), {"train": samples}, progress=False)
    return Source(f"shards:{root}")


def test_clips_of_videos_of_different_sizes_batch_without_decoding_whole_videos(tmp_path, monkeypatch):
    source = video_shards(tmp_path / "v")
    monkeypatch.setattr("selfsup.data.stream.decode_sample", lambda *a, **k: pytest.fail("decoded a whole video"))
    views = ClipViews(size=24, frames=4, stride=2, blur_p=(0.5, 0.5), solarize_p=(0.0, 0.5), mean=(0.5,) * 3,
                      std=(0.25,) * 3)
    stream = ShardStream(source.split("train").parts, views, 3, 3, repeat=False, num_classes=1, media="video")
    [batch] = list(stream)
    assert batch["health"]["seen"] == 3 and not batch["health"]["skipped"]
    for clip in batch["views"]:
        assert clip.shape == (3, 3, 4, 24, 24) and clip.dtype == torch.float32
        assert -2.001 <= clip.min() < -0.5 and clip.max() <= 2.001  # normalised: (x - 0.5) / 0.25


def test_the_device_split_finishes_clips_after_the_transfer(tmp_path):
    views = ClipViews(size=24, frames=4, stride=2, grayscale_p=0.0, jitter_p=0.0, blur_p=(0.0, 0.0),
                      solarize_p=(0.0, 0.0))
    video_shards(tmp_path / "v")
    data = SSLDataModule(f"shards:{tmp_path / 'v'}", batch_size=3, num_workers=0, views=views, augment_on="device")
    batch = next(iter(data.train_dataloader()))
    crops = batch["crops"]["views"]
    assert [c.shape for c in crops] == [(3, 4, 24, 24, 3)] * 2 and crops[0].dtype == torch.uint8
    out = data.on_after_batch_transfer(batch, 0)
    for clip, crop in zip(out["views"], crops):
        assert clip.shape == (3, 3, 4, 24, 24)
        torch.testing.assert_close(clip, crop.permute(0, 4, 1, 2, 3).float() / 255)  # no colour drawn: the crops


def test_a_video_over_the_pixel_cap_is_refused_from_its_packets():
    from selfsup.data.limits import Limits
    from selfsup.data.members import BadSample

    spec = [ClipSpec(8, 2, 1, (0.3, 1.0), (0.5, 2.0))] * 2
    assert decode_clip_crops(h264(20, 16, 16), 3, spec, random.Random(0), Limits(max_video_pixels=20 * 256))
    with pytest.raises(BadSample, match="video of over 19 frames of 16x16 is over the cap of 5,119"):
        decode_clip_crops(h264(20, 16, 16), 3, spec, random.Random(0), Limits(max_video_pixels=20 * 256 - 1))
