"""Hostile and broken data through the real commands. Each row of a table is a maker (writes the bad input into a
fresh folder and returns the path to give), the command, and what must come back: the exit code and fragments of
its one-line message or summary, never a traceback. The next bad input is one more row."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import signal
import struct
import subprocess
import sys
import tarfile
import time
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from clirun import selfsup
from selfsup.data.manifest import MANIFEST, Manifest
from selfsup.data.members import BadSample, decode_video
from selfsup.data.shards import encode_png, encode_video, write_shard_set
from selfsup.data.sources import Source
from selfsup.data.stream import ShardStream
from selfsup.data.views import DecodedImages
from selfsup.errors import DataError

SIZE = 10  # image side


def cli(*args: str, capsys: pytest.CaptureFixture) -> tuple[int, str]:
    """The exit code and the printed output (stdout then stderr) of ``selfsup ARGS``, run in this process by the
    function the console script calls (no interpreter start: these rows take well under a second)."""
    from selfsup.cli import main

    try:
        main(list(args))
        code = 0
    except SystemExit as exit:
        code = exit.code
    out = capsys.readouterr()
    return code, out.out + out.err


def png(seed: int, size: int = SIZE) -> bytes:
    return encode_png(torch.randint(0, 256, (1, size, size), dtype=torch.uint8,
                                    generator=torch.Generator().manual_seed(seed)))


def shard_set(root: Path, counts: tuple[int, ...] = (16, 16), extra: dict | None = None) -> Path:
    """A labelled 1-channel shard set of 10x10 PNGs with one shard per count; ``extra`` members join sample 0."""
    def samples():
        for i in range(sum(counts)):
            yield {"__key__": f"s{i:04d}", "png": png(i), "cls": str(i % 2).encode(), **(extra or {} if i == 0 else {})}

    manifest = Manifest(name="hostile", channels=1, classes=["a", "b"])
    write_shard_set(root, manifest, {"train": samples()}, progress=False, maxcount=counts[0])
    return root


def shard(folder: Path, index: int = 0) -> Path:
    return sorted(folder.glob("train-*.tar"))[index]


def compressed(compress: Callable[[bytes], bytes]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        folder = shard_set(tmp / "set")
        shard(folder).write_bytes(compress(shard(folder).read_bytes()))
        return folder
    return make


def huge_png_header(width: int, height: int) -> bytes:
    """A PNG whose header says width x height but whose data is a few bytes (a bomb's header, without the bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(64))) + chunk(b"IEND", b""))


def npy_header_only(shape: tuple[int, ...]) -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f8", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(80)


def with_manifest(text: str) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        folder = shard_set(tmp / "set")
        (folder / MANIFEST).write_text(text)
        return folder
    return make


def manifest_edit(change: Callable[[dict], None]) -> Callable[[Path], Path]:
    def make(tmp: Path) -> Path:
        folder = shard_set(tmp / "set")
        raw = json.loads((folder / MANIFEST).read_text())
        change(raw)
        (folder / MANIFEST).write_text(json.dumps(raw))
        return folder
    return make


# ---- shards inspect: (maker, environment, exit code, fragments) ---------------------------------------------

INSPECT = {
    "xz-compressed shard (H2)": (compressed(lzma.compress), {}, 1, ["xz-compressed", "plain .tar"]),
    "gzip-compressed shard (H2)": (compressed(gzip.compress), {}, 1, ["gzip-compressed"]),
    "member over the byte cap (H5)": (lambda tmp: shard_set(tmp / "set"), {"SELFSUP_MAX_MEMBER_BYTES": "20"}, 1,
                                      ["bytes is over the cap of 20", "SELFSUP_MAX_MEMBER_BYTES"]),
    "13000x13000 PNG header (H3)": (lambda tmp: shard_set(tmp / "set", extra={"png": huge_png_header(13000, 13000)}),
                                    {}, 1, ["13000x13000 = 169,000,000 pixels is over the cap of 64,000,000"]),
    "deeply nested json member": (lambda tmp: shard_set(tmp / "set", extra={"json": b"[" * 200_000 + b"]" * 200_000}),
                                  {}, 1, ["json member nested too deeply"]),
    "npy header declaring 8 TB": (lambda tmp: shard_set(tmp / "set", extra={"npy": npy_header_only((10**12,))}), {},
                                  1, ["declares 8,000,000,000,000 bytes"]),
    "manifest.json is not JSON": (with_manifest("{"), {}, 2, ["is not a valid selfsup manifest (JSONDecodeError"]),
    "manifest.json is a list": (with_manifest("[]"), {}, 2, ["is not a valid selfsup manifest (a JSON list"]),
    "manifest split without counts": (manifest_edit(lambda m: m["splits"]["train"].pop("counts")), {}, 2,
                                      ["split 'train' needs 'shards' (file names) and 'counts'"]),
    "manifest with a string count": (manifest_edit(lambda m: m["splits"]["train"].update(counts=["16", 16])), {},
                                     2, ["split 'train' needs"]),
    "brace pattern typo (H5)": (lambda tmp: shard_set(tmp / "set") / "train-{000000..99999999}.tar", {}, 2,
                                ["names 100,000,000 files, over the cap of 100,000", "SELFSUP_MAX_PATTERN_NAMES"]),
    "unbalanced brace pattern": (lambda tmp: shard_set(tmp / "set") / "train-{000000..000001.tar", {}, 2,
                                 ["is malformed"]),
}


@pytest.mark.parametrize("name", INSPECT)
def test_inspect_hostile_shards(name, tmp_path, monkeypatch, capsys):
    make, env, code, fragments = INSPECT[name]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    got, out = cli("shards", "inspect", str(make(tmp_path)), "--quiet", capsys=capsys)
    assert got == code, out[-3000:]
    for fragment in fragments:
        assert fragment in out, out[-3000:]


# ---- shards write: (maker of a photo folder, environment, fragments of the summary) -----------------------------

def photos(root: Path, per_class: int = 3, size: int = SIZE) -> Path:
    for c, name in enumerate(("cat", "dog")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            (root / name / f"{i}.png").write_bytes(png(10 * c + i, size))
    return root


def broken_files(tmp: Path) -> Path:
    root = photos(tmp / "pics")
    (root / "cat/notes.txt").write_text("not a picture")
    jpeg = io.BytesIO()
    Image.new("RGB", (SIZE, SIZE), "red").save(jpeg, format="JPEG")
    (root / "dog/broken.jpg").write_bytes(jpeg.getvalue()[:40])
    return root


def unreadable_file(tmp: Path) -> Path:
    root = photos(tmp / "pics")
    (root / "cat/mem.png").symlink_to("/proc/self/mem")  # a regular file that no one can read from offset 0
    return root


def unreadable_folder(tmp: Path) -> Path:
    root = photos(tmp / "pics")
    (root / "dog/private").mkdir()
    (root / "dog/private/0.png").write_bytes(png(99))
    (root / "dog/private").chmod(0)
    return root


def big_image(tmp: Path) -> Path:
    root = photos(tmp / "pics")
    (root / "cat/big.png").write_bytes(png(50, size=3 * SIZE))
    return root


WRITE = {
    "corrupt JPEG and a text file (D10, issue 23.5)": (broken_files, {}, [
        "train: 6 samples", "passed over 2 file(s)", "notes.txt: not an image or video",
        "broken.jpg: unreadable image"]),
    "a file that cannot be read (D10)": (unreadable_file, {}, ["train: 6 samples", "mem.png: cannot read it"]),
    "an image over the pixel cap (H3)": (big_image, {"SELFSUP_MAX_PIXELS": "200"}, [
        "train: 6 samples", "big.png: image of 30x30 = 900 pixels is over the cap of 200"]),
    "a folder that cannot be read (D10)": (unreadable_folder, {}, ["train: 6 samples", "cannot read the folder"]),
}


ROOT_READS_ALL = pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder, whatever its permissions")


@pytest.mark.parametrize("name", [pytest.param(n, marks=[ROOT_READS_ALL] * (WRITE[n][0] is unreadable_folder))
                                  for n in WRITE])
def test_write_lists_what_it_passes_over(name, tmp_path, monkeypatch, capsys):
    make, env, fragments = WRITE[name]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, out = cli("shards", "write", "--from", str(make(tmp_path)), "--out", str(tmp_path / "out"), "--quiet",
                    capsys=capsys)
    assert code == 0, out
    for fragment in fragments:
        assert fragment in out, out


def test_write_lists_a_folder_it_cannot_list_even_as_root(tmp_path, monkeypatch, capsys):
    """The unreadable-folder row above, for root too: listing the folder fails as it does without permission."""
    root = photos(tmp_path / "pics")
    (root / "dog/private").mkdir()
    (root / "dog/private/0.png").write_bytes(png(99))
    real = os.scandir

    def scandir(path=".", *args):
        if Path(path) == root / "dog/private":
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args)

    monkeypatch.setattr(os, "scandir", scandir)
    code, out = cli("shards", "write", "--from", str(root), "--out", str(tmp_path / "out"), "--quiet", capsys=capsys)
    assert code == 0 and "train: 6 samples" in out, out
    assert f"{root / 'dog/private'}: cannot read the folder (Permission denied)" in out, out


def test_write_of_a_folder_with_no_usable_image_writes_nothing(tmp_path, capsys):
    (tmp_path / "pics/cat").mkdir(parents=True)
    (tmp_path / "pics/cat/0.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    code, out = cli("shards", "write", "--from", str(tmp_path / "pics"), "--out", str(tmp_path / "out"), "--quiet",
                    capsys=capsys)
    assert code == 2 and "0.jpg: unreadable image" in out, out
    assert "no usable sample for the train split" in out.splitlines()[-1] and not (tmp_path / "out").exists()


# ---- shards write: where it writes (out maker, exit code, fragments) ------------------------------------------

@pytest.fixture
def tmpfs(tmp_path: Path):
    """``tmpfs(options)``: a fresh tmpfs mounted under tmp_path (a small or read-only disk); skips without root."""
    mounted: list[Path] = []

    def mount(options: str) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True
                          ).returncode:
            pytest.skip("cannot mount a tmpfs here (needs root)")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "--lazy", str(point)], check=True)  # lazy: a failed write's file may be open


