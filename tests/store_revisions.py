"""Stores at an older revision of the format, as an older mucosa left them (importable from every test folder)."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, text

from mucosa.store import schema
from mucosa.store.location import locate, set_wal

FIRST = "0001"


def first_revision_store(location, media=None) -> str:
    """A store at revision 0001 holding a queued case (``"old"``, id ``0123456789ab``, whose id is returned) and a
    done one (``"done"``, id ``ba9876543210``, its detail ``{"timeline": [1, 2]}``)."""
    place = locate(location, media)
    if place.folder is not None:
        place.folder.mkdir(parents=True, exist_ok=True)
    place.media.mkdir(parents=True, exist_ok=True)
    engine = create_engine(place.url)
    try:
        if place.database_file is not None:
            with engine.connect():
                pass
            set_wal(place.database_file)
        with engine.begin() as connection:
            config = Config()
            config.set_main_option("script_location", str(schema.MIGRATIONS))
            config.attributes["connection"] = connection
            command.upgrade(config, FIRST)
            connection.execute(text(
                "INSERT INTO cases (id, name, kind, media, day, created_at, status, decode_warnings) VALUES "
                "('0123456789ab', 'old', 'video', '[]', '2025-01-02', '2025-01-02 10:00:00+00:00', 'queued', '[]')"))
            connection.execute(text(
                "INSERT INTO jobs (case_id, state, attempts, created_at, updated_at) VALUES ('0123456789ab', "
                "'queued', 0, '2025-01-02 10:00:00+00:00', '2025-01-02 10:00:00+00:00')"))
            connection.execute(text(
                "INSERT INTO cases (id, name, kind, media, day, created_at, status, decode_warnings, verdict, "
                "verdict_text, detail) VALUES ('ba9876543210', 'done', 'video', '[]', '2025-01-01', "
                "'2025-01-01 10:00:00+00:00', 'done', '[]', 'active', 'active', '{\"timeline\": [1, 2]}')"))
    finally:
        engine.dispose()
    return "0123456789ab"
