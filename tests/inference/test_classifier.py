"""The Python API: mucosa.load → Classifier.predict → Prediction, and mucosa.train."""

import csv

import numpy as np
import pytest
import torch

import mucosa
from media import foreign_frames
from mucosa.atomic import write_torch
from mucosa.cli import main
from mucosa.data.manifest import load_manifest, write_manifest
from mucosa.errors import ConfigError, ModelOutputError, MucosaWarning
from mucosa.inference.pytorch import resolve_device
from mucosa.inference.verdict import NO_VERDICT, UNFAMILIAR, verdict_names
from mucosa.models.checkpoint import read_checkpoint_file

pytestmark = pytest.mark.slow  # every test here trains or loads a model

QUICK = {"model": {"size": 32}, "split": {"mode": "patient", "test": 0.3, "val": 0.3, "seed": 1},
         "training": {"epochs": 2, "batch_size": 8, "threads": 1}}


@pytest.fixture(scope="module")
def tiny(train_tiny):
    return train_tiny("classifier", QUICK, patients=8, per_patient=4, seed=3)


def test_predict_on_files_matches_the_predict_command(tiny, tmp_path):
    folder = next((tiny.cohort / "images" / "active").iterdir())
    assert main(["predict", str(folder), "--checkpoint", str(tiny.best), "--out", str(tmp_path / "p")]) == 0
    with open(tmp_path / "p" / "predictions.csv", newline="") as handle:
        expected = {row["path"]: float(row["probability"]) for row in csv.DictReader(handle) if row["used"] == "1"}
    prediction = mucosa.load(tiny.best, runtime="torch").predict(folder)
    assert len(prediction.cases) == 1 and prediction.cases[0].used == len(expected) > 0
    got = {src: p for src, p, used in zip(prediction.source, prediction.probabilities, prediction.used) if used}
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=1e-5)
    score = np.mean(list(expected.values()))
    assert prediction.cases[0].score == pytest.approx(score, abs=1e-5)
    names = ["mucosal healing", "active inflammation"]
    assert prediction.verdict == names[int(score >= 0.5)]


def test_arrays_of_any_dtype_give_the_same_probabilities(tiny):
    classifier = mucosa.load(tiny.best, runtime="torch")
    image = next((tiny.cohort / "images").rglob("*.png"))
    from PIL import Image

    gray = np.asarray(Image.open(image).convert("L"))
    as_uint8 = classifier.predict(gray)
    as_uint16 = classifier.predict(gray.astype(np.uint16) * 257)
    as_float = classifier.predict(gray.astype(np.float32) / 255)
    from_file = classifier.predict(image)
    for other in (as_uint16, as_float, from_file):
        np.testing.assert_allclose(other.probabilities, as_uint8.probabilities, atol=1e-4)
    assert len(as_uint8) == 1 and as_uint8.case.tolist() == ["array"]


def test_a_stack_is_one_case_and_blank_frames_get_no_probability(tiny):
    classifier = mucosa.load(tiny.best, runtime="torch")
    images = sorted((tiny.cohort / "images").rglob("*.png"))[:3]
    from PIL import Image

    stack = np.stack([np.asarray(Image.open(p).convert("L")) for p in images] + [np.zeros((40, 40), np.uint8)])
    prediction = classifier.predict(stack, case="exam-1")
    assert prediction.frame.tolist() == [0, 1, 2, 3] and [c.case for c in prediction.cases] == ["exam-1"]
    assert prediction.used.tolist()[3] is False and np.isnan(prediction.probabilities[3])
    assert prediction.cases[0].used == int(prediction.used.sum()) and prediction.cases[0].frames == 4
    blank = classifier.predict(np.zeros((6, 40, 40), np.uint8))
    assert blank.verdict == NO_VERDICT and blank.cases[0].score is None


def test_embed_gives_a_unit_row_per_frame_in_the_order_of_predict(tiny):
    from PIL import Image

    classifier = mucosa.load(tiny.best, runtime="torch")
    images = sorted((tiny.cohort / "images").rglob("*.png"))[:3]
    embeddings = classifier.embed(images)
    assert embeddings.shape == (3, 128) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
    both, alone = classifier.predict(images, embed=True), classifier.predict(images)
    np.testing.assert_allclose(both.probabilities, alone.probabilities, rtol=0, atol=1e-7)
    np.testing.assert_array_equal(both.embeddings, embeddings)
    assert alone.embeddings is None
    np.testing.assert_allclose(mucosa.load(tiny.best, runtime="onnx").embed(images), embeddings, atol=1e-4)
    array = np.asarray(Image.open(images[1]).convert("L"))
    np.testing.assert_allclose(classifier.embed(array), embeddings[1:2], atol=1e-4)  # a file, as an array
    # frames the quality gate drops get a NaN row, as they get no probability
    stack = np.stack([array, np.zeros_like(array), array])
    prediction = classifier.predict(stack, embed=True)
    assert prediction.embeddings.shape == (3, 128)
    np.testing.assert_array_equal(np.isnan(prediction.embeddings).all(axis=1), np.isnan(prediction.probabilities))
    np.testing.assert_array_equal(np.isnan(prediction.embeddings).any(axis=1), ~prediction.used)


