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
    FRAME_QUANTILE,
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
    assert manifest["format"] == "mucosa-atlas" and manifest["version"] == 3
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
    "newer version": (lambda f: rewrite_manifest(f, version=4), ["atlas.json", "version 4", "it knows 3",
                                                                 "upgrade"]),
    "older version": (lambda f: rewrite_manifest(f, version=2), ["atlas.json", "version 2", "texture view",
                                                                 "build it again"]),
    "unknown version": (lambda f: rewrite_manifest(f, version="one"), ["version 'one'", "knows 3"]),
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


def test_an_atlas_of_one_class_gives_no_vote():
    """Atlas frames (the query's patient left out) all of one class can only vote for it: no second opinion, so
    no vote (AtlasError, which the callers turn into no vote); with both classes left, it votes."""
    from mucosa.inference.similar import consult

    embeddings, records, thumbnails = cohort(patients=3)
    controls = records.labels == "control"
    one_class = Atlas(MODEL, embeddings[controls], FrameRecords(*(column[controls] for column in (
        records.cases, records.patients, records.labels, records.frames, records.files))), thumbnails[controls])
    query = frames_near(np.random.default_rng(5), CENTRES[1], 4)
    with pytest.raises(AtlasError, match="all control: its vote could name no other class"):
        one_class.vote(query)
    assert consult(one_class, query, similar=False).vote is None
    both = Atlas(MODEL, embeddings, records, thumbnails)
    assert both.vote(query, exclude_patient="P0").label == "active"


def test_a_patient_named_twice_is_left_out_once_when_counting_the_voters():
    """The query's patients may be given with repeats (a tuple): the frames left to vote are counted with each
    patient's frames taken away once, so an atlas whose other patients are all of one class still gives no vote."""
    embeddings, records, thumbnails = cohort(patients=4)
    keep = (records.patients == "P0") | ((records.patients == "P1") & (records.labels == "active")) | (
        np.isin(records.patients, ["P2", "P3"]) & (records.labels == "control"))
    atlas = Atlas(MODEL, embeddings[keep], FrameRecords(*(column[keep] for column in (
        records.cases, records.patients, records.labels, records.frames, records.files))), thumbnails[keep])
    query = frames_near(np.random.default_rng(5), CENTRES[1], 4)
    for patients in (("P0", "P1"), ("P0", "P0", "P1")):  # left: P2 and P3, both control
        with pytest.raises(AtlasError, match="all control"):
            atlas.vote(query, exclude_patient=patients)


# --- unfamiliar frames ---------------------------------------------------------------------------


def test_calibration_flags_few_in_domain_frames_and_most_foreign_ones(atlas, tmp_path):
    assert atlas.unfamiliar(atlas.embeddings[:5]).flags is None  # not calibrated: it cannot tell
    val, val_records, _ = cohort(seed=6, patients=10, prefix="V")
    calibration = atlas.calibrate(val, val_records.patients)
    assert calibration.frames == 200 and calibration.patients == 10 and calibration.k == 10
    assert calibration.flagged_share == pytest.approx(1 - FRAME_QUANTILE, abs=0.01)  # 2.5% of validation frames
    held_out, _, _ = cohort(seed=7, patients=10, prefix="H")
    in_domain = atlas.unfamiliar(held_out)
    assert in_domain.flags.mean() < 0.15
    foreign = atlas.unfamiliar(frames_near(np.random.default_rng(8), CENTRES[2], 50))
    assert foreign.flags.mean() > 0.9 and foreign.threshold == calibration.threshold
    assert np.median(foreign.scores) > np.median(in_domain.scores)
    assert load(atlas.save(tmp_path / "atlas")).calibration == calibration


def test_a_calibration_saved_before_the_case_quantile_was_recorded_still_loads(atlas):
    """Atlases made when one quantile set both thresholds have no ``case_quantile``: they load as they were;
    a quantile out of (0, 1) is a damaged calibration."""
    from mucosa.inference.atlas_store import Calibration

    val, val_records, _ = cohort(seed=6, patients=10, prefix="V")
    saved = atlas.calibrate(val, val_records.patients).to_dict()
    assert saved["case_quantile"] == 0.95 and saved["quantile"] == FRAME_QUANTILE
    older = {key: value for key, value in saved.items() if key != "case_quantile"}
    assert Calibration.from_dict(older).case_quantile is None
    with pytest.raises(AtlasError, match="damaged .*quantiles"):
        Calibration.from_dict({**saved, "case_quantile": 1.5})


def test_calibrating_leaves_each_frames_own_patient_out(atlas):
    """Validation frames that are in the atlas are scored against other patients' frames only, not against
    their own patient's (much closer)."""
    with_own = np.quantile(atlas.scores(atlas.embeddings), 0.75)
    calibration = atlas.calibrate(atlas.embeddings, atlas.records.patients, quantile=0.75)
    assert calibration.threshold > 1.2 * with_own and calibration.flagged_share == pytest.approx(0.25, abs=0.02)


