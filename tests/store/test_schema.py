"""The store's format version: opening checks it and changes nothing; only `upgrade` migrates."""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from mucosa.store import (
    MigrationNeeded,
    Store,
    StoreError,
    StoreNotFound,
    UnknownRevision,
    head_revision,
    known_revisions,
    schema,
    upgrade,
)
from mucosa.store.location import read_json
from mucosa.store.tables import Base

SECOND = '''
import sqlalchemy as sa
from alembic import op

revision = "0099"
down_revision = "{head}"


def upgrade():
    with op.batch_alter_table("cases") as batch:
        batch.add_column(sa.Column("ward", sa.String(50), nullable=True))
'''


def _url(place) -> str:
    if place.backend == "sqlite":
        return f"sqlite:///{place.location}/store.sqlite3"
    return str(place.location)


def _revision_and_columns(place) -> tuple[str | None, set[str]]:
    engine = create_engine(_url(place))
    try:
        with engine.connect() as connection:
            revision = MigrationContext.configure(connection).get_current_revision()
            tables = inspect(connection).get_table_names()
            columns = {c["name"] for c in inspect(connection).get_columns("cases")} if "cases" in tables else set()
    finally:
        engine.dispose()
    return revision, columns


def _set_revision(place, revision: str) -> None:
    engine = create_engine(_url(place))
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = :r"), {"r": revision})
    engine.dispose()


def _digest(place) -> str | None:
    return hashlib.sha256((place.location / "store.sqlite3").read_bytes()).hexdigest() if place.backend == "sqlite" \
        else None


@pytest.fixture
def newer_mucosa(tmp_path, monkeypatch):
    """``newer_mucosa()`` makes this mucosa ship one more migration (revision 0099, adding a column)."""
    def install() -> None:
        folder = tmp_path / "migrations"
        shutil.copytree(schema.MIGRATIONS, folder, ignore=shutil.ignore_patterns("__pycache__"))
        (folder / "versions" / "0099_ward.py").write_text(SECOND.format(head=head_revision()))
        monkeypatch.setattr(schema, "MIGRATIONS", folder)

    return install


def test_a_missing_store_is_refused_and_nothing_is_made(place):
    with pytest.raises(StoreNotFound, match="mucosa store upgrade"):
        place.open()
    if place.backend == "sqlite":
        assert not place.location.exists()
    else:
        assert _revision_and_columns(place) == (None, set())


def test_create_makes_a_store_at_the_current_revision_that_opens_again(place, make_case):
    with place.open(create=True) as store:
        make_case("first", target=store)
    assert _revision_and_columns(place)[0] == head_revision() == known_revisions()[-1]
    with place.open() as store:
        assert [c.name for c in store.search().cases] == ["first"]


def test_servers_starting_together_on_a_new_store_create_it_once(place):
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: place.open(create=True), range(4)))
    for store in stores:
        store.close()
    assert _revision_and_columns(place)[0] == head_revision()


def test_a_store_another_server_has_just_made_is_not_taken_for_other_files(tmp_path, monkeypatch):
    """The race of servers starting together, made certain: the database appears after this server looked for it
    and before it lists the folder."""
    Store.open(tmp_path / "store", create=True).close()
    database = tmp_path / "store" / "store.sqlite3"
    real_exists = type(database).exists
    monkeypatch.setattr(type(database), "exists", lambda path: path != database and real_exists(path))
    with Store.open(tmp_path / "store", create=True) as store:
        assert store.search().cases == []


def test_the_migrations_make_exactly_the_tables_of_the_models(store, place):
    engine = create_engine(_url(place))
    with engine.connect() as connection:
        optional = {"ix_cases_text"}  # PostgreSQL's trigram index, made where pg_trgm can be (revision 0006)
        context = MigrationContext.configure(connection, opts={
            "include_object": lambda item, name, kind, *_: not (kind == "index" and name in optional)})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == []


