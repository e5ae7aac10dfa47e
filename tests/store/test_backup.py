"""Backups taken while the store serves, restored into an empty place: the same cases, reviews, users and log."""

from __future__ import annotations

import json

import pytest

from mucosa.atomic import OutputError
from mucosa.store import CaseResult, Store, StoreError, UnknownRevision, restore


def _contents(store: Store) -> tuple:
    cases = store.search(limit=500).cases
    return (cases, [store.case(c.id).detail for c in cases], [store.reviews(c.id) for c in cases],
            store.users(), store.audit_log(limit=500))


def _media(root) -> dict:
    """Every file under the media folder but the partial case folders (attempts still running)."""
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and ".partial" not in p.relative_to(root).parts}


@pytest.fixture
def filled(store, make_case):
    """A store with users, a reviewed case with its case folder (as the engine leaves it), a queued one whose
    attempt left a partial folder; returns the reviewer's token."""
    token = store.add_user("dr r", "reviewer")
    reviewer = store.authenticate(token)
    done = make_case("done", patient="P-1")
    waiting = make_case("waiting")
    shared = store.media.root / "shared"
    (shared / done.id / "frames" / "display").mkdir(parents=True)
    (shared / done.id / "frames" / "display" / "0000000.jpg").write_bytes(b"frame 0")
    (shared / done.id / "embeddings.npy").write_bytes(b"vectors")
    (shared / ".partial" / f"{waiting.id}-w-1").mkdir(parents=True)
    (shared / ".partial" / f"{waiting.id}-w-1" / "half.jpg").write_bytes(b"half")
    store.finish(store.claim("w"), CaseResult("active", "active disease", "v1", score=0.9, detail={"t": [1, 2]}))
    store.add_review(done.id, reviewer, "active", True, "confirmed")
    return token


def _empty_place(place, postgres_factory, tmp_path):
    if place.backend == "sqlite":
        return tmp_path / "restored", None
    return postgres_factory.new_database(), tmp_path / "restored-media"


def test_a_backup_restores_into_an_empty_place_as_it_was(store, place, filled, tmp_path, request):
    out = store.backup(tmp_path / "backup")
    info = json.loads((out / "backup.json").read_text())
    assert (info["backend"], info["revision"], info["media_files"], info["case_folders"]) == (
        place.backend, store.revision, 2, 1)
    assert not (out / "media" / "shared" / ".partial").exists()
    cluster = request.getfixturevalue("postgres") if place.backend == "postgresql" else None
    target, media = _empty_place(place, cluster, tmp_path)
    assert restore(out, target, media)["revision"] == store.revision
    with Store.open(target, media) as restored:
        assert _contents(restored) == _contents(store)
        assert _media(restored.media.root) == _media(store.media.root)  # the case folder with its frames too
        done = restored.search(status="done").cases[0]
        assert (restored.media.root / "shared" / done.id / "frames" / "display" / "0000000.jpg").is_file()
        assert restored.authenticate(filled).name == "dr r"
        assert restored.claim("w2").case_id == store.search(status="queued").cases[0].id
    with pytest.raises(StoreError, match="holds a store already|not empty"):
        restore(out, target, media)


def test_a_second_backup_into_the_same_folder_replaces_the_first(store, filled, make_case, tmp_path):
    store.backup(tmp_path / "backup")
    make_case("later")
    out = store.backup(tmp_path / "backup")
    assert json.loads((out / "backup.json").read_text())["media_files"] == 3
    assert sorted(p.name for p in out.iterdir()) in (["backup.json", "media", "store.sqlite3"],
                                                      ["backup.json", "media", "store.pgdump"])


def test_restore_refuses_what_is_not_a_backup_of_this_backend_or_version(store, place, filled, tmp_path):
    with pytest.raises(StoreError, match="not a mucosa store backup"):
        restore(tmp_path, tmp_path / "x")
    out = store.backup(tmp_path / "backup")
    other = "postgresql+psycopg://u@/db?host=/nowhere" if place.backend == "sqlite" else tmp_path / "folder"
    with pytest.raises(StoreError, match=f"backup of a {place.backend} store"):
        restore(out, other, tmp_path / "m")
    info = json.loads((out / "backup.json").read_text())
    (out / "backup.json").write_text(json.dumps({**info, "revision": "0099"}))
    with pytest.raises(UnknownRevision, match="revision 0099"):
        restore(out, tmp_path / "y", tmp_path / "m")


def test_a_backup_never_goes_into_around_or_over_the_store(store, filled, tmp_path):
    place = store.place
    inside = [p for p in (place.folder, place.media, place.media and place.media / "shared") if p is not None]
    around = [p.parent for p in (place.folder, place.media) if p is not None]
    before = _media(store.media.root)
    for out in inside + around:
        with pytest.raises(OutputError, match="the store's own files"):
            store.backup(out)
    assert _media(store.media.root) == before and len(store.search().cases) == 2


def test_a_store_that_needs_an_upgrade_is_backed_up_at_its_own_revision(place, tmp_path):
    """What the migration's message advises (back it up, then upgrade) works: the backup records the old
    revision, and the store restored from it needs the upgrade too."""
    from mucosa.store import MigrationNeeded, head_revision
    from mucosa.store.backup import backup_store
    from store_revisions import FIRST, first_revision_store

    first_revision_store(place.location, place.media)
    out = backup_store(place.location, tmp_path / "backup", place.media)
    assert json.loads((out / "backup.json").read_text())["revision"] == FIRST != head_revision()
    if place.backend == "sqlite":
        restore(out, tmp_path / "restored")
        with pytest.raises(MigrationNeeded):
            Store.open(tmp_path / "restored")