@pytest.mark.parametrize(("quantile", "count", "words"), [(1.0, 40, "between 0 and 1"),
                                                           (0.95, 19, "at least 20")])
def test_calibration_refuses_what_cannot_place_a_threshold(atlas, quantile, count, words):
    with pytest.raises(AtlasError, match=words):
        atlas.calibrate(atlas.embeddings[:count], atlas.records.patients[:count], quantile=quantile)
    assert atlas.calibration is None


def test_an_atlas_of_one_patient_refuses_to_calibrate_rather_than_flag_nothing():
    """Every frame of a one-patient atlas, its patient left out, has no neighbour: its thresholds would be the
    farthest distance, and nothing could ever be unfamiliar. Calibrating refuses instead (CalibrationError, one
    line); a second patient lets it calibrate, and a foreign frame is then flagged."""
    from mucosa.inference.atlas import CalibrationError

    embeddings, records, thumbnails = cohort(patients=1, per_case=30)
    lonely = Atlas(MODEL, embeddings, records, thumbnails)
    with pytest.raises(CalibrationError) as error:
        lonely.calibrate(embeddings, records.patients)
    one_line_error(error, "too few frames of other patients", "at least two patients")
    assert lonely.calibration is None
    two = Atlas(MODEL, *cohort(patients=2, per_case=30))
    two.calibrate(two.embeddings, two.records.patients)
    foreign = frames_near(np.random.default_rng(9), CENTRES[2], 5, spread=0.1)
    assert two.calibration.threshold < 2.0 and two.unfamiliar(foreign).flags.all()


def test_an_atlas_of_two_patients_one_of_them_nearly_empty_says_what_it_lacks():
    """Two patients, one of them with 4 frames: the other's frames, their patient left out, have no 10
    neighbours either. The refusal says so, and does not ask for a second patient the atlas already has."""
    from mucosa.inference.atlas import CalibrationError

    embeddings, records, thumbnails = cohort(patients=2, per_case=30)
    keep = np.flatnonzero((records.patients == "P0") | (records.frames < 2))  # P1: 2 frames of each case
    kept = FrameRecords.of(records.cases[keep], records.patients[keep], records.labels[keep], records.frames[keep],
                           records.files[keep])
    few = Atlas(MODEL, embeddings[keep], kept, thumbnails[keep])
    with pytest.raises(CalibrationError) as error:
        few.calibrate(embeddings[keep], few.records.patients)
    one_line_error(error, "too few frames of other patients", "10 frames of patients other than its own")
    assert "at least two patients" not in str(error.value)


def test_a_view_whose_cases_are_alike_to_the_last_digit_cannot_scale_the_case_rule():
    """Identical textures in every case give that view a scale of zero, which would make any query unfamiliar:
    calibrating refuses, naming the view."""
    from mucosa.inference.atlas import CalibrationError, TextureView

    embeddings, records, thumbnails = cohort()
    rows = np.arange(0, len(records), 2)
    same = TextureView(rows, np.tile(normalise(np.ones((1, 56))), (len(rows), 1)))
    atlas = Atlas(MODEL, embeddings, records, thumbnails, textures=same)
    with pytest.raises(CalibrationError, match="alike to the last digit in the texture view"):
        atlas.calibrate(embeddings, records.patients)


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


# --- the texture view -------------------------------------------------------------------------------------------


def texture_view(records, rng, foreign_from=None, width=56):
    """Texture vectors for every other frame of each case: all near one texture, or near another for the
    cases from ``foreign_from`` on."""
    from mucosa.inference.atlas import TextureView

    rows = np.arange(0, len(records), 2)
    centres = rng.standard_normal((2, width))
    kinds = [1 if foreign_from is not None and case >= foreign_from else 0 for case in records.cases[rows]]
    return TextureView(rows, normalise(np.stack([centres[k] + 0.3 * rng.standard_normal(width) for k in kinds])))


