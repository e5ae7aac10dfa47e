"""Shared fixtures: the real data folder (forced on in CI with MUCOSA_REQUIRE_REAL_DATA=1), tiny trained models.

The tiny configs themselves are in tests/tiny_configs.py (``from tiny_configs import TINY, tiny_config``).
"""

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tiny_configs import tiny_config

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="session")
def _no_store_in_the_home_folder(tmp_path_factory):
    """The default case store (``$MUCOSA_STORE``, else under ``$XDG_DATA_HOME``) points into the test session's
    temporary folder: no test, nor a command it runs, writes into the user's own store."""
    saved = {name: os.environ.get(name) for name in ("MUCOSA_STORE", "XDG_DATA_HOME")}
    home = tmp_path_factory.mktemp("data-home")
    os.environ["XDG_DATA_HOME"] = str(home)
    os.environ["MUCOSA_STORE"] = str(home / "mucosa" / "store")
    yield
    for name, value in saved.items():
        os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def _require_real_data() -> Path:
    if REAL_DATA.is_dir():
        return REAL_DATA
    reason = f"real data folder {REAL_DATA} is absent (see its README in the project's shared/ folder)"
    if os.environ.get("MUCOSA_REQUIRE_REAL_DATA") == "1":
        pytest.fail(reason + " but MUCOSA_REQUIRE_REAL_DATA=1", pytrace=False)
    pytest.skip(reason)


SLOW_DOCTESTS = {"mucosa.api"}  # trains a model: the doctests of src/mucosa over ~5 s


# a test that uses one of these (directly or through another fixture) trains a model or drives a browser
SLOW_FIXTURES = {"train_tiny", "atlas_run", "tiny_run", "browser"}


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects
def pytest_collection_modifyitems(items):
    """Mark ``slow`` what cannot carry the marker itself: the slow doctests, the store's tests on PostgreSQL
    (a database each; ``pytest -m "not slow"`` runs them on SQLite only), and every test that needs a trained
    model or a browser (:data:`SLOW_FIXTURES`)."""
    for item in items:
        doctest = isinstance(item, pytest.DoctestItem) and item.name in SLOW_DOCTESTS
        params = item.callspec.params.values() if getattr(item, "callspec", None) is not None else ()
        postgresql = any(isinstance(value, str) and value == "postgresql" for value in params)  # any fixture's
        trained = bool(SLOW_FIXTURES & set(getattr(item, "fixturenames", ())))
        if doctest or postgresql or trained:
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def timm(monkeypatch):
    """The fake ``timm`` module of tests/fake_timm.py in place of the real one (it builds ``timm:fakenet``)."""
    from fake_timm import fake_timm

    module = fake_timm()
    monkeypatch.setitem(sys.modules, "timm", module)
    return module


@pytest.fixture(scope="session")
def real_data() -> Path:
    """``../shared/data``; skips (or fails in CI) when it is absent."""
    return _require_real_data()


@pytest.fixture(scope="session")
def pcle_brain(real_data: Path) -> Path:
    return real_data / "pcle-brain"


@pytest.fixture(scope="session")
def pcle_colon_video(real_data: Path) -> Path:
    return real_data / "pcle-colon" / "s01v01.mpeg"


@pytest.fixture(scope="session")
def egcz(real_data: Path) -> Path:
    return real_data / "egcz-aia"


@pytest.fixture
def cheap_tokens(monkeypatch):
    """Token hashes at a low scrypt cost (the cost is kept in each hash, so checking works the same)."""
    from mucosa.store import tokens

    monkeypatch.setattr(tokens, "COST", (2**10, 8, 1))


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL cluster for the session (tests/postgres.py): skips without PostgreSQL, unless
    MUCOSA_REQUIRE_POSTGRES=1."""
    from postgres import start_cluster

    cluster = start_cluster()
    yield cluster
    cluster.stop()


@dataclass
class TinyRun:
    """A tiny model trained on a synthetic cohort."""

    run: Path     # the run folder (config.yaml, split.csv, best.ckpt...)
    best: Path    # its best checkpoint
    cohort: Path  # the synthetic cohort's folder
    cache: object  # the FrameCache it was prepared with


@pytest.fixture(scope="session")
def train_tiny(tmp_path_factory):
    """Train a tiny model on synthetic patients (40x40 images): ``train_tiny(name, config, patients, ...)``."""
    def make(name: str, config: dict, patients: int, per_patient: int, seed: int) -> TinyRun:
        from mucosa.data.cache import FrameCache
        from mucosa.data.synth import synthesize_cohort
        from mucosa.models.config import config_from_dict
        from mucosa.models.training import train

        root = tmp_path_factory.mktemp(name)
        manifest = synthesize_cohort(root / "cohort", patients=patients, per_patient=per_patient, size=40, seed=seed)
        cache = FrameCache(root / "cache")
        best = train(manifest, config_from_dict(config), root / "run", cache=cache)
        return TinyRun(root / "run", Path(best), root / "cohort", cache)

    return make


ATLAS_RUN = {"model": {"size": 40}, "preprocessing": {"quality_threshold": 0.0, "crop": "none", "channel": "luminance"},
             "split": {"mode": "patient", "test": 0.25, "val": 0.25, "seed": 0},
             "training": {"epochs": 1, "batch_size": 8, "threads": 1}}


@pytest.fixture(scope="session")
def atlas_run(tmp_path_factory) -> TinyRun:
    """A tiny model trained by ``mucosa train`` on 12 synthetic patients of 16 images (40x40), so with its ONNX
    files and ``atlas/`` beside ``best.ckpt``: 6 training patients, 3 validation patients (48 frames calibrate
    the atlas) and 3 test patients held out. Treat it as read-only (copy the run to change it)."""
    import yaml

    from mucosa.cli import main
    from mucosa.data.cache import FrameCache
    from mucosa.data.synth import synthesize_cohort

    root = tmp_path_factory.mktemp("atlas-run")
    manifest = synthesize_cohort(root / "cohort", patients=12, per_patient=16, size=40, seed=0)
    (root / "config.yaml").write_text(yaml.safe_dump(ATLAS_RUN))
    code = main(["train", "--manifest", str(manifest), "--config", str(root / "config.yaml"), "--out",
                 str(root / "run"), "--cache", str(root / "cache")])
    assert code == 0 and (root / "run" / "atlas" / "atlas.json").is_file()
    return TinyRun(root / "run", root / "run" / "best.ckpt", root / "cohort", FrameCache(root / "cache"))


@pytest.fixture(scope="session")
def tiny_run(train_tiny) -> TinyRun:
    """A tiny CNN-LSTM (``TINY``, two epochs) trained once per session on 10 synthetic patients of 6 images,
    with test and validation patients. Shared by every test that asks for it: read its files, write nothing
    into its folders (copy them first)."""
    return train_tiny("tiny-run", tiny_config(training={"epochs": 2}), patients=10, per_patient=6, seed=5)