OUT = {
    "--out on a full disk": (lambda tmp, tmpfs: tmpfs("size=64k") / "out", [
        "writing the shard set", "failed (No space left on device); nothing was kept: free disk space"]),
    "--out on a read-only disk": (lambda tmp, tmpfs: tmpfs("ro,size=64k") / "out", [
        "cannot write a shard set to", "(Read-only file system); choose another folder"]),
    "--out below a file": (lambda tmp, tmpfs: (tmp / "file").write_text("x") and tmp / "file/out", [
        "cannot write a shard set to", "choose another folder"]),
}


@pytest.mark.parametrize("name", OUT)
def test_write_where_it_cannot_is_one_line_and_keeps_nothing(name, tmp_path, tmpfs, capsys):
    make, fragments = OUT[name]
    out = make(tmp_path, tmpfs)
    code, printed = cli("shards", "write", "--from", str(photos(tmp_path / "pics", per_class=20, size=40)), "--out",
                        str(out), "--quiet", capsys=capsys)
    assert code == 2, printed
    for fragment in fragments:
        assert fragment in printed, printed
    assert not out.exists() or not any(out.iterdir())
    assert not list(out.parent.glob(f".{out.name}-*")) if out.parent.is_dir() else True


def test_write_is_readable_by_others_as_the_umask_allows(tmp_path, capsys):
    old = os.umask(0o022)
    try:
        code, printed = cli("shards", "write", "--from", str(photos(tmp_path / "pics")), "--out",
                            str(tmp_path / "out"), "--quiet", capsys=capsys)
    finally:
        os.umask(old)
    assert code == 0, printed
    assert (tmp_path / "out").stat().st_mode & 0o777 == 0o755
    assert {p.stat().st_mode & 0o777 for p in (tmp_path / "out").iterdir()} == {0o644}


