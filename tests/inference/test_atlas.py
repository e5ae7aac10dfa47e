"""The atlas: similar cases never of the query's own patient, the atlas's vote, unfamiliar frames, and its
folder checked on loading like a checkpoint (tiny synthetic embeddings)."""

import hashlib
import json

import numpy as np
import pytest

from mucosa.atomic import OutputError
from mucosa.inference import atlas_index, atlas_store
from mucosa.inference.atlas import (
    CLOSEST_FRAMES,
    NEIGHBOURS_PER_FRAME,
    Atlas,
    AtlasError,
    AtlasFileError,
    AtlasModel,
    FrameRecords,
    load,
)
from mucosa.inference.atlas_store import make_thumbnails
from mucosa.inference.verdict import NO_VERDICT, UNFAMILIAR, verdict_or_unfamiliar

D = 16
CLASSES = ("control", "active")
MODEL = AtlasModel("a" * 64, CLASSES, D)
CENTRES = np.random.default_rng(0).standard_normal((3, D))  # control, active, and a foreign kind of tissue


def normalise(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def frames_near(rng, centre, count, spread=0.6):
    return normalise(centre + spread * rng.standard_normal((count, D)))


def cohort(seed=1, patients=6, per_case=10, prefix="P"):
    """Each patient has a control and an active case: (embeddings, records, thumbnails)."""
    rng = np.random.default_rng(seed)
    embeddings, columns = [], {"cases": [], "patients": [], "labels": [], "frames": [], "files": []}
    for p in range(patients):
        offset = 0.5 * rng.standard_normal(D)
        for c, label in enumerate(CLASSES):
            embeddings.append(frames_near(rng, CENTRES[c] + offset, per_case))
            name = f"{prefix}{p}-{label}"
            for key, values in (("cases", [name] * per_case), ("patients", [f"{prefix}{p}"] * per_case),
                                ("labels", [label] * per_case), ("frames", range(per_case)),
                                ("files", [f"{name}.mp4"] * per_case)):
                columns[key].extend(values)
    embeddings = np.concatenate(embeddings)
    thumbnails = rng.integers(0, 256, (len(embeddings), 6, 6), dtype=np.uint8)
    return embeddings, FrameRecords.of(**columns), thumbnails


@pytest.fixture
def atlas():
    return Atlas(MODEL, *cohort())


def one_line_error(error, *words):
    message = str(error.value)
    assert "\n" not in message and all(word in message for word in words), message


# --- building, growing, saving -------------------------------------------------------------------


def test_save_and_load_round_trip(atlas, tmp_path):
    val, val_records, _ = cohort(seed=2, prefix="V")
    atlas.calibrate(val, val_records.patients)
    folder = atlas.save(tmp_path / "atlas")
    manifest = json.loads((folder / "atlas.json").read_text())
    assert manifest["format"] == "mucosa-atlas" and manifest["version"] == 2
    assert set(manifest["files"]) == {"embeddings.npy", "thumbnails.npy", "frames.csv"}  # exact: no index file
    loaded = load(folder, weights_sha256=MODEL.weights_sha256)
    assert loaded.model == MODEL and loaded.calibration == atlas.calibration and len(loaded) == len(atlas)
    np.testing.assert_array_equal(loaded.embeddings, atlas.embeddings)
    np.testing.assert_array_equal(loaded.thumbnails, atlas.thumbnails)
    assert loaded.records.columns() == atlas.records.columns()
    query = val[:10]
    assert [c.case for c in loaded.similar_cases(query)] == [c.case for c in atlas.similar_cases(query)]
    np.testing.assert_array_equal(loaded.unfamiliar(query).flags, atlas.unfamiliar(query).flags)


def tamper(folder, name):
    data = bytearray((folder / name).read_bytes())
    data[-1] ^= 0xFF
    (folder / name).write_bytes(bytes(data))


def rewrite_manifest(folder, **changes):
    manifest = json.loads((folder / "atlas.json").read_text())
    manifest.update(changes)
    (folder / "atlas.json").write_text(json.dumps(manifest))


def nan_embeddings(folder):
    embeddings = np.load(folder / "embeddings.npy")
    embeddings[3, 0] = np.nan
    np.save(folder / "embeddings.npy", embeddings)
    manifest = json.loads((folder / "atlas.json").read_text())
    manifest["files"]["embeddings.npy"] = hashlib.sha256((folder / "embeddings.npy").read_bytes()).hexdigest()
    (folder / "atlas.json").write_text(json.dumps(manifest))


REFUSALS = {
    "tampered embeddings": (lambda f: tamper(f, "embeddings.npy"), ["embeddings.npy", "SHA-256", "changed"]),
    "tampered records": (lambda f: tamper(f, "frames.csv"), ["frames.csv", "damaged or changed"]),
    "missing thumbnails": (lambda f: (f / "thumbnails.npy").unlink(), ["thumbnails.npy", "missing"]),
    "missing manifest": (lambda f: (f / "atlas.json").unlink(), ["no atlas.json"]),
    "damaged manifest": (lambda f: (f / "atlas.json").write_text("{not json"),
                         ["atlas.json", "unreadable or truncated JSON"]),
    "newer version": (lambda f: rewrite_manifest(f, version=3), ["atlas.json", "version 3", "it knows 2",
                                                                 "upgrade"]),
    "older version": (lambda f: rewrite_manifest(f, version=1), ["atlas.json", "version 1", "case threshold",
                                                                 "build it again"]),
    "unknown version": (lambda f: rewrite_manifest(f, version="one"), ["version 'one'", "knows 2"]),
    "other format": (lambda f: rewrite_manifest(f, format="mucosa-checkpoint"), ["not a mucosa atlas"]),
    "count differs": (lambda f: rewrite_manifest(f, frames=7), ["embeddings.npy", "120 frames", "says 7"]),
    "no model": (lambda f: rewrite_manifest(f, model={}), ["atlas.json", "model is not described"]),
    "non-finite embeddings": (nan_embeddings, ["embeddings.npy", "NaN or infinite"]),
}


@pytest.mark.parametrize("damage", sorted(REFUSALS))
def test_load_refuses_with_one_line(atlas, tmp_path, damage):
    folder = atlas.save(tmp_path / "atlas")
    assert len(load(folder)) == len(atlas)
    change, words = REFUSALS[damage]
    change(folder)
    with pytest.raises(AtlasFileError) as error:
        load(folder)
    one_line_error(error, *words)


def test_load_refuses_another_models_atlas_and_no_atlas(atlas, tmp_path):
    folder = atlas.save(tmp_path / "atlas")
    with pytest.raises(AtlasFileError) as error:
        load(folder, weights_sha256="b" * 64)
    one_line_error(error, str(folder), "another model", "bbbbbbbbbbbb")
    with pytest.raises(AtlasFileError) as error:
        load(tmp_path / "nowhere")
    one_line_error(error, "nowhere", "not found")


def test_a_failed_save_leaves_the_previous_atlas_whole(atlas, tmp_path, monkeypatch):
    folder = atlas.save(tmp_path / "atlas")
    grown = Atlas(MODEL, *cohort(patients=7))

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atlas_store.tables, "write_csv", full_disk)
    with pytest.raises(OutputError):
        grown.save(folder)
    assert len(load(folder)) == len(atlas)


