"""``mucosa store``, ``users`` and ``audit`` from the command line: a backup restored is the same store (SQLite
and PostgreSQL), and the reviewed cases exported are a manifest ``mucosa train`` trains on."""

import csv
import hashlib

import pytest

from mucosa.cli import main
from mucosa.data.manifest import load_manifest
from mucosa.store import CaseResult, MediaFile, Store

pytestmark = pytest.mark.usefixtures("cheap_tokens")

FORMULAS = {0: "=1+1", 1: "+cmd|' /C calc'!A0", 2: "-2+3"}  # patient ids a spreadsheet would run


@pytest.fixture(params=["sqlite", "postgresql"])
def places(request, tmp_path):
    """Two places on one backend, the second empty: ``(location, extra arguments)`` of each."""
    if request.param == "sqlite":
        return [(str(tmp_path / name), []) for name in ("store", "restored")]
    cluster = request.getfixturevalue("postgres")
    return [(cluster.new_database(), ["--media", str(tmp_path / f"{name}-media")]) for name in ("store", "restored")]


def opened(place) -> Store:
    location, extra = place
    return Store.open(location, extra[1] if extra else None)


def cases_of(store: Store) -> list[tuple]:
    """What a store holds, in a form two stores can be compared by."""
    found = []
    for case in store.search().cases:
        full = store.case(case.id)
        reviews = [(r.reviewer, r.histology, r.agrees, r.note, r.created_at) for r in store.reviews(case.id)]
        media = [hashlib.sha256(store.media_path(m).read_bytes()).hexdigest() for m in case.media]
        found.append((case.id, case.name, case.patient, case.status.value, case.verdict, case.score, full.detail,
                      full.summary, reviews, media))
    return found


