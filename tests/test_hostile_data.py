"""Hostile and broken data through the real commands. Each row of a table is a maker (writes the bad input into a
fresh folder and returns the path to give), the command, and what must come back: the exit code and fragments of
its one-line message or summary, never a traceback. The next bad input is one more row."""

from __future__ import annotations

import gzip
import io
import json
import lzma
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.data.manifest import MANIFEST, Manifest
from selfsup.data.shards import encode_png, write_shard_set

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
