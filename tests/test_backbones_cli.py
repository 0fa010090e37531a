"""`selfsup backbones`: the built-in list and the search over library model names (on a fixed list of names, so
no library is listed)."""

from selfsup.backbones.base import _REGISTRY
from selfsup.backbones_cli import builtin_lines, search_lines

NAMES = {"timm": ["convnext_atto", "convnext_tiny", "resnet50"], "torchvision": ["convnext_tiny", "efficientnet_b0"]}


def test_a_search_matches_a_shell_pattern_or_a_part_of_the_name_in_any_case():
    assert search_lines("convnext_t*", NAMES) == ["2 models match 'convnext_t*':", "  timm:convnext_tiny",
                                                  "  torchvision:convnext_tiny"]
    assert search_lines("ATTO", NAMES) == ["1 models match 'ATTO':", "  timm:convnext_atto"]


def test_a_search_that_matches_nothing_names_the_nearest_models():
    line, = search_lines("efficinetnet_b0", NAMES)
    assert line.startswith("no model matches 'efficinetnet_b0'; nearest: torchvision:efficientnet_b0")
    assert search_lines("qqqqqqqqqqqq", NAMES) == ["no model matches 'qqqqqqqqqqqq'; nearest: none"]


def test_every_builtin_backbone_is_listed_once_with_its_first_sentence():
    lines = builtin_lines()
    listed = [line.split()[0] for line in lines[1:]]
    assert listed == sorted(name for name in _REGISTRY if not name.endswith(":"))
    resnet18 = lines[1 + listed.index("resnet18")]
    assert len(resnet18.split(maxsplit=1)) == 2 and ". " not in resnet18  # a description, one sentence