def test_write_removes_the_temporary_folder_of_a_killed_write(tmp_path, capsys, caplog):
    gone = subprocess.Popen(["true"])
    gone.wait()
    temps = {name: tmp_path / f".out-{suffix}" for name, suffix in
             (("killed", "0badc0de"), ("old", "00000001"), ("live", "1111aaaa"))}
    for path in temps.values():
        path.mkdir()
        (path / "train-000000.tar").write_bytes(b"half a shard")
    (temps["killed"] / ".writer").write_text(f"{os.uname().nodename} {gone.pid}\n")
    (temps["live"] / ".writer").write_text(f"{os.uname().nodename} {os.getpid()}\n")  # a write still going on
    os.utime(temps["old"], (0, 0))  # an old temp folder without a writer note (an older selfsup's)
    code, printed = cli("shards", "write", "--from", str(photos(tmp_path / "pics")), "--out", str(tmp_path / "out"),
                        "--quiet", capsys=capsys)
    assert code == 0, printed
    assert not temps["killed"].exists() and not temps["old"].exists() and temps["live"].exists()
    said = caplog.text
    assert f"removed {temps['killed']}, the temporary folder of an interrupted write" in said, said


def test_val_split_is_stratified_by_class(tmp_path, capsys):
    root = tmp_path / "pics"
    for c, name in enumerate(("a", "b", "c")):
        (root / name).mkdir(parents=True)
        for i in range(10):
            (root / name / f"{i}.png").write_bytes(png(10 * c + i))
    code, printed = cli("shards", "write", "--from", str(root), "--out", str(tmp_path / "out"), "--val-fraction",
                        "0.2", "--quiet", capsys=capsys)
    assert code == 0, printed
    val = [int(s["cls"]) for part in Source(f"shards:{tmp_path / 'out'}").split("val").parts for s in part.samples()]
    assert Counter(val) == {0: 2, 1: 2, 2: 2}


