"""A recording that is itself in the atlas, asked about through every entry point (``inference.leave_out``, the
one rule): ``mucosa predict`` with and without a manifest, ``mucosa stream``, ``mucosa atlas search``, the Python
API, the service's cases and similar cases, and ``POST /v1/predict``. None returns the recording's own case
among the similar cases, and all give it the same unfamiliarity, that of its patient left out of the atlas."""

import csv
import dataclasses
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from media import write_gray_clip
from serving import serving, upload, wait_done


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def recorded(atlas_run, tmp_path_factory):
    """A copy of the atlas run whose ``atlas/`` holds the training and validation rows and one video: a test
    patient's 16 images as a lossless clip, that patient's only case in the atlas. Returns (run folder, clip,
    its patient, an image of a training patient, that patient)."""
    from mucosa.data.manifest import load_manifest, write_manifest
    from mucosa.inference.atlas_build import build_atlas

    root = tmp_path_factory.mktemp("recorded")
    shutil.copytree(atlas_run.run.parent, root / "copy", ignore=shutil.ignore_patterns("cache"))
    run = root / "copy" / "run"
    records = load_manifest(run / "split.csv").records
    patient = next(r.patient for r in records if r.split == "test")
    clip = root / "exam.avi"
    write_gray_clip(clip, [np.asarray(Image.open(r.path).convert("L")) for r in records if r.patient == patient])
    video = dataclasses.replace(next(r for r in records if r.patient == patient), path=clip, split="train")
    write_manifest([r for r in records if r.split in ("train", "val")] + [video], root / "atlas.csv")
    build_atlas(run / "best.ckpt", root / "atlas.csv", run / "atlas", parts=("train", "val"))
    trained = next(r for r in records if r.split == "train")
    return run, clip, patient, trained.path, trained.patient


@pytest.fixture(scope="module")
def expected(recorded, tmp_path_factory):
    """What every entry point must give the clip: each used frame's unfamiliarity with its patient left out of
    the atlas (asked directly), and ``mucosa predict``'s unfamiliarity ratio of the file."""
    import mucosa
    from mucosa.inference.atlas import load

    run, clip, patient, _, _ = recorded
    atlas = load(run / "atlas")
    embeddings = mucosa.load(run / "best.ckpt").embed(clip)
    assert not np.isnan(embeddings).any()  # every frame is used: the rows line up
    frames = atlas.scores(embeddings, exclude_patient=patient)
    itself = atlas.scores(embeddings)  # the recording found in the atlas: its own frames are its neighbours
    assert np.median(frames - itself) > 2e-4  # so leaving it out shows, beyond the tolerances below
    return {"frames": frames.tolist(), "atlas": atlas}


def similar_patients(found):
    """The patients of the similar cases (a list of dicts or of ``SimilarCase``), checked not to be empty."""
    assert found, "no similar case to check"
    return {c["patient"] if isinstance(c, dict) else c.patient for c in found}


def unfamiliarity(path):
    return [float(r["unfamiliarity"]) for r in read_csv(path)]


def test_predict_leaves_out_the_recording_with_or_without_a_manifest(recorded, expected, tmp_path):
    from mucosa.data.manifest import Record, write_manifest
    from mucosa.inference.batch import predict

    run, clip, patient, _, _ = recorded
    plain = predict(run / "best.ckpt", [clip], tmp_path / "plain")
    assert unfamiliarity(tmp_path / "plain" / "predictions.csv") == pytest.approx(expected["frames"], abs=1e-4)
    entry = json.loads((tmp_path / "plain" / "similar.json").read_text())["cases"][0]
    assert patient not in similar_patients(entry["similar"])
    # the same bytes under another name, in a manifest naming another patient: the recording is known by its
    # content, and the named patient is left out too
    renamed = tmp_path / "elsewhere" / "renamed.avi"
    renamed.parent.mkdir()
    shutil.copyfile(clip, renamed)
    other = entry["similar"][0]["patient"]  # the nearest other patient: leaving it out must tell
    write_manifest([Record(renamed, expected["atlas"].model.classes[0], other)], tmp_path / "query.csv")
    named = predict(run / "best.ckpt", [tmp_path / "query.csv"], tmp_path / "named")
    entry = json.loads((tmp_path / "named" / "similar.json").read_text())["cases"][0]
    assert not similar_patients(entry["similar"]) & {patient, other}
    assert named.unfamiliarity(named.cases[0]) > plain.unfamiliarity(plain.cases[0])


