"""mucosa.evaluate: results as an object; files only with out."""

import json

import pytest

import mucosa

QUICK = {"model": {"size": 32}, "split": {"mode": "patient", "test": 0.3, "val": 0.3, "seed": 1},
         "training": {"epochs": 2, "batch_size": 8, "threads": 1}}


@pytest.fixture(scope="module")
def tiny(train_tiny):
    return train_tiny("api", QUICK, patients=8, per_patient=4, seed=3)


@pytest.mark.slow
def test_evaluate_without_out_writes_nothing_and_matches_the_files(tiny, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cache = tiny.cache.root
    in_memory = mucosa.evaluate(tiny.best, tiny.run / "split.csv", n_boot=50, cache_dir=cache)
    assert list(tmp_path.iterdir()) == [] and in_memory.out is None
    written = mucosa.evaluate(tiny.best, tiny.run / "split.csv", out=tmp_path / "ev", n_boot=50, cache_dir=cache)
    on_disk = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert written.out == tmp_path / "ev"
    for level in ("patient", "image"):
        assert in_memory[level]["accuracy"]["value"] == on_disk[level]["accuracy"]["value"]
        assert in_memory[level]["accuracy"]["ci"] == on_disk[level]["accuracy"]["ci"]
    assert len(in_memory.patients) == on_disk["counts"]["patients"] == len(written.patients)
    assert len(in_memory.frames) == on_disk["counts"]["frames"]
    assert all(0.0 <= f["probability"] <= 1.0 for f in in_memory.frames)


@pytest.mark.slow
def test_evaluate_refuses_an_out_of_range_threshold(tiny):
    for bad in ("2", "-1", "nan", "5"):
        with pytest.raises(mucosa.MucosaError, match="threshold"):
            mucosa.evaluate(tiny.best, tiny.run / "split.csv", threshold=bad, n_boot=10, cache_dir=tiny.cache.root)


@pytest.mark.parametrize("call, names", [
    (lambda p: mucosa.train(None, out=p / "run"), "manifest"),
    (lambda p: mucosa.train(123, out=p / "run"), "manifest"),
    (lambda p: mucosa.train(p / "m.csv", config=5, out=p / "run"), "config"),
    (lambda p: mucosa.train(p / "m.csv", config=["model"], out=p / "run"), "config"),
    (lambda p: mucosa.train(p / "m.csv", out=3), "out"),
    (lambda p: mucosa.train(p / "m.csv", out=p / "run", init_from=1.5), "init_from"),
    (lambda p: mucosa.train(p / "m.csv", out=p / "run", cache_dir=object()), "cache_dir"),
    (lambda p: mucosa.evaluate(None, p / "m.csv"), "checkpoint"),
    (lambda p: mucosa.evaluate(p / "c.ckpt", None), "manifest"),
    (lambda p: mucosa.evaluate(p / "c.ckpt", p / "m.csv", out=[1]), "out"),
])
def test_a_value_that_is_no_path_is_one_clear_error_naming_the_argument(call, names, tmp_path):
    """Not a TypeError from deep inside: the library's own error, naming what was wrong, before any work."""
    with pytest.raises(mucosa.MucosaError, match=rf"^{names}: expected") as caught:
        call(tmp_path)
    assert "\n" not in str(caught.value)
    assert list(tmp_path.iterdir()) == []


def test_paths_as_bytes_or_path_like_objects_and_an_empty_cache_dir(tmp_path):
    class Spelled:  # an os.PathLike of the caller's own
        def __init__(self, path):
            self.path = path

        def __fspath__(self):
            return self.path

    for manifest in (Spelled(str(tmp_path / "m.csv")), Spelled(bytes(tmp_path / "m.csv")), bytes(tmp_path / "m.csv")):
        with pytest.raises(mucosa.MucosaError, match="m.csv: manifest not found"):  # read as the path it names
            mucosa.train(manifest, out=tmp_path / "run", cache_dir="")
    for empty in ("", "  ", Spelled("")):
        with pytest.raises(mucosa.MucosaError, match=r"^manifest: expected a path, got an empty one"):
            mucosa.train(empty, out=tmp_path / "run")
    with pytest.raises(mucosa.MucosaError, match=r"^config: expected a path, got an empty one"):
        mucosa.train(tmp_path / "m.csv", config="", out=tmp_path / "run")
    assert list(tmp_path.iterdir()) == []


def test_train_writes_an_atlas_that_the_classifier_uses(tmp_path):
    from mucosa.data.synth import synthesize_cohort

    manifest = synthesize_cohort(tmp_path / "cohort", patients=8, per_patient=10, size=40, seed=1)
    config = {"model": {"size": 32}, "preprocessing": {"quality_threshold": 0.0},
              "training": {"epochs": 1, "threads": 1},
              "split": {"mode": "patient", "test": 0.25, "val": 0.35, "seed": 0}}
    result = mucosa.train(manifest, config, out=tmp_path / "run", cache_dir=tmp_path / "cache", progress=False,
                          onnx=False)
    atlas = result.classifier.atlas
    assert (tmp_path / "run" / "atlas" / "atlas.json").is_file() and atlas is not None
    assert len(atlas) == 60 and atlas.calibration.frames == 20  # 6 training and validation patients, 2 of them val
    prediction = result.classifier.predict(tmp_path / "cohort" / "images" / "active")
    assert all(case.unfamiliar_share is not None for case in prediction.cases)
