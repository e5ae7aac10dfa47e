"""Backups of a store, taken while it serves, and their restore.

A backup is a folder: ``backup.json`` (what it is: backend, revision, time, media count), the database
(``store.sqlite3``, made with SQLite's online backup API, or ``store.pgdump``, ``pg_dump``'s custom format)
and ``media/``: the uploaded files, and each case's folder ``media/shared/CASE_ID`` (the frames, model frames
and embeddings the engine wrote, which the viewer, the similar cases and the reports read; not the folders of
attempts still running). The database is copied first, then the media: media are written before any case
refers to them and never change, and a case's folder is in place before the store marks it done, so every file
the copied database names, and every done case's folder, is in the backup. The backup folder is written
as a set (:class:`mucosa.atomic.OutputSet`): an earlier backup in ``out`` is replaced whole or not at all.

:func:`restore` only fills an empty place (a new folder, or an empty PostgreSQL database): media first, then
the database in one step, so a restored store never names a file it lacks.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import URL
from sqlalchemy.exc import SQLAlchemyError

from mucosa.atomic import OutputError, OutputSet, PendingFile, write_error, write_text
from mucosa.store.location import BUSY_SECONDS, DATABASE_FILE, Location, locate, make_engines, set_wal
from mucosa.store.media import copy_case_folders, copy_media
from mucosa.store.records import StoreError, UnknownRevision
from mucosa.store.schema import database_error, head_revision, known_revisions, stored_revision

__all__ = ["backup", "restore", "read_manifest", "MANIFEST", "PG_DUMP_FILE"]

log = logging.getLogger(__name__)

MANIFEST = "backup.json"
PG_DUMP_FILE = "store.pgdump"
FORMAT = "mucosa-store-backup"


def _copy_sqlite(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (the online backup API), written atomically."""
    pending = PendingFile(target, open_file=False)
    try:
        with closing(sqlite3.connect(source, timeout=BUSY_SECONDS)) as origin, \
                closing(sqlite3.connect(pending.temp)) as copy:
            origin.backup(copy)
    except BaseException as error:
        pending.discard()
        if isinstance(error, sqlite3.Error):
            raise StoreError(f"cannot copy the database {source}: {error}") from None
        if isinstance(error, OSError):
            raise write_error(error, target) from None
        raise
    pending.commit()


def _libpq(url: URL) -> tuple[str, dict[str, str]]:
    """A libpq connection URI for ``url`` (without its password) and the environment holding the password."""
    environment = dict(os.environ)
    if url.password:
        environment["PGPASSWORD"] = str(url.password)
    return url.set(drivername="postgresql", password=None).render_as_string(hide_password=False), environment


def _run(tool: str, arguments: list[str], url: URL, where: str) -> None:
    program = shutil.which(tool)
    if program is None:
        raise StoreError(f"{tool} is not installed (PostgreSQL's client tools, e.g. the postgresql-client package); "
                         f"it is needed to back up or restore {where}")
    uri, environment = _libpq(url)
    done = subprocess.run([program, *arguments, "--dbname", uri], env=environment, capture_output=True, text=True)
    if done.returncode != 0:
        lines = done.stderr.strip().splitlines() or [f"exit status {done.returncode}"]
        raise StoreError(f"{tool} failed for {where}: {lines[0][:300]}")


def backup_store(location: str | Path, out: str | Path, media: str | Path | None = None,
                 now: dt.datetime | None = None) -> Path:
    """Back the store at ``location`` up into the folder ``out`` (``mucosa store backup``), also a store at an
    older revision, which needs ``mucosa store upgrade`` (back it up first) and cannot be opened until then.

    Raises:
        StoreNotFound, UnknownRevision: no store there, or one of a newer mucosa.
        StoreError, OutputError, WriteError: see :func:`backup`.
    """
    place = locate(location, media)
    reader, writer = make_engines(place)
    try:
        revision = stored_revision(place, reader)
    finally:
        reader.dispose()
        writer.dispose()
    return backup(place, out, now or dt.datetime.now(dt.timezone.utc), revision)


