"""The atlas in the web service: unfamiliar frames on the timeline, the verdict `unfamiliar`, the atlas's vote, and
``GET /v1/cases/{id}/similar`` (its own patient never returned, k's bounds, 404 and 409), with a tiny model that
``mucosa train`` wrote with its atlas; and a checkpoint without one."""

import shutil
import threading

import numpy as np
import pytest

from mucosa.inference.verdict import GATHERING, NEAREST_NOTE
from serving import patient_images, serving, sine_png, upload, wait_done


@pytest.fixture(scope="module")
def bare_engine(atlas_run, tmp_path_factory):
    """The same checkpoint alone in a folder: no atlas beside it."""
    from mucosa.service.engine import Engine

    path = tmp_path_factory.mktemp("bare") / "best.ckpt"
    shutil.copyfile(atlas_run.best, path)
    return Engine(path, device="cpu")


def test_card_and_timeline_carry_the_atlas(atlas_engine, atlas_run):
    images = patient_images(atlas_run.cohort, "P01")
    with serving(atlas_engine) as (client, _):
        card = client.get("/v1/model").json()
        assert card["atlas"]["frames"] > 0 and card["atlas"]["calibrated"] and card["atlas_note"] is None
        case = wait_done(client, upload(client, "/v1/cases", *images).json()["id"])
    assert case["status"] == "done"
    rows = [row for row in case["timeline"] if not row["dropped"]]
    assert rows and all(isinstance(row["unfamiliar"], bool) for row in rows)
    assert all(row["unfamiliarity"] >= 0 for row in rows)
    share = np.mean([row["unfamiliar"] for row in rows])
    assert case["verdict"]["unfamiliar"] == pytest.approx(share, abs=1e-4)
    vote = case["verdict"]["atlas_vote"]
    assert vote["label"] in card["classes"] and 0 < vote["share"] <= 1
    assert atlas_engine.atlas.textures is not None  # mucosa train wrote the texture view
    ratio = case["verdict"]["unfamiliarity_ratio"]
    assert ratio > 0 and (ratio > 1) == (case["verdict"]["label"] == "unfamiliar")  # the one rule: the case as a whole
    embedding_only = np.median([row["unfamiliarity"] for row in rows]) / atlas_engine.atlas.calibration.embedding_scale
    assert ratio != pytest.approx(embedding_only / atlas_engine.atlas.calibration.case_threshold)  # textures count


def test_a_running_case_gathers_frames_before_the_atlas_judges_it(atlas_engine, bare_engine, atlas_run):
    """Live, a case with fewer used frames than score an atlas case has no label yet (the words 'gathering
    frames', no class); its last frame carries its own verdict all the same, the rule of a finished case. Without
    an atlas, every running verdict with a used frame has its label."""
    from mucosa.inference.atlas import CASE_CALIBRATION_FRAMES

    images = patient_images(atlas_run.cohort, "P01")
    rows = list(atlas_engine.frames(images))
    used = sum(not row["dropped"] for row in rows)
    assert 1 < used < CASE_CALIBRATION_FRAMES
    running = [row["case"] for row in rows[:-1] if row["case"]["frames"]]
    assert running and all((v["label"], v["class"], v["text"]) == (None, None, GATHERING) for v in running)
    assert all(v["needed"] == CASE_CALIBRATION_FRAMES for v in running)  # how many it must reach
    last = rows[-1]["case"]
    assert last["label"] and last["text"] == last["label"] != GATHERING and last["atlas_vote"]
    assert last["needed"] is None
    bare = [row["case"] for row in bare_engine.frames(images) if row["case"]["frames"]]
    assert len(bare) == used and all(v["label"] and v["text"] == v["label"] for v in bare)


def test_similar_cases_leave_out_the_own_patient(atlas_engine, atlas_run):
    images = patient_images(atlas_run.cohort, "P01")
    with serving(atlas_engine) as (client, _):
        case_id = upload(client, "/v1/cases", *images).json()["id"]
        wait_done(client, case_id)
        answer = client.get(f"/v1/cases/{case_id}/similar", params={"k": 3})
        assert answer.status_code == 200, answer.text
        found = answer.json()["similar"]
        assert answer.json()["unfamiliar"] is False and answer.json()["reason"] is None
        assert 1 <= len(found) <= 3 and all(case["patient"] != "P01" for case in found)
        assert "P01" in set(atlas_engine.atlas.records.patients.tolist())  # so leaving it out is a choice
        closest = found[0]["closest"][0]
        assert closest["thumbnail"].startswith("data:image/png;base64,")
        assert closest["query_frame"] in {row["frame"] for row in client.get(f"/v1/cases/{case_id}").json()["timeline"]}
        for k in (0, 21, "many"):
            bad = client.get(f"/v1/cases/{case_id}/similar", params={"k": k})
            assert bad.status_code == 422 and "k" in bad.json()["detail"]
        assert client.get("/v1/cases/nobody/similar").status_code == 404