def test_the_store_at_head_has_the_triggers_that_keep_versions_and_the_count(store, place):
    """Lists trust ``cases.version`` and ``case_counts`` (revision 0005), which only the database's triggers keep. A
    later migration that rebuilds ``cases`` (Alembic's batch mode on SQLite copies the table, and drops its
    triggers) must make them again: this fails until it does."""
    engine = create_engine(_url(place))
    with engine.connect() as connection:
        if place.backend == "sqlite":
            found = connection.execute(text("SELECT name FROM sqlite_master WHERE type = 'trigger' AND "
                                            "tbl_name = 'cases'")).scalars()
            expected = {"cases_version", "cases_count_add", "cases_count_delete", "cases_count_remove"}
        else:
            found = connection.execute(text("SELECT tgname FROM pg_trigger WHERE tgrelid = 'cases'::regclass AND "
                                            "NOT tgisinternal")).scalars()
            expected = {"cases_version", "cases_count"}
        names = set(found)
        if place.backend == "postgresql":  # and the trigram index of text search (revision 0006; the test
            # cluster's role may create pg_trgm)
            assert "ix_cases_text" in {index["name"] for index in inspect(connection).get_indexes("cases")}
    engine.dispose()
    assert expected <= names, names


def test_an_older_store_needs_an_upgrade_and_opening_it_changes_nothing(place, newer_mucosa):
    place.open(create=True).close()  # at today's head
    head = head_revision()
    newer_mucosa()
    assert known_revisions()[-1] == "0099"
    before = _digest(place)
    with pytest.raises(MigrationNeeded) as refused:
        place.open()
    message = str(refused.value)
    assert f"revision {head}" in message and "needs 0099" in message and "mucosa store upgrade" in message
    revision, columns = _revision_and_columns(place)
    assert revision == head and "ward" not in columns
    assert _digest(place) == before
    assert upgrade(place.location, place.media) == (head, "0099")
    revision, columns = _revision_and_columns(place)
    assert revision == "0099" and "ward" in columns
    place.open().close()


def test_a_store_from_a_newer_mucosa_is_refused_by_open_and_upgrade(place):
    place.open(create=True).close()
    _set_revision(place, "0042")
    for attempt in (place.open, lambda: upgrade(place.location, place.media)):
        with pytest.raises(UnknownRevision) as refused:
            attempt()
        assert "revision 0042" in str(refused.value) and "knows 0001" in str(refused.value)
        assert refused.value.found == "0042" and refused.value.known == known_revisions()
    assert _revision_and_columns(place)[0] == "0042"


def test_upgrade_creates_a_store_and_then_has_nothing_to_do(place):
    assert upgrade(place.location, place.media) == (None, head_revision())
    assert upgrade(place.location, place.media) == (head_revision(), head_revision())
    place.open().close()


def test_sqlite_store_is_in_wal_mode_and_its_connections_enforce_foreign_keys(tmp_path):
    with Store.open(tmp_path / "s", create=True) as store:
        connection = sqlite3.connect(tmp_path / "s" / "store.sqlite3")
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        connection.close()
        with store._reader.connect() as conn:  # noqa: SLF001 - the pool's own connection settings
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
            assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30000
        assert (tmp_path / "s" / "media").is_dir()


def test_a_file_that_is_not_a_store_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "store.sqlite3").write_bytes(b"not a database at all" * 100)
    with pytest.raises(StoreError) as refused:
        Store.open(folder)
    assert "file is not a database" in str(refused.value) and "\n" not in str(refused.value)
    with pytest.raises(StoreError, match="is a file"):
        Store.open(folder / "store.sqlite3")


@pytest.mark.parametrize("location, media, expected", [
    ("mysql://u@h/db", "m", "unsupported database 'mysql'"),
    ("postgresql+psycopg://u:secret@h/db", None, "needs the shared folder"),
])
def test_bad_locations_are_refused_without_showing_a_password(location, media, expected):
    with pytest.raises(StoreError, match=expected) as refused:
        Store.open(location, media)
    assert "secret" not in str(refused.value)


