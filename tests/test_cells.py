"""selfsup.eval.cells: what a dense map's cells share with their nearest cells in other images."""

import torch
import torch.nn.functional as F

from selfsup.eval.cells import cell_labels, cell_neighbours


def test_a_cell_takes_its_majority_label_when_it_covers_enough_of_the_cell():
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 3                     # top-left cell: all 3
    masks[0, :2, 2:] = torch.tensor([[5, 5], [5, 0]])  # top-right: 3 of 4 are 5
    masks[0, 2:, :2] = torch.tensor([[255, 255], [255, 2]])  # bottom-left: mostly ignored
    labels, keep = cell_labels(masks, (2, 2), segments=6, min_share=0.6)
    assert labels.tolist() == [[[3, 5], [2, 0]]]
    assert keep.tolist() == [[[True, True], [False, True]]]  # ignored pixels count against the share


def _scene_maps(n: int, by: str) -> tuple[torch.Tensor, torch.Tensor]:
    """n 4x4 label maps with random classes 1..5, and maps whose cells encode either their class or their place."""
    g = torch.Generator().manual_seed(0)
    masks = torch.randint(1, 6, (n, 4, 4), generator=g)
    place = torch.arange(16).reshape(1, 4, 4).expand(n, -1, -1)
    code = F.one_hot(masks if by == "class" else place, 16).permute(0, 3, 1, 2).float()
    return code + 0.01 * torch.randn(code.shape, generator=g), masks


def test_cells_that_code_their_class_find_their_class_and_cells_that_code_their_place_find_their_place():
    maps, masks = _scene_maps(64, "class")
    by_class = cell_neighbours(maps, masks, segments=6, k=5)
    maps, masks = _scene_maps(64, "place")
    by_place = cell_neighbours(maps, masks, segments=6, k=5)
    assert by_class["cells_same_class"] == 1.0 and by_class["cells_same_place"] < 0.2
    assert by_place["cells_same_place"] == 1.0 and by_place["cells_same_class"] < 0.4  # chance 1/5
    assert 4 < by_class["cells_rankme"] < 8 and by_place["cells_rankme"] > 12  # 5 class codes, 16 place codes


def test_no_object_cells_give_no_figures():
    assert cell_neighbours(torch.rand(2, 8, 4, 4), torch.zeros(2, 4, 4, dtype=torch.long), segments=3) == {}