def test_a_backup_restored_through_the_cli_is_the_same_store(places, tmp_path, capsys):
    (location, extra), (target, target_extra) = places
    assert main(["store", "upgrade", "--store", location, *extra]) == 0
    with opened(places[0]) as store:
        token = store.add_user("dr r", "reviewer")
        reviewer = store.authenticate(token)
        for name, verdict in (("first", "active"), ("second", "control")):
            sha = store.put_media(f"video {name}".encode(), ".mpg")
            case = store.add_case(name, [MediaFile(sha, f"{name}.mpg")], patient=f"P-{name}")
            store.finish(store.claim("w"), CaseResult(verdict, verdict, "best@1", score=0.5, detail={"timeline": [1]},
                                                      summary={"frames_dropped": 0}))
            store.add_review(case.id, reviewer, "active", verdict == "active", "note")
        before, log = cases_of(store), [(e.action, e.actor) for e in store.audit_log()]
    assert main(["store", "backup", str(tmp_path / "backup"), "--store", location, *extra]) == 0
    capsys.readouterr()
    assert main(["store", "restore", str(tmp_path / "backup"), "--store", target, *target_extra]) == 0
    with opened(places[1]) as restored:
        assert cases_of(restored) == before and len(before) == 2
        assert [(e.action, e.actor) for e in restored.audit_log()] == log
        assert restored.authenticate(token).name == "dr r"
    assert main(["store", "restore", str(tmp_path / "backup"), "--store", target, *target_extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("holds a store already" in err[0] or "not empty" in err[0]), err


def test_users_from_the_command_line(tmp_path, capsys):
    store = str(tmp_path / "store")
    assert main(["store", "upgrade", store]) == 0
    assert main(["users", "add", "dr who", "--role", "reviewer", "--store", store]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["users", "add", "dr who", "--role", "viewer", "--store", store]) == 2
    assert "exists already" in capsys.readouterr().err
    assert main(["users", "list", "--store", store]) == 0
    assert "dr who  reviewer  yes" in capsys.readouterr().out
    with Store.open(store) as opened_store:
        assert opened_store.authenticate(token).name == "dr who"
    assert main(["users", "token", "dr who", "--store", store]) == 0
    renewed = capsys.readouterr().out.strip().splitlines()[-1]
    assert main(["users", "disable", "dr who", "--store", store]) == 0
    with Store.open(store) as opened_store:
        assert opened_store.authenticate(token) is None and opened_store.authenticate(renewed) is None
    assert main(["users", "enable", "dr who", "--store", store]) == 0
    with Store.open(store) as opened_store:
        assert opened_store.authenticate(renewed).name == "dr who"


def test_reviewed_cases_exported_are_a_manifest_train_takes(tmp_path, capsys):
    """...with values a spreadsheet would run as formulas written as text, and read back as they were; and never
    into the store itself."""
    from mucosa.data.synth import synthesize_cohort

    cohort = load_manifest(synthesize_cohort(tmp_path / "cohort", patients=9, per_patient=3, size=40, seed=3))
    store_folder = str(tmp_path / "store")
    assert main(["store", "upgrade", store_folder]) == 0
    with Store.open(store_folder) as store:
        reviewer = store.authenticate(store.add_user("dr r", "reviewer"))
        patients = sorted({r.patient for r in cohort.records})
        typed = {patient: FORMULAS.get(n, patient) for n, patient in enumerate(patients)}
        for patient in patients:  # one case of images per patient, reviewed with its label as histology
            records = [r for r in cohort.records if r.patient == patient]
            media = [MediaFile(store.put_media(r.path), r.path.name) for r in records]
            case = store.add_case(f"exam {patient}", media, kind="images", patient=typed[patient],
                                  region="@SUM(A1)" if patient == patients[-1] else "ileum")
            store.finish(store.claim("w"), CaseResult("active", "active", "best@1", score=0.6))
            store.add_review(case.id, reviewer, records[0].label, records[0].label == "active")
        sha = store.put_media(b"not reviewed", ".png")
        store.add_case("unreviewed", [MediaFile(sha, "x.png")], kind="images")
    database = tmp_path / "store" / "store.sqlite3"
    before = database.read_bytes()
    for inside in (database, tmp_path / "store", tmp_path / "store" / "media" / "m.csv", tmp_path / "store" / "m.csv"):
        assert main(["store", "export", "--reviewed", "-o", str(inside), "--store", store_folder]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "would overwrite the store's own files" in err[0], err
    assert database.read_bytes() == before and not (tmp_path / "store" / "m.csv").exists()
    manifest = tmp_path / "export" / "manifest.csv"
    assert main(["store", "export", "--reviewed", "-o", str(manifest), "--store", store_folder]) == 0
    hint = capsys.readouterr().out
    assert f"mucosa train --manifest {manifest} --config configs/cpu-quick.yaml" in hint, hint
    assert "at least 3 patients of each class" in hint
    exported = load_manifest(manifest)
    assert sorted((r.label, r.patient) for r in exported.records) == sorted((r.label, typed[r.patient])
                                                                           for r in cohort.records)
    assert {r.region for r in exported.records} == {"ileum", "@SUM(A1)"}
    with open(manifest, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {row["region"] for row in rows} == {"ileum", "'@SUM(A1)"}  # text to a spreadsheet
    assert {row["patient"] for row in rows} >= {"'" + formula for formula in FORMULAS.values()}
    config = tmp_path / "quick.yaml"
    config.write_text("model: {size: 32}\npreprocessing: {quality_threshold: 0.0}\n"
                      "split: {mode: patient, test: 0.3, val: 0.3, seed: 1}\n"
                      "training: {epochs: 1, batch_size: 8, threads: 1}\n")
    assert main(["train", "--manifest", str(manifest), "--config", str(config), "--out", str(tmp_path / "run"),
                 "--no-onnx"]) == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "best.ckpt").is_file()


def test_the_audit_from_the_command_line(tmp_path, capsys):
    """``mucosa audit`` prints the figures of the reviewed cases, counting them in words that fit one case."""
    store_folder = str(tmp_path / "store")
    assert main(["store", "upgrade", store_folder]) == 0
    with Store.open(store_folder) as store:
        reviewer = store.authenticate(store.add_user("dr r", "reviewer"))
        case = store.add_case("exam", [MediaFile(store.put_media(b"frame", ".png"), "x.png")], kind="images")
        store.finish(store.claim("w"), CaseResult("active", "active", "best@1", score=0.8))
        store.add_review(case.id, reviewer, "active", True)
    assert main(["audit", "--store", store_folder, "--classes", "healed,active"]) == 0
    out = capsys.readouterr().out
    assert "1 reviewed case counted, classes healed, active, positive active" in out, out
    assert "accuracy" in out and "1/1" in out
