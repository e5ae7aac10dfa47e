"""Where a store lives, and the database connections to it.

A store is either a folder (SQLite: ``DIR/store.sqlite3`` with its media in ``DIR/media``) or a PostgreSQL
URL, ``postgresql+psycopg://user@host/db``, whose media live in a shared folder named separately.

SQLite connections wait up to :data:`BUSY_SECONDS` for a lock (``busy_timeout``) and enforce foreign keys;
the store's file is in WAL mode (set when it is created or upgraded), so readers never wait for the writer.
Writes begin with ``BEGIN IMMEDIATE``: one writer at a time, and a transaction that reads before it writes
cannot find its snapshot stale halfway. A process holds one write connection, which its threads take in turn.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

from mucosa.store.records import StoreError

__all__ = ["Location", "locate", "is_url", "default_location", "DATABASE_FILE", "MEDIA_FOLDER", "BUSY_SECONDS",
           "STORE_VARIABLE", "make_engines", "read_json", "set_wal"]

DATABASE_FILE = "store.sqlite3"
MEDIA_FOLDER = "media"
BUSY_SECONDS = 30.0
_POSTGRES_DRIVERS = ("postgresql", "postgresql+psycopg")
STORE_VARIABLE = "MUCOSA_STORE"


def default_location() -> str:
    """The store ``mucosa serve`` and ``mucosa store`` use when none is named: ``$MUCOSA_STORE``, else the folder
    ``$XDG_DATA_HOME/mucosa/store`` (``~/.local/share/mucosa/store`` when XDG_DATA_HOME is unset)."""
    named = os.environ.get(STORE_VARIABLE)
    if named:
        return named
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "mucosa", "store")


@dataclass(frozen=True)
class Location:
    """A parsed store location: the database URL, and where media go."""

    url: URL
    media: Path
    folder: Path | None = None  # the store folder (SQLite only)

    @property
    def backend(self) -> str:
        return "sqlite" if self.folder is not None else "postgresql"

    @property
    def database_file(self) -> Path | None:
        return None if self.folder is None else self.folder / DATABASE_FILE

    def holds(self, path: str | Path) -> bool:
        """Whether ``path`` is, or lies inside, the store: its folder (with its database file) or its media
        folder (links followed). An output there would overwrite the store's own files."""
        target = Path(path).expanduser().resolve()
        return any(target == place or target.is_relative_to(place)
                   for place in (p.expanduser().resolve() for p in (self.folder, self.media) if p is not None))

    def describe(self) -> str:
        """The store as people should see it in messages (never with a password)."""
        if self.folder is not None:
            return str(self.folder)
        return self.url.render_as_string(hide_password=True)


def is_url(location: str | Path) -> bool:
    return isinstance(location, str) and "://" in location


def locate(location: str | Path, media: str | Path | None = None) -> Location:
    """Parse a store location: a folder, or a ``postgresql+psycopg://`` URL (then ``media`` is required).

    Raises:
        StoreError: an unsupported or malformed URL, a PostgreSQL store without its media folder, a store
            folder that is a file.
    """
    if not is_url(location):
        folder = Path(location).expanduser()
        if folder.exists() and not folder.is_dir():
            raise StoreError(f"store {folder}: is a file; a store is a folder (or a postgresql+psycopg:// URL)")
        return Location(URL.create("sqlite", database=str(folder / DATABASE_FILE)),
                        Path(media) if media is not None else folder / MEDIA_FOLDER, folder)
    try:
        url = make_url(str(location))
    except ArgumentError:
        raise StoreError(f"store {location!r}: not a database URL (expected postgresql+psycopg://USER@HOST/DB)"
                         ) from None
    if url.drivername not in _POSTGRES_DRIVERS:
        raise StoreError(f"store {url.render_as_string(hide_password=True)}: unsupported database "
                         f"{url.drivername!r}; give a folder (SQLite) or a postgresql+psycopg:// URL")
    if media is None:
        raise StoreError(f"store {url.render_as_string(hide_password=True)}: a PostgreSQL store needs the shared "
                         "folder for its media (--media DIR)")
    return Location(url.set(drivername="postgresql+psycopg"), Path(media))


def _begin_with(engine: Engine, statement: str) -> None:
    """Make pysqlite leave transactions to SQLAlchemy, which starts each with ``statement``."""

    @event.listens_for(engine, "connect")
    def _connect(connection, _record) -> None:
        connection.isolation_level = None  # the driver begins nothing itself
        cursor = connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {int(BUSY_SECONDS * 1000)}")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection) -> None:
        connection.exec_driver_sql(statement)


_SCAN_JSON = json.JSONDecoder().scan_once


def read_json(text: str | bytes) -> object:
    """``json.loads``, the same value and the same errors, about twice as fast for the compact JSON the store
    writes (three values in each case row a list reads): the scanner is called directly, and ``json.loads`` only
    takes over for what does not start and end a value exactly (spaces around it, an error to raise, bytes)."""
    if isinstance(text, str):
        try:
            value, end = _SCAN_JSON(text, 0)
        except StopIteration:
            return json.loads(text)
        if end == len(text):
            return value
    return json.loads(text)


def make_engines(location: Location) -> tuple[Engine, Engine]:
    """``(reader, writer)``: the same engine on PostgreSQL; on SQLite, two pools whose transactions begin
    ``BEGIN`` (reads, which run beside the writer) and ``BEGIN IMMEDIATE`` (writes, one at a time). JSON columns
    are read with :func:`read_json`."""
    if location.folder is None:
        engine = create_engine(location.url, pool_pre_ping=True, pool_size=10, max_overflow=20,
                               json_deserializer=read_json)
        return engine, engine
    args = {"timeout": BUSY_SECONDS, "check_same_thread": False}
    reader = create_engine(location.url, connect_args=args, pool_size=10, max_overflow=20, json_deserializer=read_json)
    # one write connection: this process's writers queue for it in turn, instead of polling SQLite's lock
    # (busy_timeout sleeps up to 100 ms between tries, the long tail of writes under load); other processes
    # sharing the file still wait on the lock itself
    writer = create_engine(location.url, connect_args=args, pool_size=1, max_overflow=0, pool_timeout=BUSY_SECONDS,
                           json_deserializer=read_json)
    _begin_with(reader, "BEGIN")
    _begin_with(writer, "BEGIN IMMEDIATE")
    return reader, writer


def set_wal(database: Path) -> None:
    """Put an SQLite file in WAL mode (kept in the file): readers then never block on the writer."""
    mode, deadline = None, time.monotonic() + BUSY_SECONDS
    while mode is None:  # SQLite does not wait (busy_timeout) for the lock a change of journal mode takes
        connection = sqlite3.connect(database, timeout=BUSY_SECONDS)
        try:
            mode = connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as error:  # another server is making the same new store: try again
            if "locked" not in str(error) or time.monotonic() > deadline:
                raise StoreError(f"store {database}: cannot set WAL mode ({error})") from None
            time.sleep(0.05)
        finally:
            connection.close()
    if mode != "wal":
        raise StoreError(f"store {database}: SQLite cannot use WAL mode here (journal mode {mode}); is the folder on "
                         "a network file system? Use a local folder or PostgreSQL")