def test_stream_leaves_out_the_recording_as_predict_does(recorded, expected, tmp_path):
    from mucosa.inference.batch import predict
    from mucosa.inference.stream import run as stream

    run, clip, _, _, _ = recorded
    streamed = stream(run / "best.ckpt", clip, timeline=tmp_path / "timeline.csv", status=None)
    assert unfamiliarity(tmp_path / "timeline.csv") == pytest.approx(expected["frames"], abs=1e-4)
    predicted = predict(run / "best.ckpt", [clip], tmp_path / "predicted")
    assert streamed.unfamiliarity_ratio == pytest.approx(predicted.unfamiliarity(predicted.files[0]), abs=1e-6)


def test_the_python_api_and_atlas_search_leave_out_the_recording(recorded, expected):
    import mucosa
    from mucosa.inference.atlas_search import search_atlas

    run, clip, patient, _, _ = recorded
    classifier = mucosa.load(run / "best.ckpt")
    assert classifier.predict(clip).unfamiliarity.tolist() == pytest.approx(expected["frames"], abs=1e-6)
    assert patient not in similar_patients(classifier.similar_cases(clip, k=20))
    assert patient not in similar_patients(search_atlas(run / "atlas", [clip], k=20).cases[0].view.similar)


def test_the_service_leaves_out_the_recording_as_predict_does(recorded, expected, tmp_path):
    from mucosa.inference.batch import predict
    from mucosa.service.engine import Engine

    run, clip, patient, _, _ = recorded
    with serving(Engine(run / "best.ckpt", device="cpu")) as (client, _):
        case_id = upload(client, "/v1/cases", clip).json()["id"]
        case = wait_done(client, case_id)
        similar = client.get(f"/v1/cases/{case_id}/similar", params={"k": 20}).json()["similar"]
    assert case["status"] == "done", case.get("error")
    assert [row["unfamiliarity"] for row in case["timeline"]] == pytest.approx(expected["frames"], abs=1e-4)
    assert patient not in similar_patients(similar)
    predicted = predict(run / "best.ckpt", [clip], tmp_path / "predicted")
    assert case["verdict"]["unfamiliarity_ratio"] == pytest.approx(predicted.unfamiliarity(predicted.files[0]),
                                                                   abs=1e-4)


def test_one_image_of_the_atlas_is_judged_alike_alone(recorded, tmp_path):
    """``POST /v1/predict``, ``mucosa predict`` and the Python API on one training image: its patient left out."""
    import mucosa
    from mucosa.inference.batch import predict
    from mucosa.service.engine import Engine

    run, _, _, image, patient = recorded
    engine, classifier = Engine(run / "best.ckpt", device="cpu"), mucosa.load(run / "best.ckpt")
    expected = engine.atlas.scores(classifier.embed(image), exclude_patient=patient).tolist()
    assert engine.atlas.scores(classifier.embed(image))[0] < expected[0]  # found in the atlas, it is nearer
    predicted = predict(run / "best.ckpt", [image], tmp_path / "plain")
    assert unfamiliarity(tmp_path / "plain" / "predictions.csv") == pytest.approx(expected, abs=1e-4)
    with serving(engine) as (client, _):
        verdict = upload(client, "/v1/predict", image).json()["verdict"]
    assert verdict["unfamiliarity_ratio"] == pytest.approx(predicted.unfamiliarity(predicted.files[0]), abs=1e-4)
    assert classifier.predict(image).unfamiliarity.tolist() == pytest.approx(expected, abs=1e-6)
