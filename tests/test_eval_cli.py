"""`selfsup knn/plot/export` and the probes through the real CLI, on the session's tiny SimCLR checkpoint."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from clirun import REPO, selfsup

DATA = str(REPO / "experiments/eval/mnist5k.yaml")
# The tiny checkpoint's architecture, for probe configs written for the demo's (width 16, standard stem).
TINY_BACKBONE = ["--model.init_args.backbone_args", "{width: 4, cifar_stem: true}", "--data.init_args.num_workers",
                 "0", "--trainer.logger", "false"]


@pytest.fixture(scope="module")
def unlabelled(tmp_path_factory, mnist5k) -> Path:
    """MNIST-5k's shards under a manifest without classes: a data set without labels, as data config."""
    folder = tmp_path_factory.mktemp("unlabelled") / "shards"
    folder.mkdir()
    for tar in mnist5k.glob("*.tar"):
        (folder / tar.name).symlink_to(tar)
    manifest = json.loads((mnist5k / "manifest.json").read_text())
    (folder / "manifest.json").write_text(json.dumps({**manifest, "classes": []}))
    config = folder.parent / "data.yaml"
    config.write_text(f"data:\n  source: shards:{folder}\n  num_workers: 0\n")
    return config


@pytest.mark.slow
def test_knn_table_and_json_match_a_brute_force_on_the_same_backbone(trained, tmp_path):
    _, ckpt = trained
    ckpt = Path(shutil.copy(ckpt, tmp_path / "last.ckpt"))
    proc = selfsup("knn", "--ckpt", str(ckpt), "-c", DATA, "--k", "5", "20", cwd=tmp_path)
    result = json.loads((tmp_path / "last.knn.json").read_text())
    assert [r["k"] for r in result["results"]] == [5, 20] and (result["bank"], result["queries"]) == (4000, 1000)
    assert "top-1" in proc.stdout and f"{result['results'][1]['top1']:.4f}" in proc.stdout

    from selfsup.data import SSLDataModule
    from selfsup.eval.checkpoint import load_backbone
    from selfsup.eval.features import split_features

    backbone, _ = load_backbone(ckpt)
    data = SSLDataModule("builtin:mnist5k", batch_size=500, num_workers=0)
    bank, bank_labels = split_features(backbone, data, "train")
    queries, query_labels = split_features(backbone, data, "val")
    sims, idx = (F.normalize(queries, dim=1) @ F.normalize(bank, dim=1).T).topk(20, dim=1)
    votes = F.one_hot(bank_labels[idx], 10) * torch.exp(sims / 0.07)[..., None]
    top1 = (votes.sum(1).argmax(1) == query_labels).float().mean().item()
    assert result["results"][1]["top1"] == pytest.approx(top1, abs=1e-3)  # 1 of 1000 queries may tie-break apart


@pytest.mark.slow
def test_linear_probe_on_cached_features_through_fit(trained, tmp_path):
    _, ckpt = trained
    proc = selfsup("fit", "-c", str(REPO / "experiments/eval/linear-mnist5k.yaml"), "--model.init_from", str(ckpt),
                   *TINY_BACKBONE, "--trainer.max_epochs", "4", "--trainer.check_val_every_n_epoch", "4",
                   cwd=tmp_path)
    assert "cached 4000 training features of width 32" in proc.stderr + proc.stdout
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("LinearProbe on val"))
    top1 = float(line.split("top1 ")[1].split()[0])
    assert 0.3 < top1 <= 1.0  # 10 classes: chance is 0.1