# ---- decoding: 16-bit and float images (D9), videos over the cap (H4) -------------------------------------------

def read_all(source: str, split: str = "train", **kw) -> tuple[list[torch.Tensor], dict]:
    """Every decoded image (uint8, as the stream decodes it) of a split, once, and the summed health counts."""
    src = Source(source)
    stream = ShardStream(src.split(split).parts, DecodedImages(), 1, src.channels, repeat=False,
                         num_classes=len(src.classes), media=src.media, **kw)
    images, skipped, seen = [], Counter(), 0
    for batch in stream:
        images += list(batch["decoded"])
        skipped.update(batch["health"]["skipped"])
        seen += batch["health"]["seen"]
    return images, {"skipped": skipped, "seen": seen}


def test_16_bit_and_float_images_are_scaled_not_clipped(tmp_path, capsys):
    (tmp_path / "pics").mkdir()
    ramp = np.arange(256).reshape(16, 16)
    Image.fromarray((ramp * 257).astype(np.uint16)).save(tmp_path / "pics/depth16.png")
    Image.fromarray((ramp / 255).astype(np.float32)).save(tmp_path / "pics/float.tif")
    code, printed = cli("shards", "write", "--from", str(tmp_path / "pics"), "--out", str(tmp_path / "out"),
                        "--quiet", capsys=capsys)
    assert code == 0 and "train: 2 samples" in printed and "1 channel(s)" in printed, printed
    images, _ = read_all(f"shards:{tmp_path / 'out'}")
    for image in images:  # the ramp comes back whole: 256 levels from 0 to 255, in order
        assert torch.equal(image.flatten().sort().values, torch.arange(256, dtype=torch.uint8))