def backup(place: Location, out: str | Path, now: dt.datetime, revision: str | None = None) -> Path:
    """Back the store at ``place`` (at ``revision``, this mucosa's by default) up into the folder ``out`` while
    it keeps serving; returns ``out``.

    Raises:
        StoreError: the database cannot be copied (pg_dump missing or failing).
        OutputError: ``out`` is, or lies inside, the store, or holds it (a backup there would replace the store's
            own files).
        OutputError, WriteError: ``out`` cannot be written.
    """
    _refuse_the_store_itself(place, out)
    with OutputSet(out, (MANIFEST, DATABASE_FILE, PG_DUMP_FILE, "media"), "backup folder") as staged:
        if place.database_file is not None:
            database = DATABASE_FILE
            _copy_sqlite(place.database_file, staged.path(database))
        else:
            database = PG_DUMP_FILE
            _run("pg_dump", ["--format=custom", "--file", str(staged.path(database))], place.url, place.describe())
        media = copy_media(place.media, staged.staging / "media")
        folders = copy_case_folders(place.media, staged.staging / "media")
        info = {"format": FORMAT, "version": 1, "backend": place.backend, "revision": revision or head_revision(),
                "database": database, "media_files": media, "case_folders": folders, "created": now.isoformat()}
        write_text(staged.path(MANIFEST), json.dumps(info, indent=2) + "\n")
    log.info("backed up %s into %s (%d media files, %d case folders)", place.describe(), out, media, folders)
    return Path(out)


def _refuse_the_store_itself(place: Location, out: str | Path) -> None:
    """A backup folder is never the store, inside it, or around its folders (it would replace their files)."""
    target = Path(out).expanduser().resolve()
    folders = (p.expanduser().resolve() for p in (place.folder, place.media) if p is not None)
    if place.holds(out) or any(folder.is_relative_to(target) for folder in folders):
        raise OutputError(f"{out}: the backup folder would hold or replace the store's own files "
                          f"({place.describe()}); back it up into a folder outside the store")


def read_manifest(folder: str | Path) -> dict:
    """The ``backup.json`` of a backup folder, checked.

    Raises:
        StoreError: not a backup of a mucosa store.
        UnknownRevision: made by a newer mucosa.
    """
    path = Path(folder) / MANIFEST
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise StoreError(f"{folder}: not a mucosa store backup (cannot read {MANIFEST}: {error})") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT or info.get("database") not in (
            DATABASE_FILE, PG_DUMP_FILE) or not (Path(folder) / info["database"]).is_file():
        raise StoreError(f"{folder}: not a complete mucosa store backup ({MANIFEST} or its database is missing)")
    if info.get("revision") not in known_revisions():
        known = known_revisions()
        raise UnknownRevision(f"{folder}: the backup is at revision {info.get('revision')}, which this mucosa does "
                              f"not know (it knows {', '.join(known)})", str(info.get("revision")), known)
    return info


def _check_empty(place: Location) -> None:
    if place.database_file is not None:
        if place.database_file.exists():
            raise StoreError(f"{place.describe()} holds a store already: restore into a new folder (or move the "
                             "store away first)")
        return
    reader, _ = make_engines(place)
    try:
        with reader.connect() as connection:
            tables = inspect(connection).get_table_names()
    except SQLAlchemyError as error:
        raise database_error(place, error) from None
    finally:
        reader.dispose()
    if tables:
        raise StoreError(f"{place.describe()}: the database is not empty ({len(tables)} tables): restore into a new, "
                         "empty database")


def restore(backup_folder: str | Path, target: str | Path, media: str | Path | None = None) -> dict:
    """Restore a backup into ``target``: a new folder (a SQLite backup) or an empty PostgreSQL database (a
    PostgreSQL backup, with ``media`` its shared folder). Returns the backup's ``backup.json``.

    A store restored from a backup at an older revision needs ``mucosa store upgrade`` before it opens.

    Raises:
        StoreError: not a backup; a backup of the other backend; the target is not empty; pg_restore failed.
        UnknownRevision: the backup was made by a newer mucosa.
    """
    folder = Path(backup_folder)
    info = read_manifest(folder)
    place = locate(target, media)
    if info["backend"] != place.backend:
        raise StoreError(f"{folder} is a backup of a {info['backend']} store; it cannot be restored into "
                         f"{place.describe()} ({place.backend})")
    _check_empty(place)
    copy_media(folder / "media", place.media)
    copy_case_folders(folder / "media", place.media)  # an older backup may hold none
    if place.database_file is not None:
        _copy_sqlite(folder / info["database"], place.database_file)
        set_wal(place.database_file)
    else:
        _run("pg_restore", ["--no-owner", "--no-privileges", "--single-transaction", "--exit-on-error",
                            str(folder / info["database"])], place.url, place.describe())
    log.info("restored %s into %s (revision %s)", folder, place.describe(), info["revision"])
    return info