def test_the_texture_view_joins_the_case_rule_and_survives_saving(tmp_path):
    """Embeddings alike, textures of another kind: the case rule with the texture view calls the case
    unfamiliar, the embedding alone does not; the view and its scales are saved, checked and loaded."""
    from mucosa.inference.verdict import case_unfamiliarity, unfamiliar_case

    rng = np.random.default_rng(5)
    embeddings, records, thumbnails = cohort()
    val, val_records, _ = cohort(seed=2, prefix="V")
    view = texture_view(records, rng)
    atlas = Atlas(MODEL, embeddings, records, thumbnails, textures=view)
    calibration = atlas.calibrate(val, val_records.patients)
    assert calibration.scales is not None and all(v > 0 for v in calibration.scales)
    assert calibration.case_threshold == pytest.approx(np.quantile(atlas.case_scores(), 0.95, method="higher"))
    query = frames_near(rng, CENTRES[0], 10)  # a control-like case by its embedding
    scores = atlas.unfamiliar(query).scores
    width = view.vectors.shape[1]
    same = normalise(view.vectors[::7][:3] + 0.01 * rng.standard_normal((3, width)))  # like the atlas's textures
    other = normalise(-view.vectors.mean(0) + 0.3 * rng.standard_normal((3, width)))  # the opposite texture
    familiar = atlas.texture_scores(same)
    foreign = atlas.texture_scores(other)
    assert foreign.min() > familiar.max()
    rule = calibration.case_threshold, calibration.scales
    assert unfamiliar_case(scores, rule[0], familiar, rule[1]) is False
    assert unfamiliar_case(scores, rule[0], foreign, rule[1]) is True
    assert unfamiliar_case(scores, rule[0], None, rule[1]) is None  # no texture score: it cannot tell
    assert case_unfamiliarity(scores) == pytest.approx(np.median(scores))
    folder = atlas.save(tmp_path / "atlas")
    assert {"textures.npy", "texture_rows.npy"} <= {p.name for p in folder.iterdir()}
    loaded = load(folder, MODEL.weights_sha256)
    assert loaded.calibration.scales == pytest.approx(calibration.scales)
    assert np.array_equal(loaded.textures.rows, view.rows)
    assert np.allclose(loaded.texture_scores(other), foreign)
    tamper(folder, "textures.npy")
    with pytest.raises(AtlasFileError, match="textures.npy: damaged or changed"):
        load(folder)


def test_each_view_of_the_case_rule_counts_in_units_of_its_own_edge():
    """Each view's scale is its own 95th percentile among the atlas's cases (with 20 cases or fewer, the
    largest), so a case far past one view's edge is unfamiliar however familiar the other view finds it."""
    from mucosa.inference.verdict import unfamiliar_case

    rng = np.random.default_rng(5)
    embeddings, records, thumbnails = cohort()
    val, val_records, _ = cohort(seed=2, prefix="V")
    atlas = Atlas(MODEL, embeddings, records, thumbnails, textures=texture_view(records, rng))
    calibration = atlas.calibrate(val, val_records.patients)
    medians, textures = atlas.case_medians()
    edges = [np.quantile(v, 0.95, method="higher") for v in (medians, textures)]
    assert calibration.scales == pytest.approx(edges)
    assert calibration.case_threshold <= 1.0  # no atlas case is past either view's edge
    familiar = np.zeros(10)  # embedding scores as familiar as can be
    assert unfamiliar_case(familiar, calibration.case_threshold, [2.01 * edges[1]], calibration.scales) is True
    assert unfamiliar_case(familiar, calibration.case_threshold, [0.5 * edges[1]], calibration.scales) is False


def test_a_case_whose_every_frame_has_a_texture_is_calibrated_as_a_query_textures_it():
    """The texture view holds all ten frames of each case (a tiled still's tiles): a query of that file
    textures its first frame and every 8th, so the case's texture median is theirs, not all ten's; then an atlas
    case given back as a query (its patient left out) gets the score the calibration gave it."""
    from mucosa.inference.atlas import TextureView
    from mucosa.inference.texture_view import TEXTURE_STRIDE
    from mucosa.inference.verdict import case_unfamiliarity

    rng = np.random.default_rng(7)
    embeddings, records, thumbnails = cohort()
    textures = TextureView(np.arange(len(records)), normalise(rng.standard_normal((len(records), 56))))
    atlas = Atlas(MODEL, embeddings, records, thumbnails, textures=textures)
    val, val_records, _ = cohort(seed=2, prefix="V")
    calibration = atlas.calibrate(val, val_records.patients)
    medians, texture_medians = atlas.case_medians()
    for position, case in enumerate(sorted(set(records.cases.tolist()))):
        rows = np.flatnonzero(records.cases == case)  # ten frames of one file, in order
        patient = str(records.patients[rows[0]])
        queried = textures.vectors[rows[::TEXTURE_STRIDE]]  # frames 0 and 8
        assert texture_medians[position] == pytest.approx(
            np.median(atlas.texture_scores(queried, exclude_patient=patient)))
        as_query = case_unfamiliarity(atlas.scores(embeddings[rows], exclude_patient=patient),
                                      atlas.texture_scores(queried, exclude_patient=patient), calibration.scales)
        assert as_query == pytest.approx(atlas.case_scores()[position])


def rewrite_array(folder, name, array):
    np.save(folder / name, array)
    manifest = json.loads((folder / "atlas.json").read_text())
    manifest["files"][name] = hashlib.sha256((folder / name).read_bytes()).hexdigest()
    (folder / "atlas.json").write_text(json.dumps(manifest))