def test_add_grows_the_atlas_and_refuses_another_model(atlas):
    embeddings, records, thumbnails = cohort(seed=3, patients=2, prefix="N")
    atlas.add(MODEL, embeddings, records, thumbnails)
    assert len(atlas) == 160 and atlas.records.cases[-1] == "N1-active"
    found = atlas.similar_cases(embeddings[-10:], k=1)  # frames of N1-active, now in the atlas
    assert found[0].case == "N1-active" and found[0].distance == pytest.approx(0.0, abs=1e-5)
    for other, words in ((AtlasModel("b" * 64, CLASSES, D), ["another model", "weights bbbbbbbbbbbb"]),
                         (AtlasModel("a" * 64, ("normal", "tumour"), D), ["classes normal, tumour"]),
                         (AtlasModel("a" * 64, CLASSES, 8), ["embeddings of 8 numbers"])):
        with pytest.raises(AtlasError) as error:
            atlas.add(other, embeddings, records, thumbnails)
        one_line_error(error, *words)
    with pytest.raises(AtlasError) as error:
        atlas.add(MODEL, embeddings, records, thumbnails)
    one_line_error(error, "'N0-control'", "already in the atlas")
    assert len(atlas) == 160


def test_building_refuses_arrays_that_do_not_fit():
    embeddings, records, thumbnails = cohort(patients=1)
    with pytest.raises(AtlasError, match="L2-normalised"):
        Atlas(MODEL, embeddings * 2, records, thumbnails)
    with pytest.raises(AtlasError, match="20 embeddings, 20 frame records and 19 thumbnails"):
        Atlas(MODEL, embeddings, records, thumbnails[:-1])
    with pytest.raises(AtlasError, match="label active not among"):
        Atlas(AtlasModel("a" * 64, ("control", "other"), D), embeddings, records, thumbnails)
    mixed = FrameRecords.of(["c"] * 20, ["p"] * 20, ["control"] * 10 + ["active"] * 10, range(20), ["f"] * 20)
    with pytest.raises(AtlasError, match="a case is one patient's, with one label"):
        Atlas(MODEL, embeddings, mixed, thumbnails)


def test_make_thumbnails_shrinks_frames_to_gray_squares():
    frames = np.zeros((2, 40, 40), np.uint8)
    frames[:, :20] = 200
    thumbnails = make_thumbnails(frames)
    assert thumbnails.shape == (2, 48, 48) and thumbnails.dtype == np.uint8
    assert thumbnails[0, 0, 0] == 200 and thumbnails[0, -1, -1] == 0
    assert make_thumbnails(frames / 255.0)[1, 0, 0] == 200


# --- similar cases and the vote ------------------------------------------------------------------


def test_own_patient_is_never_returned(atlas):
    query = atlas.embeddings[atlas.records.patients == "P2"]
    assert atlas.similar_cases(query, k=3)[0].patient == "P2"  # its own frames are the nearest
    found = atlas.similar_cases(query, k=12, exclude_patient="P2")
    assert len(found) >= 2 and "P2" not in {case.patient for case in found}
    _, rows = atlas.neighbours(query, NEIGHBOURS_PER_FRAME, exclude_patient="P2")
    assert not set(rows.ravel().tolist()) & set(atlas.patient_rows("P2").tolist())


def test_similar_cases_rank_by_frames_matched_then_distance():
    rng = np.random.default_rng(4)
    a = frames_near(rng, CENTRES[0], 30, spread=0.2)  # near most query frames
    b = frames_near(rng, CENTRES[1], 30, spread=0.2)
    query = np.concatenate([frames_near(rng, CENTRES[0], 3, spread=0.2), b[:1]])  # one frame is b's own
    records = FrameRecords.of(["A"] * 30 + ["B"] * 30, ["pa"] * 30 + ["pb"] * 30, ["control"] * 30 + ["active"] * 30,
                              list(range(30)) * 2, ["a.mp4"] * 30 + ["b.mp4"] * 30)
    thumbnails = np.arange(60, dtype=np.uint8)[:, None, None] * np.ones((1, 4, 4), np.uint8)
    atlas = Atlas(MODEL, np.concatenate([a, b]), records, thumbnails)
    first, second = atlas.similar_cases(query, k=5)
    assert (first.case, first.matched, first.query_frames, first.label) == ("A", 3, 4, "control")
    assert (second.case, second.matched, second.patient) == ("B", 1, "pb")
    assert second.distance == pytest.approx(0.0, abs=1e-5) and first.distance > 0.01  # closer, to one frame only
    expected = np.mean([1 - np.max(a @ q) for q in query[:3]])
    assert first.distance == pytest.approx(expected, abs=1e-5)
    assert len(first.closest) == CLOSEST_FRAMES
    assert [m.distance for m in first.closest] == sorted(m.distance for m in first.closest)
    match = second.closest[0]
    assert (match.row, match.frame, match.file, match.query_frame) == (30, 0, "b.mp4", 3)
    assert match.thumbnail[0, 0] == 30


