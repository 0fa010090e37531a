"""Hostile and broken data through `selfsup shards inspect` and `selfsup shards write`. Each row of a table is a
maker (writes the bad input into a fresh folder and returns the path to give), the command, and what must come
back: the exit code and fragments of its one-line message or summary, never a traceback. The next bad input is
one more row. Reading and decoding hostile data: tests/test_hostile_reading.py."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import struct
import subprocess
import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from hostile import SIZE, cli, photos, png, shard, shard_set
from selfsup.data.manifest import MANIFEST
from selfsup.data.sources import Source


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
    "manifest naming a missing shard": (lambda tmp: (shard(shard_set(tmp / "set"), 1).unlink() or tmp / "set"), {},
                                        1, ["train-000001.tar is missing or not a file; restore it"]),
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
    "--out a dangling symlink": (lambda tmp, tmpfs: (tmp / "out").symlink_to(tmp / "nowhere") or tmp / "out", [
        "is a symbolic link; give the path of a new folder"]),
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


ARGUMENTS = {
    "--val-fraction -0.5": (["--val-fraction", "-0.5"], "--val-fraction must be at least 0 (no val split) and below 1"),
    "--val-fraction 1": (["--val-fraction", "1"], "--val-fraction must be at least 0 (no val split) and below 1"),
    "--maxcount 0": (["--maxcount", "0"], "--maxcount must be at least 1 sample per shard, got 0"),
}


@pytest.mark.parametrize("name", ARGUMENTS)
def test_write_refuses_numbers_it_would_ignore(name, tmp_path, capsys):
    flags, message = ARGUMENTS[name]
    code, printed = cli("shards", "write", "--from", str(photos(tmp_path / "pics")), "--out", str(tmp_path / "out"),
                        *flags, "--quiet", capsys=capsys)
    assert code == 2 and message in printed and not (tmp_path / "out").exists(), printed


def test_every_file_is_one_sample_whatever_its_name(tmp_path, capsys):
    """Two files that share a name (``clip.png``, ``clip.jpg``), a newline, bytes that are not UTF-8, dots and ``%``:
    each file one sample, read back whole, its name recoverable from its key."""
    from urllib.parse import unquote_to_bytes

    root = photos(tmp_path / "pics")
    odd = [b"clip.png", b"clip.jpg", b"new\nline.png", b"caf\xe9.png", b"v1.2.png", b"100%.png"]
    for i, name in enumerate(odd):
        Image.open(io.BytesIO(png(50 + i))).save(os.path.join(os.fsencode(root / "cat"), name))
    code, printed = cli("shards", "write", "--from", str(root), "--out", str(tmp_path / "out"), "--quiet",
                        capsys=capsys)
    assert code == 0 and f"train: {6 + len(odd)} samples" in printed, printed
    keys = [s["__key__"] for part in Source(f"shards:{tmp_path / 'out'}").split("train").parts for s in part.samples()]
    assert len(keys) == len(set(keys)) == 6 + len(odd)
    names = {unquote_to_bytes(k) for k in keys}
    assert {b"cat/clip_png", b"cat/clip_jpg", b"cat/new\nline", b"cat/caf\xe9", b"cat/v1.2", b"cat/100%"} <= names


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
             (("killed", "0badc0de"), ("live", "1111aaaa"))}
    for path in temps.values():
        path.mkdir()
        (path / "train-000000.tar").write_bytes(b"half a shard")
    (temps["killed"] / ".writer").write_text(f"{os.uname().nodename} {gone.pid}\n")
    (temps["live"] / ".writer").write_text(f"{os.uname().nodename} {os.getpid()}\n")  # a write still going on
    code, printed = cli("shards", "write", "--from", str(photos(tmp_path / "pics")), "--out", str(tmp_path / "out"),
                        "--quiet", capsys=capsys)
    assert code == 0, printed
    assert not temps["killed"].exists() and temps["live"].exists()
    assert not (tmp_path / "out/.writer").exists()
    said = caplog.text
    assert f"removed {temps['killed']}, the temporary folder of an interrupted write" in said, said


def test_write_never_removes_a_hidden_folder_without_its_marker(tmp_path, capsys):
    """A user's ``.out-archived`` (or an unmarked ``.out-00000001``) beside ``--out`` is theirs, however old."""
    kept = [tmp_path / ".out-archived", tmp_path / ".out-00000001"]
    for folder in kept:
        folder.mkdir()
        (folder / "backup.tar").write_bytes(b"keep me")
        os.utime(folder, (0, 0))
    code, printed = cli("shards", "write", "--from", str(photos(tmp_path / "pics")), "--out", str(tmp_path / "out"),
                        "--quiet", capsys=capsys)
    assert code == 0, printed
    assert all((folder / "backup.tar").read_bytes() == b"keep me" for folder in kept)


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