TEXTURE_DAMAGE = {  # (what is done to a saved atlas with a texture view, the words of its one-line refusal)
    "other width": (lambda f: rewrite_array(f, "textures.npy", normalise(np.load(f / "textures.npy")[:, :40])),
                    ["textures.npy", "40"]),
    "rows repeated": (lambda f: rewrite_array(f, "texture_rows.npy", np.zeros(len(np.load(f / "texture_rows.npy")),
                                                                              np.int64)),
                      ["texture_rows.npy", "increase"]),
    "rows as floats": (lambda f: rewrite_array(f, "texture_rows.npy", np.load(f / "texture_rows.npy") * 1.0),
                       ["texture_rows.npy", "whole number"]),
    "no rows": (lambda f: (rewrite_array(f, "texture_rows.npy", np.zeros(0, np.int64)),
                           rewrite_array(f, "textures.npy", np.zeros((0, 56), np.float32))), ["texture_rows.npy"]),
    "made otherwise": (lambda f: rewrite_manifest(f, texture_view={"size": 128}), ["atlas.json", "made otherwise"]),
    "case threshold 0": (lambda f: rewrite_manifest(f, calibration={
        **json.loads((f / "atlas.json").read_text())["calibration"], "case_threshold": 0.0}),
        ["atlas.json", "calibration is damaged"]),
}


@pytest.mark.parametrize("damage", sorted(TEXTURE_DAMAGE))
def test_a_damaged_texture_view_is_refused_in_one_line_naming_the_file(damage, tmp_path):
    embeddings, records, thumbnails = cohort()
    val, val_records, _ = cohort(seed=2, prefix="V")
    atlas = Atlas(MODEL, embeddings, records, thumbnails, textures=texture_view(records, np.random.default_rng(7)))
    atlas.calibrate(val, val_records.patients)
    folder = atlas.save(tmp_path / "atlas")
    load(folder)  # whole, it loads
    change, words = TEXTURE_DAMAGE[damage]
    change(folder)
    with pytest.raises(AtlasFileError) as refused:
        load(folder)
    message = str(refused.value)
    assert "\n" not in message and all(word in message for word in words), message
    assert message.count(str(folder)) == 1, message  # the file, not the folder and then the file


def test_texture_scores_leave_out_the_own_patient_and_need_the_view():
    rng = np.random.default_rng(6)
    embeddings, records, thumbnails = cohort()
    view = texture_view(records, rng)
    atlas = Atlas(MODEL, embeddings, records, thumbnails, textures=view)
    own = view.vectors[:1]  # P0's own frame: distance 0 to itself unless P0 is left out
    assert atlas.texture_scores(own, k=1)[0] == pytest.approx(0.0, abs=1e-6)
    assert atlas.texture_scores(own, k=1, exclude_patient="P0")[0] > 1e-4
    with pytest.raises(AtlasError, match="no texture view"):
        Atlas(MODEL, embeddings, records, thumbnails).texture_scores(own)
    with pytest.raises(AtlasError, match="texture view, or neither"):
        atlas.add(MODEL, *cohort(seed=3, prefix="N"))


def test_a_case_without_a_texture_sets_neither_the_scale_nor_the_case_threshold(caplog):
    """One atlas case of twelve has no texture: it is left out of the calibration (with a warning), so the
    texture scale stays the other cases' edge and a foreign texture far past it is still unfamiliar; a texture
    view with no texture at all cannot calibrate."""
    from mucosa.inference.atlas import TextureView
    from mucosa.inference.verdict import unfamiliar_case

    rng = np.random.default_rng(5)
    embeddings, records, thumbnails = cohort()
    val, val_records, _ = cohort(seed=2, prefix="V")
    view = texture_view(records, rng)
    bare = records.cases[view.rows] != min(records.cases.tolist())  # the first case by name loses its textures
    atlas = Atlas(MODEL, embeddings, records, thumbnails, textures=TextureView(view.rows[bare], view.vectors[bare]))
    with caplog.at_level("WARNING"):
        calibration = atlas.calibrate(val, val_records.patients)
    assert "1 of 12 atlas cases have no texture" in caplog.text
    medians, textures = atlas.case_medians()
    assert np.isnan(textures[0]) and np.isfinite(textures[1:]).all()
    assert calibration.cases == 11
    assert calibration.scales[1] == pytest.approx(np.quantile(textures[1:], 0.95, method="higher"))
    assert unfamiliar_case(np.zeros(10), calibration.case_threshold, [3 * calibration.scales[1]],
                           calibration.scales) is True
    empty = Atlas(MODEL, embeddings, records, thumbnails, textures=TextureView(view.rows[:0], view.vectors[:0]))
    with pytest.raises(AtlasError, match="no texture of any atlas case"):
        empty.calibrate(val, val_records.patients)