def test_vote_gives_each_class_share_of_the_neighbours(atlas):
    rng = np.random.default_rng(5)
    active = frames_near(rng, CENTRES[1], 8)
    vote = atlas.vote(active)
    assert vote.label == "active" and vote.shares.sum() == pytest.approx(1.0) and vote.shares[1] > 0.8
    assert vote.frame_shares.shape == (8, 2) and np.allclose(vote.frame_shares.sum(1), 1.0)
    np.testing.assert_allclose(vote.frame_shares.mean(0), vote.shares)
    alone = Atlas(MODEL, *cohort(patients=1))
    with pytest.raises(AtlasError, match="no frame of another patient than 'P0'"):
        alone.vote(active, exclude_patient="P0")


# --- unfamiliar frames ---------------------------------------------------------------------------


def test_calibration_flags_few_in_domain_frames_and_most_foreign_ones(atlas, tmp_path):
    assert atlas.unfamiliar(atlas.embeddings[:5]).flags is None  # not calibrated: it cannot tell
    val, val_records, _ = cohort(seed=6, patients=10, prefix="V")
    calibration = atlas.calibrate(val, val_records.patients)
    assert calibration.frames == 200 and calibration.patients == 10 and calibration.k == 10
    assert calibration.flagged_share == pytest.approx(0.05, abs=0.01)
    held_out, _, _ = cohort(seed=7, patients=10, prefix="H")
    in_domain = atlas.unfamiliar(held_out)
    assert in_domain.flags.mean() < 0.15
    foreign = atlas.unfamiliar(frames_near(np.random.default_rng(8), CENTRES[2], 50))
    assert foreign.flags.mean() > 0.9 and foreign.threshold == calibration.threshold
    assert np.median(foreign.scores) > np.median(in_domain.scores)
    assert load(atlas.save(tmp_path / "atlas")).calibration == calibration


def test_calibrating_leaves_each_frames_own_patient_out(atlas):
    """Validation frames that are in the atlas are scored against other patients' frames only, not against
    their own patient's (much closer)."""
    with_own = np.quantile(atlas.scores(atlas.embeddings), 0.75)
    calibration = atlas.calibrate(atlas.embeddings, atlas.records.patients, quantile=0.75)
    assert calibration.threshold > 1.2 * with_own and calibration.flagged_share == pytest.approx(0.25, abs=0.02)


@pytest.mark.parametrize(("quantile", "count", "words"), [(1.0, 40, "between 0 and 1"),
                                                           (0.95, 5, "at least 20")])
def test_calibration_refuses_what_cannot_place_a_threshold(atlas, quantile, count, words):
    with pytest.raises(AtlasError, match=words):
        atlas.calibrate(atlas.embeddings[:count], atlas.records.patients[:count], quantile=quantile)
    assert atlas.calibration is None


def test_the_case_threshold_is_the_atlas_cases_own_median_scores_95th_percentile(atlas):
    val, val_records, _ = cohort(seed=6, patients=10, prefix="V")
    calibration = atlas.calibrate(val, val_records.patients)
    medians = atlas.case_scores()
    assert calibration.cases == len(medians) == 12  # 6 patients, a control and an active case each
    assert calibration.case_threshold == medians.max()  # 12 cases: the smallest value with 95% at or below it
    held_out, held_records, _ = cohort(seed=7, patients=10, prefix="H")
    called = [atlas.unfamiliar(held_out[held_records.cases == case]) for case in sorted(set(held_records.cases))]
    assert sum(np.median(f.scores) > f.case_threshold for f in called) <= 2  # of 20 in-domain cases


