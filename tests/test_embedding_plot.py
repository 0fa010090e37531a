"""`selfsup plot`'s figure: a t-SNE that keeps apart what is apart, written as an image file."""

import torch

from selfsup.eval.plot import save_embedding_plot, tsne_2d


def two_clusters(n: int = 40, dims: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` features in two tight clusters around orthogonal directions, and their labels 0/1."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    centres = torch.eye(dims)[labels]
    return centres + 0.05 * torch.randn(n, dims, generator=g), labels


def test_tsne_keeps_two_clusters_apart():  # 40 samples of 64 dimensions: fewer than PCA's 50 (a traceback before)
    features, labels = two_clusters()
    xy = torch.as_tensor(tsne_2d(features))
    assert xy.shape == (40, 2)
    distances = torch.cdist(xy, xy).fill_diagonal_(float("inf"))
    assert torch.equal(labels[distances.argmin(1)], labels)  # every point's nearest neighbour is of its cluster


def test_the_plot_is_written_with_unlabelled_points_in_grey(tmp_path):
    features, labels = two_clusters()
    labels[:4] = -1
    out = save_embedding_plot(features, labels, tmp_path / "figs" / "emb.png", classes=["cat", "dog"])
    assert out == tmp_path / "figs" / "emb.png" and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