@pytest.mark.slow
def test_dense_probe_through_fit_reports_miou(trained, tmp_path):
    _, ckpt = trained
    selfsup("fit", "-c", str(REPO / "experiments/eval/dense-mnist5k.yaml"), "--model.init_from", str(ckpt),
            *TINY_BACKBONE[:4], "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "3",
            "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "1", cwd=tmp_path)
    rows = list(csv.DictReader(next(tmp_path.glob("runs/dense-mnist5k/version_*/metrics.csv")).open()))
    miou = [float(r["val/miou"]) for r in rows if r.get("val/miou")]
    assert len(miou) == 1 and 0 < miou[0] <= 1


@pytest.mark.slow
def test_plot_writes_a_png(trained, tmp_path):
    _, ckpt = trained
    selfsup("plot", "--ckpt", str(ckpt), "-c", DATA, "--out", str(tmp_path / "emb.png"), cwd=tmp_path)
    png = (tmp_path / "emb.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000


def test_export_of_the_tiny_checkpoint_says_what_torchvision_cannot_take(trained, tmp_path):
    _, ckpt = trained
    proc = selfsup("export", "--ckpt", str(ckpt), "--out", str(tmp_path / "backbone.pt"), cwd=tmp_path, fresh=True)
    assert "cannot map to torchvision.models.resnet18: keys whose shapes differ" in proc.stdout
    assert "build_backbone('resnet18', in_channels=1" in proc.stdout
    assert (tmp_path / "backbone.pt").is_file() and (tmp_path / "backbone.json").is_file()


BAD_INPUTS = [
    (["fit", "-c", "{linear}", "--model.init_from", "{ckpt}", "--model.init_args.backbone_args", "{{width: 16}}",
      "--trainer.fast_dev_run", "1"],
     "holds a resnet18(cifar_stem=True, width=4, in_channels=1) backbone, but the config asks for "
     "resnet18(width=16, in_channels=1)"),
    (["knn", "--ckpt", "{ckpt}", "-c", DATA, "--k", "5000"], "k=5000 is larger than the kNN bank of 4000"),
    (["knn", "--ckpt", "{ckpt}", "-c", "{unlabelled}"], "kNN needs labels, but data source"),
    (["fit", "-c", "{linear}", "--model.init_from", "{ckpt}", "--data.init_args.source", "{unlabelled_source}"],
     "LinearProbe needs labels, but the data has no classes"),
    (["knn", "--ckpt", "{ckpt}", "-c", "{nodata}"], "has no data: section"),
    (["plot", "--ckpt", "{ckpt}", "-c", str(REPO / "pyproject.toml")], "pyproject.toml is not valid YAML"),
    (["export", "--ckpt", "{exported}", "--out", "again.pt"], "is not a selfsup checkpoint"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a[:1] + a[-2:]) for a, _ in BAD_INPUTS])
def test_bad_evaluation_input_is_one_clear_message(args, message, trained, unlabelled, tmp_path):
    _, ckpt = trained
    exported = tmp_path / "exported.pt"
    torch.save({"conv1.weight": torch.zeros(1)}, exported)
    (tmp_path / "nodata.yaml").write_text("model:\n  backbone: resnet18\n")
    source = "shards:" + str(unlabelled.parent / "shards")
    values = {"ckpt": ckpt, "linear": REPO / "experiments/eval/linear-mnist5k.yaml", "unlabelled": unlabelled,
              "unlabelled_source": source, "exported": exported,
              "nodata": tmp_path / "nodata.yaml"}
    proc = selfsup(*(a.format(**values) for a in args), cwd=tmp_path, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert message in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]


@pytest.mark.slow
def test_dense_probe_on_mnist_scenes_reports_class_ious_and_draws_predictions(tmp_path, small_data):
    proc = selfsup("fit", "-c", str(REPO / "experiments/eval/dense-mnist-scenes.yaml"), "--model.init_from", "null",
                   "--model.backbone", "resnet18", "--model.backbone_args", "{width: 4, cifar_stem: true}",
                   "--model.cache_features", "false", "--data.init_args.num_workers", "0",
                   "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
                   "--trainer.check_val_every_n_epoch", "1", "--trainer.limit_val_batches", "1", cwd=tmp_path)
    line = next(x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("DenseProbe on val"))
    assert "iou_bg" in line and "miou" in line and "iou_9" in line  # background and digit 9: 11 classes
    picture = next(tmp_path.glob("runs/dense-mnist-scenes/version_*/dense-val.png"))
    assert picture.stat().st_size > 5000
