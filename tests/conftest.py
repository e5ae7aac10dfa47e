"""Shared fixtures: the real data folder, forced on in CI with MUCOSA_REQUIRE_REAL_DATA=1."""

import os
from pathlib import Path

import pytest

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _require_real_data() -> Path:
    if REAL_DATA.is_dir():
        return REAL_DATA
    reason = f"real data folder {REAL_DATA} is absent (see its README in the project's shared/ folder)"
    if os.environ.get("MUCOSA_REQUIRE_REAL_DATA") == "1":
        pytest.fail(reason + " but MUCOSA_REQUIRE_REAL_DATA=1", pytrace=False)
    pytest.skip(reason)


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