def mkv(frames: int, side: int = 16) -> bytes:
    """A Matroska video: its metadata holds no frame count, so only decoding can tell its length."""
    import av

    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="matroska") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height, stream.pix_fmt = side, side, "yuvj420p"
        for _ in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.zeros((side, side), np.uint8), format="gray")))
        container.mux(stream.encode())
    return buffer.getvalue()


def test_a_video_over_the_pixel_cap_is_skipped_and_counted(tmp_path, monkeypatch, caplog):
    def samples():  # 16x16 frames: 512, 5120, (unknown until decoded) 5120 and 512 pixels
        for i, frames in enumerate((2, 20, 2)):
            if i == 2:
                yield {"__key__": "long-mkv", "mkv": mkv(20)}
            yield {"__key__": f"v{i}", "mp4": encode_video(torch.zeros(frames, 1, 16, 16, dtype=torch.uint8))}

    write_shard_set(tmp_path / "v", Manifest("v", 1, media="video"), {"train": samples()}, progress=False)
    monkeypatch.setenv("SELFSUP_MAX_VIDEO_PIXELS", "2000")
    videos, health = read_all(f"shards:{tmp_path / 'v'}")
    assert [v.shape[0] for v in videos] == [2, 2] and health["skipped"] == {"train-000000.tar": 2}
    assert "video of 20 frames of 16x16 is over the cap of 2,000 (raise it with SELFSUP_MAX_VIDEO_PIXELS)" in (
        caplog.text)  # from the metadata, before decoding
    with pytest.raises(BadSample, match="video decoded past 7 frames of 16x16, over the cap of 2,000"):
        decode_video(mkv(20), 1)  # no frame count: decoding stops at the cap


# ---- reading: parts that end early (D8) or yield nothing (H1) -----------------------------------------------

def cut_at_member_boundary(folder: Path, keep: int = 8) -> Path:
    """The first shard cut after its ``keep``-th sample, exactly at a member boundary (no end-of-archive)."""
    path = shard(folder, 0)
    with tarfile.open(path) as tar:
        last = [m for m in tar.getmembers() if m.name.endswith(".png")][keep - 1]
    with open(path, "r+b") as f:
        f.truncate(last.offset_data + -(-last.size // 512) * 512)
    return folder


def zero_filled(folder: Path) -> Path:
    """The first shard overwritten by zeros, its size kept (what a crash can leave on some filesystems)."""
    path = shard(folder, 0)
    path.write_bytes(bytes(path.stat().st_size))
    return folder


SHORT = {"cut at a member boundary": (cut_at_member_boundary, 8), "zero-filled": (zero_filled, 16)}


@pytest.mark.parametrize("name", SHORT)
def test_a_part_that_ends_early_counts_its_missing_samples(name, tmp_path, caplog):
    make, lost = SHORT[name]
    images, health = read_all(f"shards:{make(shard_set(tmp_path / 'set'))}")
    assert len(images) == 32 - lost and health["seen"] == 32 and health["skipped"] == {"train-000000.tar": lost}
    assert f"skipping the rest of train-000000.tar after {16 - lost} of 16 samples: it ends early" in caplog.text


def empty_shards(folder: Path) -> Path:
    for path in folder.glob("train-*.tar"):
        path.write_bytes(b"")
    return folder


def missing_shards(folder: Path) -> Path:
    for path in folder.glob("train-*.tar"):
        path.unlink()
    return folder


def dev_zero(folder: Path) -> Path:
    raw = json.loads((folder / MANIFEST).read_text())
    raw["splits"]["train"]["shards"] = ["/dev/zero", "/dev/zero"]
    (folder / MANIFEST).write_text(json.dumps(raw))
    return folder


NOTHING = {"0-byte shards": empty_shards, "missing shard files": missing_shards,
           "a manifest pointing at /dev/zero": dev_zero}


@pytest.mark.parametrize("name", NOTHING)
def test_training_parts_that_yield_nothing_stop_the_stream(name, tmp_path):
    src = Source(f"shards:{NOTHING[name](shard_set(tmp_path / 'set'))}")
    stream = ShardStream(src.split("train").parts, DecodedImages(), 8, 1, repeat=True, num_classes=2)
    with pytest.raises(DataError, match="none of the 2 training part.* holds a usable sample"):
        next(iter(stream))


FIT = ["fit", "--model", "SimCLR", "--model.backbone", "resnet18", "--model.backbone_args",
       "{width: 4, cifar_stem: true}", "--data.image_size", str(SIZE), "--data.batch_size", "8",
       "--data.num_workers", "0", "--trainer.max_epochs", "1", "--trainer.log_every_n_steps", "1",
       "--trainer.enable_progress_bar", "false"]

FIT_ROWS = {
    "shard cut at a member boundary (D8)": (cut_at_member_boundary, ["samples read so far were unusable",
                                                                     "worst on this rank: train-000000.tar (8)"]),
    "0-byte shards (H1)": (empty_shards, ["holds a usable sample", "selfsup shards inspect"]),
}  # the other short and empty parts: in-process above (each fit row costs a run)


@pytest.mark.slow
@pytest.mark.parametrize("name", FIT_ROWS)
def test_fit_on_short_or_empty_shards_stops_with_one_line(name, tmp_path):
    make, fragments = FIT_ROWS[name]
    folder = make(shard_set(tmp_path / "set"))
    proc = selfsup(*FIT, "--data.source", f"shards:{folder}", cwd=tmp_path, check=False, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("selfsup: error: ") and all(f in line for f in fragments), line


@pytest.mark.slow
def test_knn_on_a_split_with_no_usable_sample_is_one_line(tmp_path, trained):
    def samples(n):
        return ({"__key__": f"s{i}", "png": png(i), "cls": str(i % 2).encode()} for i in range(n))

    folder = tmp_path / "set"
    write_shard_set(folder, Manifest("two", 1, ["a", "b"]), {"train": samples(16), "val": samples(4)}, progress=False)
    zero_filled_val = folder / "val-000000.tar"
    zero_filled_val.write_bytes(bytes(zero_filled_val.stat().st_size))
    (tmp_path / "data.yaml").write_text(f"data:\n  source: shards:{folder}\n  image_size: {SIZE}\n  batch_size: 8\n"
                                        "  num_workers: 0\n")
    proc = selfsup("knn", "--ckpt", str(trained[1]), "-c", str(tmp_path / "data.yaml"), "--k", "3", cwd=tmp_path,
                   check=False, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "the val data holds no usable sample" in proc.stderr


@pytest.mark.slow
def test_a_write_killed_midway_is_cleaned_up_by_the_next(tmp_path):
    root = photos(tmp_path / "pics", per_class=400)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "ssl")}
    writer = subprocess.Popen([sys.executable, "-m", "selfsup.cli", "shards", "write", "--from", str(root), "--out",
                               str(tmp_path / "out"), "--maxcount", "100", "--quiet"], env=env)
    while not list(tmp_path.glob(".out-*/train-*.tar")):
        assert writer.poll() is None, "the write ended before it could be killed"
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    killed = list(tmp_path.glob(".out-*"))
    assert len(killed) == 1 and not (tmp_path / "out").exists()
    proc = selfsup("shards", "write", "--from", str(root), "--out", str(tmp_path / "out"), "--quiet", cwd=tmp_path)
    assert f"removed {killed[0]}, the temporary folder of an interrupted write" in proc.stderr
    assert not killed[0].exists() and "train: 800 samples" in proc.stdout
