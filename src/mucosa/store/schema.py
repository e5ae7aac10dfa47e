"""The store's format version: Alembic migrations shipped in ``migrations/``, run only when asked.

The revision a database is at is its format version. Opening a store checks it and changes nothing:

- no store there: :class:`StoreNotFound` (``create=True`` makes a new, empty one at the current revision);
- an older revision: :class:`MigrationNeeded`, saying to run ``mucosa store upgrade``;
- a revision this mucosa does not know (a newer mucosa wrote it): :class:`UnknownRevision`, naming the
  revision found and the ones known.

:func:`upgrade` (what ``mucosa store upgrade`` runs) brings a store, new or old, to the current revision.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect
from sqlalchemy.exc import SQLAlchemyError

from mucosa.atomic import write_error
from mucosa.errors import first_line
from mucosa.store.location import MEDIA_FOLDER, Location, locate, make_engines, set_wal
from mucosa.store.records import MigrationNeeded, StoreError, StoreNotFound, StoreUnavailable, UnknownRevision
from mucosa.store.tables import Base

__all__ = ["MIGRATIONS", "known_revisions", "head_revision", "current_revision", "check_revision", "prepare",
           "upgrade", "database_error"]

log = logging.getLogger(__name__)

MIGRATIONS = Path(__file__).resolve().with_name("migrations")
_MIGRATION_LOCK = 250_125  # the advisory lock that PostgreSQL servers migrating one database take in turn


def _config(connection: Connection | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def known_revisions() -> list[str]:
    """Every revision this mucosa knows, oldest first."""
    script = ScriptDirectory.from_config(_config())
    return [item.revision for item in reversed(list(script.walk_revisions()))]


def head_revision() -> str:
    """The revision this mucosa writes."""
    return known_revisions()[-1]


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None when it holds no store."""
    return MigrationContext.configure(connection).get_current_revision()


_FULL = ("database or disk is full", "no space left on device", "disk quota exceeded", "could not extend file")


def database_error(location: Location, error: SQLAlchemyError) -> StoreUnavailable:
    """A database failure as one line naming the store (e.g. the server is down, the file is not SQLite); its
    ``reason`` without the store, ``full`` when the database or its disk is full."""
    reason = first_line(getattr(error, "orig", None) or error).split(": ", 1)[-1]
    full = any(words in reason.lower() for words in _FULL)
    return StoreUnavailable(f"store {location.describe()}: {reason}", reason, full)


def check_revision(found: str, location: Location) -> None:
    """Refuse a database at a revision other than the current one.

    Raises:
        UnknownRevision: ``found`` is not a revision this mucosa knows.
        MigrationNeeded: ``found`` is an older revision.
    """
    known, where = known_revisions(), location.describe()
    if found not in known:
        raise UnknownRevision(f"store {where} is at revision {found}, which this mucosa does not know (it knows "
                              f"{', '.join(known)}): a newer mucosa wrote it; use that version, or restore a backup "
                              "made with this one", found, known)
    if found != known[-1]:
        raise MigrationNeeded(f"store {where} is at revision {found} but this mucosa needs {known[-1]}: back it up "
                              f"(`mucosa store backup`), then run `mucosa store upgrade {where}`", found, known[-1])


def _has_store_tables(connection: Connection) -> bool:
    return bool(set(inspect(connection).get_table_names()) & set(Base.metadata.tables))


def _found(reader: Engine, location: Location) -> str | None:
    """The database's revision, after checking it is not someone else's database."""
    with reader.connect() as connection:
        found = current_revision(connection)
        if found is None and _has_store_tables(connection):
            raise StoreError(f"store {location.describe()}: holds mucosa's tables but no revision: it was not made "
                             "by `mucosa store upgrade`; restore a backup into an empty place")
    return found


def _refuse_other_files(location: Location) -> None:
    """A new store on SQLite is made in a new or empty folder, never among other files (a run, an atlas): the
    one rule of ``mucosa store upgrade`` and ``mucosa serve``."""
    folder = location.folder
    if folder is None or not folder.is_dir() or location.database_file.exists():
        return
    others = sorted(p.name for p in folder.iterdir() if p.name != MEDIA_FOLDER)
    if location.database_file.name in others:  # made since it was looked for, by a server starting with this one
        return
    if others:
        raise StoreError(f"store {folder}: the folder holds no store but other files ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}); make a store in a new or empty folder")


