"""Users and roles: tokens shown once and kept only as hashes; what each role may do."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
from sqlalchemy import create_engine, inspect, text

from mucosa.store import CaseResult, NotAllowed, NotFound, Role, StoreError
from mucosa.store.auditlog import operator
from mucosa.store.tokens import chosen_token_name, split_token


def _everything_stored(store) -> str:
    """Every value of every table, as text (and, for SQLite, the database files' bytes)."""
    url = store.place.url.render_as_string(hide_password=False)
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = [repr(row) for table in inspect(connection).get_table_names()
                for row in connection.execute(text(f"SELECT * FROM {table}"))]
    engine.dispose()
    text_found = "\n".join(rows)
    if store.place.database_file is not None:
        for path in store.place.database_file.parent.glob("store.sqlite3*"):
            text_found += path.read_bytes().decode("latin-1")
    return text_found


def test_a_token_is_shown_once_and_only_its_hash_is_kept(store):
    token = store.add_user("dr smith", "reviewer")
    token_id, _ = split_token(token)
    secret = token.split("_", 2)[2]
    stored = _everything_stored(store)
    assert "dr smith" in stored and token_id in stored and "scrypt$" in stored
    assert secret not in stored and token not in stored
    user = store.authenticate(token)
    assert (user.name, user.role) == ("dr smith", Role.REVIEWER)


@pytest.mark.parametrize("wrong", ["", "mucosa_000000000000_nothing", "not a token", "x" * 300, "\udcff"])
def test_a_wrong_token_authenticates_nobody(store, wrong):
    token = store.add_user("dr smith", "viewer")
    assert store.authenticate(wrong) is None
    assert store.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None


def test_a_disabled_user_or_a_renewed_token_stops_the_old_token_at_once(store):
    token = store.add_user("dr smith", "reviewer")
    assert store.authenticate(token) is not None  # now trusted by this process for a while
    store.disable_user("dr smith")
    assert store.authenticate(token) is None
    store.enable_user("dr smith")
    assert store.authenticate(token).name == "dr smith"
    fresh = store.renew_token("dr smith")
    assert store.authenticate(token) is None
    assert store.authenticate(fresh).name == "dr smith"


def test_another_process_disabling_a_user_counts_here_within_the_trust_time(store, place, monkeypatch):
    import mucosa.store.store as store_module

    now = [1000.0]
    monkeypatch.setattr(store_module, "time", SimpleNamespace(monotonic=lambda: now[0]))
    token = store.add_user("dr smith", "reviewer")
    assert store.authenticate(token).name == "dr smith" and store.users(max_age=10)[0].active
    other = place.open()  # another server, or `mucosa users disable`
    other.disable_user("dr smith")
    other.close()
    now[0] += store_module.TRUST_SECONDS - 1
    assert store.authenticate(token).name == "dr smith"  # trusted here for a while (no read of the store)
    assert store.users(max_age=store_module.TRUST_SECONDS)[0].active and not store.users()[0].active
    now[0] += 2
    assert store.authenticate(token) is None and not store.users(max_age=store_module.TRUST_SECONDS)[0].active


def test_a_token_sent_by_many_requests_at_once_is_checked_once(store, monkeypatch):
    import mucosa.store.users as users_module

    token, checks = store.add_user("dr smith", "viewer"), []
    check = users_module.verify_token
    monkeypatch.setattr(users_module, "verify_token", lambda *args: checks.append(1) or check(*args))
    with ThreadPoolExecutor(8) as pool:
        found = list(pool.map(store.authenticate, [token] * 16))
    assert {user.name for user in found} == {"dr smith"} and len(checks) == 1


def test_users_are_unique_by_name_and_roles_are_checked(store):
    store.add_user("dr smith", "viewer")
    with pytest.raises(StoreError, match="exists already"):
        store.add_user("dr smith", "admin")
    with pytest.raises(StoreError, match="is not one of viewer, reviewer, admin"):
        store.add_user("dr jones", "surgeon")
    with pytest.raises(StoreError, match="printable"):
        store.add_user("  ", "viewer")
    with pytest.raises(NotFound):
        store.renew_token("nobody")
    assert [u.name for u in store.users()] == ["dr smith"]


def test_the_roles_are_the_ones_the_command_and_the_api_offer():
    from mucosa.choices import ROLES
    from mucosa.service.schemas import Me

    assert tuple(role.value for role in Role) == ROLES  # least first: Role.rank is the position
    assert Me.model_json_schema()["properties"]["role"]["enum"] == list(ROLES)


def test_roles_allow_viewers_to_read_reviewers_to_review_admins_to_delete_and_manage(store, make_case):
    viewer, reviewer, admin = (store.authenticate(store.add_user(name, name)) for name in Role)
    case = make_case("exam", by=viewer)
    job = store.claim("w")
    store.finish(job, CaseResult("active", "active disease", "v1", score=0.9))
    with pytest.raises(NotAllowed, match="viewer.*may not review"):
        store.add_review(case.id, viewer, "active", True)
    store.add_review(case.id, reviewer, "active", True)
    for who in (viewer, reviewer):
        with pytest.raises(NotAllowed, match="delete"):
            store.delete_case(case.id, by=who)
        with pytest.raises(NotAllowed, match="add users"):
            store.add_user("intruder", "admin", by=who)
    store.add_user("dr new", "viewer", by=admin)
    store.set_role("dr new", "reviewer", by=admin)
    assert store.user("dr new").role is Role.REVIEWER
    store.delete_case(case.id, by=admin)
    disabled = store.disable_user("dr new", by=admin)
    with pytest.raises(NotAllowed, match="disabled user"):
        store.add_review(case.id, disabled, "active", True)
    actions = [(e.actor, e.action) for e in store.audit_log()]
    assert ("admin", "case.delete") in actions and ("admin", "user.role") in actions
    assert (operator(), "user.add") in actions and ("reviewer", "case.review") in actions
    assert operator().startswith("cli:") and operator() != "cli:" and "local" not in {a for a, _ in actions}


def test_the_laptop_token_is_an_admin_only_while_a_server_runs_with_it(store, place, clock):
    laptop, other = "my laptop secret 1", "another server's secret"
    admin = store.use_token(laptop)
    assert admin.role is Role.ADMIN and admin.name == chosen_token_name(laptop) and admin.name.startswith("token-")
    assert store.authenticate(laptop).name == admin.name
    assert laptop not in _everything_stored(store)
    with place.open(clock=clock) as restarted:  # a server started without --token: the old token is nothing
        assert restarted.authenticate(laptop) is None
        second = restarted.use_token(other)  # a second server, another token: another user, nothing overwritten
        assert second.id != admin.id and restarted.authenticate(other).id == second.id
        assert restarted.authenticate(laptop) is None
    assert store.authenticate(laptop).id == admin.id and store.authenticate(other) is None
    with place.open(clock=clock) as restarted:
        assert restarted.use_token(laptop).id == admin.id  # the same user on the next start
        restarted.disable_user(admin.name)
        assert restarted.authenticate(laptop) is None
        with pytest.raises(StoreError, match=f"{admin.name}, was disabled"):  # not undone by a restart
            restarted.use_token(laptop)
        assert not restarted.user(admin.name).active
    for short in ("x", "fifteen chars.."):
        with pytest.raises(StoreError, match="--token must be 16 to 200 characters"):
            store.use_token(short)
    store.add_user("admin", "viewer")  # no name a --token user could collide with
    with pytest.raises(StoreError, match="kept for the tokens"):
        store.add_user("token-0123456789ab", "viewer")


def test_junk_tokens_are_refused_without_a_hash(store, monkeypatch):
    real = store.add_user("dr smith", "reviewer")
    store.use_token("the laptop's own token")  # a user without a token id, whose token is not in the store
    token_id = split_token(real)[0]
    hashes = []
    monkeypatch.setattr(hashlib, "scrypt", lambda *a, **k: hashes.append(1) or b"\0" * 32)
    junk = ["x", "s3cret", "Bearer abc", "mucosa_" + "g" * 12 + "_" + "a" * 43, "mucosa_0123456789ab",
            "mucosa_0123456789ab_" + "a" * 43, "mucosa_0123456789ab_" + "é" * 43, "a" * 10_000, "\x00" * 20,
            f"mucosa_{token_id}_"]
    assert [store.authenticate(token) for token in junk] == [None] * len(junk)
    assert hashes == []  # malformed, or an id no user has: no scrypt
    assert store.authenticate("the laptop's own token") is not None and hashes == []  # known in memory
    assert store.authenticate(f"mucosa_{token_id}_{'a' * 43}") is None and hashes == [1]  # a user's id: checked
