"""`selfsup bench` runs every method's real step and its measured floor, and writes its table as JSON."""

import json

import pytest
import torch

from clirun import REPO, selfsup
from selfsup.bench.data import best_rate
from selfsup.bench.photos import photo_methods, photo_rows


def test_bench_measures_each_method_against_its_backbone_floor(tmp_path, small_data):
    out = tmp_path / "bench.json"
    proc = selfsup("bench", "--batch-size", "16", "--repeats", "1", "--repo", str(REPO), "--out", str(out),
                   cwd=tmp_path)
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"SimCLR", "RotNet", "SwAV", "PixPro", "SimMIM", "MAE", "CVRL", "BYOL", "MoCoV3",
                         "BarlowTwins", "VICReg", "DINO", "iBOT", "IJEPA"} and "overhead" in proc.stdout
    assert rows["BYOL"]["momentum_images"] == rows["MoCoV3"]["momentum_images"] == 32  # the target's two views
    assert rows["SimCLR"]["backbone_images"] == 32  # two views of 16 images
    assert rows["RotNet"]["backbone_images"] == 64  # four rotations of 16 images
    assert rows["SwAV"]["backbone_images"] == 32  # its MNIST recipe's two 28 px crops of 16 images, one forward
    assert rows["PixPro"]["backbone_calls"] == ["forward_features"] * 2  # one per view (BN statistics per view)
    assert rows["SimMIM"]["backbone_images"] == 16  # one masked view of 16 images
    assert rows["MAE"]["backbone_calls"] == ["tokens"] and rows["MAE"]["backbone_images"] == 16  # visible patches
    # the context encoder over the kept patches, the target encoder over the whole images
    assert rows["IJEPA"]["backbone_calls"] == ["tokens"] and rows["IJEPA"]["momentum_images"] == 16
    # DINO: 2 globals and 4 locals of 16 images, one forward per crop size; its teacher only the 2 globals
    assert rows["DINO"]["backbone_images"] == 96 and rows["DINO"]["backbone_calls"] == ["forward"] * 2
    assert rows["DINO"]["momentum_images"] == 32
    # iBOT: the 2 masked globals through tokens (their mask recorded), the 4 locals pooled; the teacher's globals
    assert rows["iBOT"]["backbone_images"] == 96 and rows["iBOT"]["backbone_calls"] == ["tokens", "forward"]
    assert rows["iBOT"]["momentum_images"] == 32
    # its recipe's two clips of 16 videos (one forward), then one frame of each clip (the frame loss)
    assert rows["CVRL"]["backbone_images"] == 32 + 32 and rows["CVRL"]["backbone_calls"] == ["forward"] * 2
    assert all(r["step_ms"] > 0 and r["floor_ms"] > 0 and r["peak_mib"] > 0 for r in rows.values())
    assert all(r["images_per_s"] == pytest.approx(16e3 / r["step_ms"]) for r in rows.values())
    assert rows["SimCLR"]["backbone_calls"] == ["forward"] and rows["SwAV"]["backbone_calls"] == ["forward"]


