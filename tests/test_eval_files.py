"""What evaluations write: `selfsup predict`'s features file (one per rank), the dense probe's picture."""

from types import SimpleNamespace

import matplotlib.pyplot as plt
import numpy as np
import torch

from selfsup.data.members import IGNORE
from selfsup.eval.dense_plot import mask_colours, save_dense_grid
from selfsup.eval.writer import FeatureWriter


def batches(n: int = 3) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"features": torch.randn(4, 5, generator=g, dtype=torch.float64), "label": torch.arange(4) + 4 * i}
            for i in range(n)]


def test_predict_writes_every_batch_once_as_float32_tensors_only(tmp_path):
    parts = batches()
    trainer = SimpleNamespace(log_dir=str(tmp_path / "run"), world_size=1, global_rank=0)
    FeatureWriter().write_on_epoch_end(trainer, None, [parts], None)  # one list per predict loader
    saved = torch.load(tmp_path / "run/features.pt", weights_only=True)
    assert torch.equal(saved["features"], torch.cat([b["features"] for b in parts]).float())
    assert saved["features"].dtype == torch.float32 and saved["label"].tolist() == list(range(12))


def test_each_further_rank_writes_its_own_file_and_no_predictions_write_nothing(tmp_path):
    rank1 = SimpleNamespace(log_dir=None, world_size=2, global_rank=1)
    FeatureWriter(str(tmp_path / "out/feats.pt")).write_on_epoch_end(rank1, None, batches(1), None)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["feats.rank1.pt"]
    FeatureWriter(str(tmp_path / "none.pt")).write_on_epoch_end(rank1, None, [], None)
    assert not (tmp_path / "none.pt").exists() and not (tmp_path / "none.rank1.pt").exists()


def test_mask_colours_background_classes_and_ignored():  # ignored pixels once switched the classes to tab20
    mask = np.array([[0, 1, 3], [IGNORE, 0, 2]])
    rgb = mask_colours(mask)
    tab10 = plt.get_cmap("tab10")
    assert rgb.shape == (2, 3, 3) and (rgb[0, 0] == 0).all() and (rgb[1, 0] == 0.5).all()
    assert np.allclose(rgb[0, 1], tab10(0)[:3]) and np.allclose(rgb[0, 2], tab10(2)[:3])


def test_the_dense_grid_is_written_as_a_png(tmp_path):
    images, truth = torch.rand(2, 1, 8, 8), torch.randint(0, 3, (2, 8, 8))
    out = save_dense_grid(images, truth, truth.flip(-1), tmp_path / "dense.png", title="probe")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
