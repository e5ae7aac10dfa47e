"""Fixtures of the store tests: every store test runs on SQLite and on a throwaway PostgreSQL cluster."""

from __future__ import annotations

import datetime as dt
import itertools
from dataclasses import dataclass
from pathlib import Path

import pytest

from mucosa.store import MediaFile, Store, upgrade


class Clock:
    """A clock the tests move forward by hand (leases expire without waiting)."""

    def __init__(self) -> None:
        self.now = dt.datetime(2025, 3, 10, 9, 0, tzinfo=dt.timezone.utc)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@dataclass
class Place:
    """Where a test's store lives: a folder, or a database URL and its media folder."""

    backend: str
    location: str | Path
    media: Path | None

    def open(self, **options) -> Store:
        return Store.open(self.location, self.media, **options)


@pytest.fixture(scope="session")
def postgres_store_template(postgres, tmp_path_factory) -> str:
    """A database holding a new, empty store: tests copy it rather than run the migrations each time."""
    url = postgres.new_database(name="store_template")
    upgrade(url, tmp_path_factory.mktemp("template-media"))
    return "store_template"


@pytest.fixture(autouse=True)
def every_token_cheap(cheap_tokens):
    """Every store test hashes its tokens at a low cost (``cheap_tokens``)."""


@pytest.fixture(params=["sqlite", "postgresql"])
def place(request, tmp_path) -> Place:
    """An empty place for a store, on each backend."""
    if request.param == "sqlite":
        return Place("sqlite", tmp_path / "store", None)
    cluster = request.getfixturevalue("postgres")
    return Place("postgresql", cluster.new_database(), tmp_path / "shared-media")


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(place, clock, request):
    """A new store, on each backend, on a clock the test moves (``place`` then holds it)."""
    if place.backend == "postgresql":
        place.location = request.getfixturevalue("postgres").new_database(
            template=request.getfixturevalue("postgres_store_template"))
    opened = place.open(create=True, clock=clock, lease_seconds=60)
    yield opened
    opened.close()


@pytest.fixture
def make_case(store):
    """``make_case(name, content=None, **fields)``: a case of one (fake) video, its content unique unless given."""
    counter = itertools.count()

    def make(name: str = "exam", content: bytes | None = None, target: Store | None = None, **fields):
        target = target or store
        data = content if content is not None else f"{name} {next(counter)}".encode()
        sha = target.put_media(data, ".mp4")
        return target.add_case(name, [MediaFile(sha, f"{name}.mp4")], **fields)

    return make