def test_runtime_auto_on_the_cpu_is_onnx_and_agrees_with_torch(tiny):
    image = next((tiny.cohort / "images").rglob("*.png"))
    auto = mucosa.load(tiny.best)
    torch_ = mucosa.load(tiny.best, runtime="torch")
    assert (auto.runtime, str(auto.device)) == ("onnx", "cpu") and torch_.runtime == "torch"
    np.testing.assert_allclose(auto.predict(image).probabilities, torch_.predict(image).probabilities, atol=1e-4)


def test_bad_device_runtime_and_threshold_are_clear_errors(tiny):
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA"):
            mucosa.load(tiny.best, device="cuda")
    with pytest.raises(ConfigError, match="device"):
        resolve_device("tpu")
    with pytest.raises(ConfigError, match="runtime"):
        mucosa.load(tiny.best, runtime="tensorflow")
    for bad in (2, -1, float("nan")):
        with pytest.raises(ConfigError, match="threshold"):
            mucosa.load(tiny.best, threshold=bad)


def test_a_model_with_broken_weights_gives_no_verdict(tiny, tmp_path):
    data = read_checkpoint_file(tiny.best)
    data["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                          for k, v in data["state_dict"].items()}
    broken = tmp_path / "broken.ckpt"
    write_torch(data, broken)
    image = next((tiny.cohort / "images").rglob("*.png"))
    try:
        classifier = mucosa.load(broken, runtime="torch")
    except mucosa.MucosaError:
        return  # refused at load: also no verdict
    with pytest.raises(ModelOutputError, match="non-finite"):
        classifier.predict(image)


def test_model_card_counts_the_training_cohort_without_ids(tiny):
    card = mucosa.load(tiny.best, runtime="torch").card()
    assert card["classes"] == ["control", "active"] and card["input_size"] == 32
    assert sum(card["training_cohort"].values()) == 8 and card["training_cohort"]["test"] >= 1
    assert "P0" not in repr(card)  # the synthetic ids are P01..P08


def test_train_without_out_writes_nothing_and_returns_a_classifier(tmp_path, monkeypatch):
    from mucosa.data.synth import synthesize_cohort

    manifest = synthesize_cohort(tmp_path / "cohort", patients=6, per_patient=4, size=40, seed=0)
    monkeypatch.chdir(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = mucosa.train(manifest, {"model": {"size": 32}, "training": {"epochs": 2, "threads": 1},
                                     "split": {"mode": "none"}}, cache_dir=tmp_path / "cache", progress=False)
    assert result.checkpoint is None and result.out is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["cache"])
    epochs = [row["epoch"] for row in result.history]
    assert len(epochs) == 2 and epochs[1] == epochs[0] + 1
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    assert result.classifier.predict(tmp_path / "cohort" / "images").cases


def test_the_commands_run_on_the_device_they_are_given(tiny, tmp_path, capsys):
    image = next((tiny.cohort / "images").rglob("*.png"))
    assert main(["predict", "--checkpoint", str(tiny.best), str(image), "--out", str(tmp_path / "p"),
                 "--device", "cpu"]) == 0
    assert main(["explain", "--checkpoint", str(tiny.best), str(image), "--out", str(tmp_path / "e"),
                 "--device", "cpu"]) == 0
    assert (tmp_path / "p" / "predictions.csv").is_file() and (tmp_path / "e" / "explain.csv").is_file()


@pytest.mark.parametrize("call, message", [
    (lambda c: c.predict(np.zeros((0, 40, 40))), "array: shape"),
    (lambda c: c.predict(np.zeros((40, 40, 2))), "array: shape"),
    (lambda c: c.predict(np.array([[0.3]])), "at least 8x8"),
    (lambda c: c.predict(""), "empty path"),
    (lambda c: c.predict([np.zeros((40, 40))]), "list of paths"),
    (lambda c: c.predict(5), "got int"),
    (lambda c: c.grad_cam(np.zeros((32, 32))), "uint8"),
    (lambda c: c.grad_cam(np.zeros((32, 32), np.uint8), target="active"), "class index"),
])
def test_bad_inputs_to_the_api_are_clear_errors(tiny, call, message):
    with pytest.raises(mucosa.MucosaError, match=message):
        call(mucosa.load(tiny.best, runtime="torch"))


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, "batch_size"), ({"batch_size": "4"}, "batch_size"), ({"threads": -2}, "threads"),
])
def test_bad_load_options_are_refused_at_load(tiny, options, message):
    with pytest.raises(ConfigError, match=message):
        mucosa.load(tiny.best, **options)
    with pytest.raises(ConfigError, match="folder"):
        mucosa.load(tiny.run)


