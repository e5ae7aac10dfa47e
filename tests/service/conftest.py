"""Fixtures of the web service tests: a small checkpoint, the engine loaded once, real pCLE frames."""

import os
import shutil
from pathlib import Path

import numpy as np
import pytest


def _missing_extra() -> str | None:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as error:
        return str(error)
    return None


MISSING = _missing_extra()


def pytest_ignore_collect(collection_path, config):
    """Without the serve extra these tests are left out, except in CI (MUCOSA_REQUIRE_REAL_DATA=1), where
    their import error fails the run."""
    if MISSING and os.environ.get("MUCOSA_REQUIRE_REAL_DATA") != "1" and collection_path.name.startswith("test_"):
        return True
    return None


def pytest_report_header(config):
    if MISSING:
        return f"tests/service left out: the serve extra is missing ({MISSING}); pip install 'mucosa[serve]'"
    return None


SERVE = {"model": {"size": 64}, "preprocessing": {"fov_frames": 8},
         "split": {"mode": "patient", "test": 0.3, "val": 0.3, "seed": 1},
         "training": {"epochs": 3, "batch_size": 8, "lr": 0.01, "threads": 2}}


@pytest.fixture(scope="session")
def serve_checkpoint(train_tiny) -> Path:
    """A tiny CNN-LSTM (64x64, quality gate 0.5, field of view from 8 frames) trained on synthetic images."""
    return train_tiny("serve", SERVE, patients=9, per_patient=4, seed=3).best


@pytest.fixture(scope="session")
def engine(serve_checkpoint):
    from mucosa.service.engine import Engine

    return Engine(serve_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def atlas_engine(atlas_run):
    """The model ``mucosa train`` wrote with its atlas (``atlas_run``): similar cases and the atlas's vote."""
    from mucosa.service.engine import Engine

    return Engine(atlas_run.best, device="cpu")


@pytest.fixture(scope="session")
def brain_checkpoint(serve_checkpoint, tmp_path_factory) -> Path:
    """The serve checkpoint's weights under the brain data's classes (glioblastoma, meningioma: no clinical
    verdict words, so neutral colours) and with its circular field of view kept whole (crop "disc": every
    model frame has black corners)."""
    from mucosa.models.checkpoint import read_checkpoint_file, record_in_card

    path = tmp_path_factory.mktemp("brain-model") / "brain.ckpt"
    shutil.copyfile(serve_checkpoint, path)
    preprocessing = read_checkpoint_file(path)["mucosa"]["preprocessing"]
    record_in_card(path, "classes", ["glioblastoma", "meningioma"])
    record_in_card(path, "preprocessing", {**preprocessing, "crop": "disc"})
    return path


@pytest.fixture(scope="session")
def brain_engine(brain_checkpoint):
    from mucosa.service.engine import Engine

    return Engine(brain_checkpoint, device="cpu")


@pytest.fixture(scope="session")
def brain_video(pcle_brain) -> Path:
    """The shortest real pCLE video (162 frames, all above the quality gate)."""
    return pcle_brain / "meningioma" / "men-09.mpg"


@pytest.fixture(scope="session")
def frame_png(brain_video, tmp_path_factory) -> Path:
    """Frame 40 of a real pCLE video as a gray PNG (464x336, the whole recorded frame)."""
    from PIL import Image

    from mucosa.data.video import iter_video_frames

    (_, frame), = list(iter_video_frames(brain_video, "40"))
    path = tmp_path_factory.mktemp("frames") / "men-09-f40.png"
    Image.fromarray(np.round(frame * 255).astype(np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def black_png(tmp_path_factory) -> Path:
    """A black image: the quality gate drops it."""
    from PIL import Image

    path = tmp_path_factory.mktemp("black") / "black.png"
    Image.fromarray(np.zeros((336, 464), np.uint8)).save(path)
    return path


@pytest.fixture(scope="session")
def damaged(brain_video, tmp_path_factory) -> Path:
    """The real 162-frame video cut at 40 % of its bytes (cut.mpg), and with 100 KB of noise in its middle
    (mid.mpg)."""
    folder = tmp_path_factory.mktemp("damaged")
    data = brain_video.read_bytes()
    (folder / "cut.mpg").write_bytes(data[: len(data) * 4 // 10])
    middle, junk = len(data) // 2, np.random.default_rng(0).bytes(100 * 1024)
    (folder / "mid.mpg").write_bytes(data[:middle] + junk + data[middle + len(junk):])
    return folder


@pytest.fixture(scope="module")
def browser():
    """Debian's chromium, driven by Playwright (one per test module: Playwright's sync API holds an event loop
    in the main thread while it runs, which asyncio.run in other tests cannot share)."""
    from browsing import CHROMIUM, missing

    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed")
    if not Path(CHROMIUM).is_file():
        missing(f"chromium is not installed ({CHROMIUM})")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    """A 1280x800 page of ``browser``; the test fails on any script error the page raised."""
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert not errors, errors


@pytest.fixture(scope="session")
def shots(tmp_path_factory) -> Path:
    """Where the browser tests put their screenshots: $MUCOSA_SCREENSHOTS, else a temporary folder."""
    folder = Path(os.environ.get("MUCOSA_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder
