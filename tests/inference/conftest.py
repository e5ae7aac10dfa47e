"""Fixtures of the inference tests: a tiny trained run with its ONNX files written beside it."""

import shutil

import pytest

from mucosa.inference import onnx_files
from tiny_configs import TINY_LUMINANCE


@pytest.fixture(scope="module")
def deployed(train_tiny, tmp_path_factory):
    """A tiny run (with validation patients), deployed: (run folder, card, cache)."""
    tiny = train_tiny("deploy", TINY_LUMINANCE, patients=8, per_patient=4, seed=6)
    card = onnx_files.deploy(tiny.best, tiny.run / "split.csv", tiny.cache)
    return tiny.run, card, tiny.cache


@pytest.fixture
def run(deployed, tmp_path):
    """A fresh copy of the deployed run folder (beside its cohort, which split.csv names relatively)."""
    shutil.copytree(deployed[0].parent, tmp_path / "copy", ignore=shutil.ignore_patterns("cache"))
    return tmp_path / "copy" / "run"


@pytest.fixture
def atlas_copy(atlas_run, tmp_path):
    """A fresh copy of the run that ``mucosa train`` wrote with its atlas (beside its cohort, which split.csv
    names relatively): the run folder."""
    shutil.copytree(atlas_run.run.parent, tmp_path / "copy", ignore=shutil.ignore_patterns("cache"))
    return tmp_path / "copy" / "run"