def test_an_image_whose_field_of_view_is_tiny_is_unreadable_not_a_crash(tiny, tmp_path):
    from PIL import Image

    image = np.zeros((40, 40), np.uint8)
    image[10:17, 10:17] = 255  # a 7x7 bright square: the detected field of view
    Image.fromarray(image).save(tmp_path / "dot.png")
    with pytest.raises(mucosa.MucosaError, match="dot.png: the field of view found is"):
        mucosa.load(tiny.best, runtime="torch").predict(tmp_path / "dot.png")


# --- the atlas ------------------------------------------------------------------------------------


def test_load_picks_up_the_atlas_and_predict_says_unfamiliar_by_the_one_rule(atlas_run):
    classifier = mucosa.load(atlas_run.best)
    assert classifier.atlas is not None and len(classifier.atlas) == 144  # 9 training and validation patients
    assert classifier.card()["atlas"]["threshold"] == classifier.atlas.calibration.threshold
    sine = classifier.predict(np.stack(foreign_frames("sine")))
    assert sine.verdict == UNFAMILIAR and sine.unfamiliar_share > 0.5 and sine.embeddings is None
    assert sine.unfamiliar.shape == (8,) and sine.unfamiliar.mean() == pytest.approx(sine.unfamiliar_share)
    assert np.all(sine.unfamiliarity[sine.unfamiliar] > classifier.atlas.calibration.threshold)
    held_out = classifier.predict(patient_folder(atlas_run))
    assert held_out.verdict in verdict_names(classifier.classes) and held_out.unfamiliar_share < 0.25
    embedded = classifier.predict(patient_folder(atlas_run), embed=True)  # the same pass gives both
    assert embedded.embeddings.shape == (16, classifier.atlas.model.embedding_size)
    np.testing.assert_array_equal(embedded.unfamiliar, held_out.unfamiliar)


def test_similar_cases_of_a_recording(atlas_run, tmp_path):
    classifier = mucosa.load(atlas_run.best, runtime="torch")
    found = classifier.similar_cases(patient_folder(atlas_run), k=3)
    assert len(found) == 3 and all(c.label in classifier.classes and c.closest for c in found)
    assert found[0].closest[0].thumbnail.shape == (48, 48)
    train = [r for r in load_manifest(atlas_run.run / "split.csv").records if r.split == "train"]
    write_manifest([r for r in train if r.patient == train[0].patient], tmp_path / "one.csv")
    assert train[0].patient not in {c.patient for c in classifier.similar_cases(tmp_path / "one.csv", k=10)}
    with pytest.raises(ConfigError, match="k 0 must be"):
        classifier.similar_cases(patient_folder(atlas_run), k=0)


def test_without_an_atlas_it_warns_once_and_gives_the_class(atlas_run, tmp_path):
    alone = tmp_path / "best.ckpt"
    alone.write_bytes(atlas_run.best.read_bytes())
    with pytest.warns(MucosaWarning, match="best.ckpt has no atlas beside it"):
        classifier = mucosa.load(alone, runtime="torch")
    sine = classifier.predict(np.stack(foreign_frames("sine")))
    assert classifier.atlas is None and sine.unfamiliar is None and sine.unfamiliar_share is None
    assert sine.verdict in verdict_names(classifier.classes)
    with pytest.raises(ConfigError, match="no atlas"):
        classifier.similar_cases(np.stack(foreign_frames("sine")))
    assert mucosa.load(alone, runtime="torch", atlas=atlas_run.run / "atlas").predict(
        np.stack(foreign_frames("sine"))).verdict == UNFAMILIAR
    assert mucosa.load(atlas_run.best, atlas=False).atlas is None


def patient_folder(run):
    """A held-out test patient's image folder (one case) of a tiny run."""
    return next(r for r in load_manifest(run.run / "split.csv").records if r.split == "test").path.parent
