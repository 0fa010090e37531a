"""The options the CLI checks before torch loads (read from the source by selfsup.signatures) are exactly those
LightningCLI accepts for every method, probe, view recipe, the data module and the trainer; so the early check can
neither refuse a valid option nor let a class slip by unchecked."""

from __future__ import annotations

import importlib

import lightning as L
import pytest
from jsonargparse import ArgumentParser

from selfsup import signatures
from selfsup.cli_checks import method_names
from selfsup.data import SSLDataModule
from selfsup.data.views import ViewRecipe
from selfsup.eval.finetune import FineTune
from selfsup.eval.probe import FrozenProbe
from selfsup.methods import SSLMethod

for _module in (signatures.PACKAGE / "data").glob("*.py"):  # every view recipe, wherever it is defined
    importlib.import_module(f"selfsup.data.{_module.stem}")


def descendants(cls: type) -> list[type]:
    return [c for sub in cls.__subclasses__() for c in (sub, *descendants(sub))]


CLASSES = [*descendants(SSLMethod), *descendants(FrozenProbe), FineTune, *descendants(ViewRecipe), SSLDataModule,
           L.Trainer]


def accepted(cls: type) -> set[str]:
    """The options jsonargparse (and so LightningCLI) takes for ``cls``."""
    parser = ArgumentParser()
    parser.add_class_arguments(cls, "x")
    return {action.dest.split(".")[1] for action in parser._actions if action.dest.startswith("x.")}


@pytest.mark.parametrize("cls", CLASSES, ids=[c.__name__ for c in CLASSES])
def test_the_options_read_from_the_source_are_those_lightningcli_takes(cls):
    assert signatures.parameters(cls.__name__) == accepted(cls)


def test_the_methods_found_in_the_source_are_the_subclasses():
    imported = {c.__name__ for c in [*descendants(SSLMethod), *descendants(FrozenProbe), FineTune]}
    assert set(method_names()) == imported and "SimCLR" in method_names()
    assert set(signatures.subclasses("ViewRecipe")) - {"ViewRecipe"} == {c.__name__ for c in descendants(ViewRecipe)}


def test_nearest_offers_synonyms_first_then_spelling_neighbours():
    assert signatures.nearest("width", {"hidden_dim", "mlp_dim", "image_size"}) == " (did you mean hidden_dim?)"
    assert signatures.nearest("SimClr", ["SimCLR", "SwAV"]) == " (did you mean SimCLR?)"
    assert signatures.nearest("zzz", ["SimCLR"]) == ""