def test_similar_cases_leave_out_the_patient_the_exam_names(atlas_engine, atlas_run, tmp_path):
    """P01's images saved again (other bytes, so not the atlas's files): named P01 in the exam, P01 never comes
    back; without the exam field it does, so leaving it out is the exam field's doing."""
    from PIL import Image

    copies = []
    for n, path in enumerate(patient_images(atlas_run.cohort, "P01")):
        pixels = np.array(Image.open(path))
        pixels.flat[0] ^= 1
        copies.append(tmp_path / f"copy-{n}.png")
        Image.fromarray(pixels).save(copies[-1])
    with serving(atlas_engine) as (client, _):
        found = {}
        for patient in ("P01", None):
            case_id = upload(client, "/v1/cases", *copies, data={"patient": patient} if patient else {}).json()["id"]
            wait_done(client, case_id)
            answer = client.get(f"/v1/cases/{case_id}/similar", params={"k": 20})
            found[patient] = {case["patient"] for case in answer.json()["similar"]}
            report = client.get(f"/v1/cases/{case_id}/report.json").json()
            found[patient, "report"] = {case["patient"] for case in report["atlas"]["similar"]}
    assert "P01" not in found["P01"] and "P01" not in found["P01", "report"] and found["P01"]
    assert "P01" in found[None]


def test_similar_waits_for_a_usable_frame(atlas_engine, black_png, tmp_path, monkeypatch):
    release = threading.Event()
    frames = atlas_engine.frames

    def held_frames(*args, **kwargs):  # the case stays running until the test has asked
        release.wait(30)
        yield from frames(*args, **kwargs)

    monkeypatch.setattr(atlas_engine, "frames", held_frames)
    with serving(atlas_engine) as (client, root):
        case_id = upload(client, "/v1/cases", black_png).json()["id"]
        answer = client.get(f"/v1/cases/{case_id}/similar")
        assert answer.status_code == 409 and "similar cases come once it is done" in answer.json()["detail"]
        release.set()
        wait_done(client, case_id)
        # the black image passes this model's gate (threshold 0): remove its embeddings to stand for no usable frame
        for path in client.app.state.cases.folders.final(case_id).rglob("embeddings.npy"):
            np.save(path, np.zeros((0, atlas_engine.atlas.model.embedding_size), np.float32))
        answer = client.get(f"/v1/cases/{case_id}/similar")
        assert answer.status_code == 409 and "usable frame" in answer.json()["detail"]


def test_a_foreign_image_is_unfamiliar(atlas_engine, tmp_path):
    with serving(atlas_engine) as (client, _):
        case = wait_done(client, upload(client, "/v1/cases", sine_png(tmp_path)).json()["id"])
        nearest = client.get(f"/v1/cases/{case['id']}/similar", params={"k": 2}).json()
    assert all(row["unfamiliar"] for row in case["timeline"])
    assert case["verdict"]["label"] == "unfamiliar" and case["verdict"]["class"] is None
    assert case["verdict"]["unfamiliar"] == 1.0
    # its similar cases say they are the nearest, not similar, and the vote no second opinion (the fields kept)
    assert nearest["unfamiliar"] is True and len(nearest["similar"]) == 2 and nearest["atlas_vote"]
    assert nearest["reason"] == f"{case['verdict']['reason']} {NEAREST_NOTE}"
    assert "no second opinion" in NEAREST_NOTE and "nearest, not similar" in NEAREST_NOTE


def test_one_still_image_is_judged_by_the_atlas_too(atlas_engine, atlas_run, tmp_path):
    """``POST /v1/predict``: a foreign image is `unfamiliar` (no class), an in-domain one keeps its class and
    says its share of unfamiliar frames; the rule is the cases' rule."""
    with serving(atlas_engine) as (client, _):
        foreign = upload(client, "/v1/predict", sine_png(tmp_path)).json()["verdict"]
        own = [upload(client, "/v1/predict", path).json() for path in patient_images(atlas_run.cohort, "P01")[:3]]
    assert foreign["label"] == "unfamiliar" and foreign["class"] is None and foreign["unfamiliar"] == 1.0
    threshold = atlas_engine.atlas.calibration.case_threshold
    for answer in own:
        verdict = answer["verdict"]
        assert verdict["unfamiliar"] in (0.0, 1.0)  # one frame: marked or not
        assert (verdict["label"] == "unfamiliar") == (verdict["class"] is None)
    assert any(answer["verdict"]["class"] is not None for answer in own), threshold