def test_a_case_unlike_the_atlas_as_a_whole_gets_the_unfamiliar_verdict(atlas):
    """A case judged as a whole: its median score against the case threshold, not the share of its frames
    above the frame threshold (verdict.py's doctests); the share is still given."""
    val, val_records, _ = cohort(seed=6, patients=10, prefix="V")
    calibration = atlas.calibrate(val, val_records.patients)
    rng = np.random.default_rng(9)

    def judged(frames, probability=0.97):
        found = atlas.unfamiliar(frames)
        return verdict_or_unfamiliar(probability, list(CLASSES), found.flags, 0.5, found.scores, found.case_threshold)

    foreign = atlas.unfamiliar(frames_near(rng, CENTRES[2], 20))
    assert judged(frames_near(rng, CENTRES[2], 20))[0] == UNFAMILIAR and foreign.flags.mean() > 0.9
    assert judged(frames_near(rng, CENTRES[1], 20))[0] == "active inflammation"
    mostly_familiar = np.concatenate([frames_near(rng, CENTRES[0], 14), frames_near(rng, CENTRES[2], 6)])
    assert judged(mostly_familiar, 0.2) == ("mucosal healing", pytest.approx(0.3, abs=0.1))
    assert verdict_or_unfamiliar(0.2, list(CLASSES), None) == ("mucosal healing", None)  # no atlas: cannot tell
    assert verdict_or_unfamiliar(None, list(CLASSES), [], 0.5, [], calibration.case_threshold) == (NO_VERDICT, None)


# --- the approximate index -----------------------------------------------------------------------


def recall(found, truth):
    return np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())])


def test_hnsw_past_the_switch_size_finds_what_exact_search_finds(tmp_path, monkeypatch):
    embeddings, records, thumbnails = cohort(patients=20, per_case=10)
    exact = Atlas(MODEL, embeddings, records, thumbnails)
    monkeypatch.setattr(atlas_index, "HNSW_FROM", 300)
    hnsw = Atlas(MODEL, embeddings, records, thumbnails)
    assert (exact.index.kind, hnsw.index.kind) == ("exact", "hnsw")
    query, _, _ = cohort(seed=11, patients=3, prefix="Q")
    assert recall(hnsw.neighbours(query, 10)[1], exact.neighbours(query, 10)[1]) >= 0.95
    own = embeddings[records.patients == "P4"]
    left_out = hnsw.neighbours(own, 10, exclude_patient="P4")[1]
    assert recall(left_out, exact.neighbours(own, 10, exclude_patient="P4")[1]) >= 0.95
    folder = hnsw.save(tmp_path / "atlas")
    assert "index.faiss" in json.loads((folder / "atlas.json").read_text())["files"]
    np.testing.assert_array_equal(load(folder).neighbours(query, 10)[1], hnsw.neighbours(query, 10)[1])
    tamper(folder, "index.faiss")
    with pytest.raises(AtlasFileError, match="index.faiss: damaged or changed"):
        load(folder)


def test_an_exact_atlas_grown_past_the_switch_size_becomes_hnsw(monkeypatch):
    monkeypatch.setattr(atlas_index, "HNSW_FROM", 150)
    atlas = Atlas(MODEL, *cohort(patients=6))
    assert atlas.index.kind == "exact"
    embeddings, records, thumbnails = cohort(seed=3, patients=2, prefix="N")
    atlas.add(MODEL, embeddings, records, thumbnails)
    assert atlas.index.kind == "hnsw" and atlas.index.size == len(atlas) == 160
    assert atlas.similar_cases(embeddings[-10:], k=1)[0].case == "N1-active"


def test_a_graph_search_that_comes_back_short_is_done_exactly():
    rng = np.random.default_rng(12)
    vectors = frames_near(rng, CENTRES[0], 400, spread=0.3)
    index = atlas_index.VectorIndex.build(vectors, "hnsw")
    left = np.array([7, 123, 391])
    distances, rows = index.search(vectors[:2], 5, excluded=np.setdiff1d(np.arange(400), left))
    assert sorted(rows[0, :3].tolist()) == left.tolist() and rows[0, 3:].tolist() == [-1, -1]
    assert np.isinf(distances[0, 3:]).all() and np.isfinite(distances[0, :3]).all()