def test_bench_measures_the_fast_paths_as_a_training_run_sets_them(tmp_path, mnist5k):
    out = tmp_path / "bench.json"
    proc = selfsup("bench", "--methods", "SimCLR", "--batch-size", "8", "--repeats", "1", "--warmup", "1",
                   "--precision", "bf16-mixed", "--channels-last", "--repo", str(REPO), "--out", str(out),
                   cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result["switches"] == {"precision": "bf16-mixed", "channels_last": True, "compile": False}
    assert "precision=bf16-mixed, channels_last=True" in proc.stdout
    (row,) = result["rows"]
    assert row["backbone_images"] == 16 and row["step_ms"] > 0 and row["floor_ms"] > 0
    assert row["overhead_low"] <= row["overhead"] <= row["overhead_high"] and "95% interval" in proc.stdout


@pytest.mark.slow  # 3-10 s
def test_bench_sets_any_recipe_option_for_every_method(tmp_path, mnist5k):
    out = tmp_path / "bench.json"
    selfsup("bench", "--methods", "BYOL", "--batch-size", "4", "--repeats", "1", "--warmup", "0", "--set",
            "data.init_args.views.init_args.size=16", "--set", "model.init_args.proj_dim=8", "--repo", str(REPO),
            "--out", str(out), cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result["overrides"] == ["--data.init_args.views.init_args.size=16", "--model.init_args.proj_dim=8"]
    (row,) = result["rows"]
    assert row["backbone_input"] == [4, 1, 16, 16] and row["momentum_images"] == 8  # the recipe's 28 px, resized


def test_bench_set_without_a_value_is_named(tmp_path):
    proc = selfsup("bench", "--methods", "BYOL", "--set", "model.init_args.proj_dim", cwd=tmp_path, check=False,
                   fresh=True)
    assert proc.returncode == 2 and "--set 'model.init_args.proj_dim' gives no value" in proc.stderr


def test_bench_names_unknown_methods(tmp_path):
    proc = selfsup("bench", "--methods", "Dino2", cwd=tmp_path, check=False, fresh=True)
    assert proc.returncode == 2 and "no bench config for Dino2" in proc.stderr


@pytest.mark.slow
def test_bench_data_compares_shards_with_pil_files(tmp_path, mnist5k):
    out = tmp_path / "data.json"
    proc = selfsup("bench", "data", "--repeats", "1", "--photos", "8", "--kinetics", "2", "--out", str(out),
                   cwd=tmp_path)
    rows = json.loads(out.read_text())["rows"]
    assert [(r["data"][:6], r["stage"]) for r in rows] == [
        (name, stage) for name in ("MNIST-", "RGB-64") for stage in ("read", "decode", "decode + views")]
    assert all(r["shards"] > 0 and r["files"] > 0 for r in rows) and "PIL files" in proc.stdout
    photos = json.loads(out.read_text())["photos"]
    assert [r["method"] for r in photos] == ["decode", "SimCLR", "SwAV", "PixPro", "BYOL", "SimMIM", "RotNet", "DINO",
                                             "iBOT", "I-JEPA"]
    assert all(r[k] > 0 for r in photos[1:] for k in ("pil_baseline", "workers", "device_split_workers"))
    videos = {r.get("path", r.get("memory")): r for r in json.loads(out.read_text())["kinetics"]}
    assert videos["seek to 2 clips"]["ratio"] > 1.5 and videos["CVRL loader (seek, views at 224)"]["ratio"] > 1
    assert videos["480x360"]["seek_mb"] < videos["480x360"]["decode_all_mb"] / 4


def test_bench_knn_times_faiss_and_torch_and_finds_the_same_neighbours(tmp_path):
    out = tmp_path / "knn.json"
    proc = selfsup("bench", "knn", "--train", "3000", "--dims", "32", "--queries", "500", "--out", str(out),
                   cwd=tmp_path)
    (row,) = json.loads(out.read_text())["rows"]
    assert (row["n_train"], row["dim"], row["queries"]) == (3000, 32, 500) and "torch/faiss" in proc.stdout
    assert row["same_neighbours"] == 1.0 and row["faiss_s"] > 0 and row["torch_s"] > 0


def test_the_medians_interval_is_the_binomial_order_statistics():
    from selfsup.bench.step import median_interval

    # distribution-free 95% intervals of the median (ranks from the binomial table): n=10 -> x(2)..x(9),
    # n=20 -> x(6)..x(15), n=30 -> x(10)..x(21); under 6 values the full range
    assert median_interval(range(1, 11)) == (2, 9)
    assert median_interval(list(range(20, 0, -1))) == (6, 15)
    assert median_interval(range(1, 31)) == (10, 21)
    assert median_interval([3.0, 1.0, 2.0]) == (1.0, 3.0)


def test_step_and_floor_are_timed_in_pairs_of_alternating_order():
    import torch

    from selfsup.bench.step import paired_seconds

    calls = []
    steps, floors = paired_seconds(lambda: calls.append("s"), lambda: calls.append("f"), torch.device("cpu"),
                                   warmup=1, repeats=4)
    assert "".join(calls) == "sf" + "fs" + "sf" + "fs" + "sf" and len(steps) == len(floors) == 4


def test_the_largest_batch_is_found_by_doubling_then_bisecting():
    import torch

    from selfsup.bench.maxbatch import largest_batch, needs_checkpointing, tiled

    largest, tried = largest_batch(lambda size: {"peak": size} if size <= 100 else None, start=8, limit=2048)
    assert largest == 96 and set(tried) == {8, 16, 32, 64, 128, 96, 112, 104}
    assert largest_batch(lambda size: {}, start=8, limit=50)[0] == 50  # everything fits: the limit itself
    assert largest_batch(lambda size: None, start=8, limit=50)[0] == 0
    assert needs_checkpointing(96, 2048, 128) and needs_checkpointing(96, 2048, 64) is False
    assert needs_checkpointing(32, 32, 128) is None  # the search stopped below the recipe's batch
    batch = tiled({"views": [torch.arange(3)], "label": torch.arange(3)}, 7)
    assert batch["views"][0].tolist() == [0, 1, 2, 0, 1, 2, 0] and batch["label"].shape == (7,)


@pytest.mark.parametrize("name", ["DINO", "iBOT", "I-JEPA"])
def test_the_pil_baseline_of_a_view_recipe_makes_the_same_crops_and_masks(name):
    recipe, pil = photo_methods()[name]
    crops = [(v.transforms[0].size, v.transforms[0].scale) for v in pil.views]
    assert crops == [((s.size, s.size), s.scale) for s in recipe.crop_specs]
    if name == "iBOT":  # two masks per image, as iBOT's dataset draws them
        assert [tuple(m.shape) for m in pil.per_image()] == [recipe.masks.grid] * 2
    if name == "I-JEPA":  # the collator's masks per batch, as I-JEPA's
        assert pil.per_batch(3).keys() == recipe.masks.batch(3).keys()


@pytest.mark.slow
def test_photo_methods_picks_the_real_photo_rows(selfsup_cache):
    rows = photo_rows(4, 1, best_rate, torch.device("cpu"), ["DINO", "I-JEPA"])
    assert [r["method"] for r in rows] == ["decode", "DINO", "I-JEPA"]
    assert all(r[k] > 0 for r in rows[1:] for k in ("pil_baseline", "workers", "device_split_workers"))