def test_without_an_atlas_it_says_it_cannot_tell(bare_engine, atlas_run):
    images = patient_images(atlas_run.cohort, "P02")[:4]
    with serving(bare_engine) as (client, _):
        card = client.get("/v1/model").json()
        assert card["atlas"] is None and "cannot tell" in card["atlas_note"]
        case_id = upload(client, "/v1/cases", *images).json()["id"]
        case = wait_done(client, case_id)
        assert case["verdict"]["unfamiliar"] is None and case["verdict"]["atlas_vote"] is None
        assert all(row["unfamiliar"] is None for row in case["timeline"])
        still = upload(client, "/v1/predict", images[0]).json()["verdict"]
        assert still["unfamiliar"] is None and still["class"] is not None
        answer = client.get(f"/v1/cases/{case_id}/similar")
        assert answer.status_code == 409 and "no atlas" in answer.json()["detail"]


def test_the_report_carries_the_vote_the_unfamiliar_share_and_the_similar_cases(atlas_engine, atlas_run):
    images = patient_images(atlas_run.cohort, "P01")
    with serving(atlas_engine) as (client, _):
        case_id = upload(client, "/v1/cases", *images).json()["id"]
        case = wait_done(client, case_id)
        atlas = client.get(f"/v1/cases/{case_id}/report.json").json()["atlas"]
        page = client.get(f"/v1/cases/{case_id}/report.html").text
        pdf = client.get(f"/v1/cases/{case_id}/report.pdf")
    assert atlas["vote"] == case["verdict"]["atlas_vote"] and atlas["unfamiliar"] == case["verdict"]["unfamiliar"]
    assert 1 <= len(atlas["similar"]) <= 5 and all(c["patient"] != "P01" for c in atlas["similar"])
    assert "Atlas vote (second opinion)" in page and "Similar case 1" in page
    assert pdf.status_code == 200 and pdf.content.startswith(b"%PDF")


def test_a_report_without_an_atlas_says_it_cannot_tell(bare_engine, atlas_run):
    with serving(bare_engine) as (client, _):
        case_id = upload(client, "/v1/cases", *patient_images(atlas_run.cohort, "P02")[:2]).json()["id"]
        wait_done(client, case_id)
        atlas = client.get(f"/v1/cases/{case_id}/report.json").json()["atlas"]
    assert not atlas["available"] and "cannot tell" in atlas["note"] and atlas["similar"] == []


def test_a_damaged_atlas_beside_the_checkpoint_stops_the_service(atlas_run, tmp_path):
    """As predict and stream refuse it: the service does not start and judge without the atlas it was given."""
    import json

    from mucosa.inference.atlas import AtlasError
    from mucosa.service.engine import Engine

    shutil.copyfile(atlas_run.best, tmp_path / "best.ckpt")
    shutil.copytree(atlas_run.best.parent / "atlas", tmp_path / "atlas")
    manifest = json.loads((tmp_path / "atlas" / "atlas.json").read_text())
    (tmp_path / "atlas" / "atlas.json").write_text(json.dumps({**manifest, "version": 2}))
    with pytest.raises(AtlasError, match=r"atlas\.json: atlas format version 2.*move the folder away"):
        Engine(tmp_path / "best.ckpt", device="cpu")
    shutil.rmtree(tmp_path / "atlas")
    assert Engine(tmp_path / "best.ckpt", device="cpu").atlas is None  # moved away: it serves, and says it cannot tell


def test_an_uncalibrated_atlas_is_said_once_to_be_unable_to_tell(atlas_run, tmp_path, caplog):
    """An atlas that could not calibrate (one patient, too few validation frames) shows similar cases but cannot
    tell unfamiliar frames: the service logs it once and its card carries the note, as for no atlas."""
    import logging

    from mucosa.inference.atlas import load
    from mucosa.service.atlas import NOT_CALIBRATED, atlas_beside, atlas_card

    shutil.copyfile(atlas_run.best, tmp_path / "best.ckpt")
    atlas = load(atlas_run.best.parent / "atlas")
    atlas.calibration = None
    atlas.save(tmp_path / "atlas")
    with caplog.at_level(logging.WARNING, logger="mucosa"):
        found, note = atlas_beside(tmp_path / "best.ckpt", atlas.model.weights_sha256)
    assert found is not None and found.calibration is None and note == NOT_CALIBRATED and "not detected" in note
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [note]
    assert atlas_card(found, note)["note"] == note and not atlas_card(found, note)["calibrated"]