def _make_folders(location: Location) -> None:
    for folder in filter(None, (location.folder, location.media)):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise write_error(error, folder) from None


def _migrate(location: Location, writer: Engine) -> None:
    """Run the migrations up to the head in one transaction. Servers starting together on a new store take
    turns (SQLite's BEGIN IMMEDIATE, a PostgreSQL advisory lock), and Alembic reads the revision again inside
    the transaction: the second finds the work done."""
    if location.database_file is not None:
        set_wal(location.database_file)
    with writer.begin() as connection:
        if connection.dialect.name == "postgresql":
            connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})")
        command.upgrade(_config(connection), "head")


def prepare(location: Location, reader: Engine, writer: Engine, create: bool) -> None:
    """Check, before a store is used, that it exists and is at the current revision; with ``create``, make a
    new store where there is none. Nothing else is ever changed.

    Raises:
        StoreNotFound, MigrationNeeded, UnknownRevision, StoreError: see the module's description.
    """
    where = location.describe()
    hint = f"create it with `mucosa store upgrade {where}`"
    database = location.database_file
    if database is not None and not database.exists() and not create:
        raise StoreNotFound(f"no store at {where} (no {database.name} there): {hint}")
    try:
        if database is not None and create:
            _refuse_other_files(location)
            _make_folders(location)
        found = _found(reader, location)
        if found is None and not create:
            raise StoreNotFound(f"store {where}: the database holds no mucosa store: {hint}")
        if found is None:
            _make_folders(location)
            _migrate(location, writer)
            log.info("created the store %s at revision %s", where, head_revision())
            return
    except SQLAlchemyError as error:
        raise database_error(location, error) from None
    check_revision(found, location)


def stored_revision(location: Location, reader: Engine) -> str:
    """The revision of the store at ``location``, maybe older than this mucosa's: what a backup made before
    ``mucosa store upgrade`` records (nothing is changed).

    Raises:
        StoreNotFound: no store there. UnknownRevision: a newer mucosa wrote it. StoreError: it cannot be read.
    """
    where, database = location.describe(), location.database_file
    if database is not None and not database.exists():
        raise StoreNotFound(f"no store at {where} (no {database.name} there)")
    try:
        found = _found(reader, location)
    except SQLAlchemyError as error:
        raise database_error(location, error) from None
    if found is None:
        raise StoreNotFound(f"store {where}: the database holds no mucosa store")
    if found not in known_revisions():
        check_revision(found, location)  # its one line: UnknownRevision
    return found


def upgrade(location: str | Path, media: str | Path | None = None) -> tuple[str | None, str]:
    """Bring the store at ``location`` to the current revision, creating it where there is none.

    This is what ``mucosa store upgrade`` runs. A store at an unknown revision is refused and left alone.

    Args:
        location: a store folder (SQLite), or a ``postgresql+psycopg://`` URL.
        media: the shared media folder (required with a URL; defaults to ``DIR/media`` for a folder).

    Returns:
        ``(revision before, revision now)``; the first is None for a new store.

    Raises:
        UnknownRevision: the store was written by a newer mucosa.
        StoreError: the database cannot be reached or migrated (one line naming the store).
    """
    place = locate(location, media)
    _refuse_other_files(place)
    _make_folders(place)
    reader, writer = make_engines(place)
    try:
        found = _found(reader, place)
        if found is not None and found not in known_revisions():
            check_revision(found, place)
        if found != head_revision():
            _migrate(place, writer)
            if found is None:
                log.info("store %s made, at revision %s", place.describe(), head_revision())
            else:
                log.info("store %s upgraded from revision %s to %s", place.describe(), found, head_revision())
        return found, head_revision()
    except SQLAlchemyError as error:
        raise database_error(place, error) from None
    finally:
        reader.dispose()
        writer.dispose()
