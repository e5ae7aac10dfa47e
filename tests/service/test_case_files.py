"""A done case's own files (``media/shared/CASE_ID``: frames, embeddings) in a backup restored, missing from the
store, and moved into place by the worker while a frame is read; the model version the store records."""

import os

import pytest

from mucosa.service.cases import model_version
from mucosa.service.framestore import FrameStore
from mucosa.service.worker import LiveCase
from mucosa.store import restore
from serving import patient_images, serving, upload, wait_done

ROUTES = ("frames/0.jpg", "frames/0.png", "frames/0.png?gradcam=1", "similar", "report.json", "report.html",
          "report.pdf")


@pytest.fixture(scope="module")
def done(atlas_engine, atlas_run, tmp_path_factory):
    """A server on a store of its own with a done case of synthetic images: (client, case, its URL)."""
    store = tmp_path_factory.mktemp("case-files") / "store"
    with serving(atlas_engine, store=str(store)) as (client, _):
        case = wait_done(client, upload(client, "/v1/cases", *patient_images(atlas_run.cohort, "P01")).json()["id"])
        assert case["status"] == "done"
        yield client, case, f"/v1/cases/{case['id']}"


def _answers(client, base: str) -> dict:
    answers = {route: client.get(f"{base}/{route}") for route in ROUTES}
    assert all(answer.status_code == 200 for answer in answers.values()), {
        route: answer.text[:200] for route, answer in answers.items() if answer.status_code != 200}
    return answers


def test_a_restored_backup_serves_a_done_cases_frames_similar_cases_and_reports(done, atlas_engine, tmp_path):
    client, case, base = done
    before = _answers(client, base)
    backup = client.app.state.store.backup(tmp_path / "backup")
    info = restore(backup, tmp_path / "restored")
    with serving(atlas_engine, store=str(tmp_path / "restored")) as (restored, _):
        after = _answers(restored, base)
        assert restored.get(base).json()["timeline"] == case["timeline"]
    assert info["case_folders"] == 1
    for route in ("frames/0.jpg", "frames/0.png", "frames/0.png?gradcam=1", "similar"):
        assert after[route].content == before[route].content, route
    for key in ("case", "verdict", "key_frames", "atlas", "exam", "review"):
        assert after["report.json"].json()[key] == before["report.json"].json()[key], key


def test_a_done_case_whose_files_are_missing_answers_409_everywhere(done):
    client, case, base = done
    folder = client.app.state.cases.folders.final(case["id"])
    aside = folder.with_name("moved-away")
    os.replace(folder, aside)
    try:
        for route in ROUTES:
            answer = client.get(f"{base}/{route}")
            assert answer.status_code == 409, (route, answer.status_code, answer.text[:300])
            reason = answer.json()["detail"]
            assert reason.startswith(f"case {case['id']} is done, but its frames and embeddings are missing") and \
                "mucosa store backup" in reason and "\n" not in reason, reason
        assert client.get(base).json()["timeline"] == case["timeline"]  # the rest is the store's: still there
        assert client.get(f"{base}/timeline.csv").status_code == 200
    finally:
        os.replace(aside, folder)
    assert client.get(f"{base}/frames/0.jpg").status_code == 200


@pytest.mark.parametrize("route", ["frames/3.jpg", "frames/3.png", "report.html"])
def test_a_frame_read_while_its_worker_moves_it_into_place_is_read_from_there(done, monkeypatch, route):
    """The worker renames its attempt's folder into the case's folder between the route finding a frame and
    reading it (a hook on the frame's path does it, so the race is run the same way every time)."""
    client, case, base = done
    cases = client.app.state.cases
    folder = cases.folders.final(case["id"])
    expected = client.get(f"{base}/{route}").content
    partial = cases.folders.root / ".partial" / f"{case['id']}-test-1"
    partial.parent.mkdir(exist_ok=True)
    os.replace(folder, partial)  # the case as its worker holds it, just before the end
    live = LiveCase(case["id"], partial, FrameStore.load(partial / "frames"), [], None, timeline=case["timeline"],
                    verdict=case["verdict"])
    monkeypatch.setitem(cases.workers.live, case["id"], live)
    where = FrameStore.display_path

    def moved_after_found(store, number):
        path = where(store, number)
        if partial.exists():
            os.replace(partial, folder)  # the worker's commit, after the path was found, before it is read
        return path

    monkeypatch.setattr(FrameStore, "display_path", moved_after_found)
    try:
        answer = client.get(f"{base}/{route}")
    finally:
        if partial.exists():
            os.replace(partial, folder)
    assert answer.status_code == 200, answer.text[:300]
    if route != "report.html":  # the report says when it was generated
        assert answer.content == expected


def test_the_model_version_names_the_run_of_a_best_ckpt():
    card = {"name": "best.ckpt", "run": "pcle-quick", "weights_sha256": "65c45907c282" + "0" * 52}
    assert model_version(card) == "pcle-quick/best.ckpt:65c45907c282"
    assert model_version({**card, "name": "last.ckpt"}) == "pcle-quick/last.ckpt:65c45907c282"
    assert model_version({**card, "name": "crohn-v3.ckpt"}) == "crohn-v3.ckpt:65c45907c282"  # a name of its own
    assert model_version({**card, "run": None, "weights_sha256": None}) == "best.ckpt:unknown"


def test_the_engine_card_names_the_run_folder(atlas_engine, atlas_run):
    card = atlas_engine.card()
    assert card["run"] == atlas_run.run.name and atlas_run.best.name == "best.ckpt"
    assert model_version(card) == f"{atlas_run.run.name}/best.ckpt:{card['weights_sha256'][:12]}"


def test_serve_says_a_missing_checkpoint_before_a_store_that_needs_an_upgrade(tmp_path, capsys):
    from mucosa.cli import main
    from store_revisions import first_revision_store

    first_revision_store(tmp_path / "old-store")
    assert main(["serve", "--checkpoint", str(tmp_path / "runs" / "best.ckpt"), "--store",
                 str(tmp_path / "old-store")]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(errors) == 1 and "checkpoint not found" in errors[0] and "upgrade" not in errors[0], errors