def test_an_unreachable_server_is_one_line_naming_the_store(tmp_path):
    with pytest.raises(StoreError) as refused:
        Store.open(f"postgresql+psycopg://u:secret@/db?host={tmp_path}", tmp_path)
    message = str(refused.value)
    assert message.startswith("store postgresql+psycopg://u:***@/db") and "\n" not in message
    assert "secret" not in message


def test_a_store_of_the_first_revision_keeps_its_cases_through_the_upgrade(place):
    from store_revisions import FIRST, first_revision_store

    case_id = first_revision_store(place.location, place.media)
    with pytest.raises(MigrationNeeded, match=f"revision {FIRST} but this mucosa needs {head_revision()}"):
        place.open()
    assert upgrade(place.location, place.media) == (FIRST, head_revision())
    with place.open() as store:
        case = store.case(case_id)
        assert (case.name, case.status.value, case.summary, case.detail) == ("old", "queued", None, {})
        done = store.case("ba9876543210")
        assert (done.verdict, done.detail) == ("active", {"timeline": [1, 2]})  # moved to its own table
        assert [c.name for c in store.search().cases] == ["old", "done"]
    columns = _revision_and_columns(place)[1]
    assert "summary" in columns and "detail" not in columns


def _loaded(read, text):
    try:
        return read(text)
    except ValueError as error:  # JSONDecodeError, and the BOM's
        return type(error), str(error)


@pytest.mark.parametrize("text", ['{"verdict": {"score": [0.25, 1e-3], "calls": {}}, "fps": null}', ' {"a": 1}\n', "[]",
                                  '"x"', "0", b'[{"sha256": "ab"}]', '{"a": 1} x', '{"a": 1', "", "\ufeff[]"])
def test_json_columns_are_read_as_json_loads_reads_them(text):
    assert _loaded(read_json, text) == _loaded(json.loads, text)


def test_a_store_of_revision_0004_with_deleted_cases_counts_only_the_live_ones_after_the_upgrade(store, place,
                                                                                                 make_case):
    """Revision 0005 starts the kept count of live cases from the cases already there (deleted ones left out), and
    its triggers keep it from then on (its downgrade, run here to make a 0004 store, takes them away again)."""
    from alembic import command
    from alembic.config import Config

    from mucosa.store import schema

    admin = store.authenticate(store.add_user("dr admin", "admin"))
    made = [make_case(f"exam {k}").id for k in range(4)]
    store.delete_case(made[0], by=admin)
    store.close()
    engine = create_engine(store.place.url)
    config = Config()
    config.set_main_option("script_location", str(schema.MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
    engine.dispose()
    assert upgrade(place.location, place.media) == ("0004", head_revision())
    with place.open() as upgraded:
        assert upgraded.listing(limit=1).total == 3 and upgraded.case(made[1], detail=False).version == 0
        upgraded.delete_case(made[1], by=admin)
        assert upgraded.search(limit=1).total == 2 and len(upgraded.search().cases) == 2


def test_a_role_that_may_not_create_pg_trgm_upgrades_without_the_text_index(postgres, tmp_path, caplog):
    """A unit's PostgreSQL role may not create extensions: revision 0006 says so and goes on without the trigram
    index (searches then walk every case and find the same ones); the upgrade must not fail."""
    import logging
    import uuid

    import psycopg

    url = postgres.new_database()
    database, role = url.split("@/", 1)[1].split("?")[0], "plain_" + uuid.uuid4().hex[:8]
    with psycopg.connect(host=str(postgres.socket), user="postgres", dbname=database, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE, CREATE ON SCHEMA public TO {role}")  # tables, not extensions
    plain = url.replace("postgres@", f"{role}@")
    with caplog.at_level(logging.WARNING, logger="mucosa.store.migrations"):
        assert upgrade(plain, tmp_path / "media")[1] == head_revision()
    assert "pg_trgm" in caplog.text and "CREATE EXTENSION" in caplog.text
    engine = create_engine(plain)
    with engine.connect() as connection:
        assert "ix_cases_text" not in {index["name"] for index in inspect(connection).get_indexes("cases")}
    engine.dispose()
    with Store.open(plain, tmp_path / "media") as store:
        assert store.search(text="P-0042").cases == []
