"""The bytes run are the bytes checked: a model file runs only when the checkpoint's card records its SHA-256."""

import logging

import numpy as np
import onnx
import pytest

import mucosa
from mucosa.cli import main
from mucosa.errors import ConfigError
from mucosa.inference import provenance
from mucosa.inference.onnx import export, metadata, to_onnx
from mucosa.inference.pytorch import TorchPredictor
from mucosa.inference.runtime import open_predictor
from mucosa.models.checkpoint import load_checkpoint, record_in_card

pytestmark = pytest.mark.slow  # every test here trains or loads a model


def flip(path, which: str, most: int | None = None) -> None:
    """XOR 0xFF every byte (or the first ``most``) of one initializer's raw data, in place in the file: the
    ``last`` (the classifier head) or the ``largest`` (the body); the rest of the file stays byte for byte."""
    inits = [i for i in onnx.load(path).graph.initializer if i.raw_data]
    chosen = inits[-1] if which == "last" else max(inits, key=lambda i: len(i.raw_data))
    data = bytearray(path.read_bytes())
    start = data.find(chosen.raw_data)
    assert start >= 0 and data.count(chosen.raw_data) == 1
    for i in range(start, start + min(len(chosen.raw_data), most or len(chosen.raw_data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def another_runs_file(run, path) -> None:
    """An export of other weights carrying this checkpoint's weights hash (and every other field) in its metadata."""
    loaded = load_checkpoint(run / "best.ckpt")
    with __import__("torch").no_grad():
        for parameter in loaded.model.parameters():
            parameter.add_(0.05)
    model = to_onnx(loaded)  # metadata(loaded): this run's weights_sha256, other weights
    assert onnx.load_from_string(model).metadata_props and metadata(loaded)["weights_sha256"]
    path.write_bytes(model)


def frames(n: int = 6, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 40), dtype=np.uint8)


@pytest.mark.parametrize("tamper", ["head", "body", "other run"])
def test_a_changed_best_onnx_is_not_run(run, tamper, caplog):
    (run / "best.int8.onnx").unlink()
    target = run / "best.onnx"
    if tamper == "other run":
        another_runs_file(run, target)
    else:
        flip(target, "last" if tamper == "head" else "largest", None if tamper == "head" else 4096)
    expected = TorchPredictor(load_checkpoint(run / "best.ckpt"))(frames())
    with caplog.at_level(logging.WARNING, logger="mucosa"):
        predictor = open_predictor(run / "best.ckpt", device="cpu")
    assert predictor.choice["runtime"] == "pytorch"
    assert caplog.text.count("best.onnx: its SHA-256 is not one") == 1  # one warning
    np.testing.assert_allclose(predictor(frames()), expected, atol=1e-6)
    with pytest.raises(provenance.UnverifiedModelError, match="best.onnx: its SHA-256"):
        open_predictor(run / "best.ckpt", "onnx", device="cpu")


@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_a_changed_int8_or_fp32_file_is_refused_by_predict_and_the_classifier(run, precision, tmp_path, capsys):
    name = "best.onnx" if precision == "fp32" else "best.int8.onnx"
    card = load_checkpoint(run / "best.ckpt").info[provenance.CARD_KEY]
    card["int8"]["passed"] = True  # within its bounds, so that auto would run it were it not changed
    record_in_card(run / "best.ckpt", provenance.CARD_KEY, card)
    flip(run / name, "last")
    if precision == "fp32":
        (run / "best.int8.onnx").unlink()
    args = ["predict", str(run / "split.csv"), "--checkpoint", str(run / "best.ckpt"), "--device", "cpu"]
    assert main([*args, "--out", str(tmp_path / "auto")]) == 0
    assert "runtime: pytorch fp32 on cpu (auto; best.ckpt, ONNX file beside it not verified)" in capsys.readouterr().out
    assert main([*args, "--runtime", "onnx", "--out", str(tmp_path / "onnx")]) == (0 if precision == "int8" else 2)
    assert mucosa.load(run / "best.ckpt", device="cpu").runtime == "torch"  # the Python API


def test_an_exported_file_runs_beside_its_checkpoint_only_as_exported(run, tmp_path, caplog):
    out = run / "model.onnx"
    export(run / "best.ckpt", out)
    entry = load_checkpoint(run / "best.ckpt").info[provenance.EXPORTS_KEY][-1]
    assert entry["file"] == "model.onnx" and entry["sha256"] == provenance.sha256(out.read_bytes())
    loaded = load_checkpoint(run / "best.ckpt")
    before = len(loaded.info[provenance.EXPORTS_KEY])
    assert provenance.record_export(run / "best.ckpt", loaded, out.read_bytes(), "model.onnx")  # the same again
    assert load_checkpoint(run / "best.ckpt").info[provenance.EXPORTS_KEY] == loaded.info[provenance.EXPORTS_KEY]
    assert len(loaded.info[provenance.EXPORTS_KEY]) == before and loaded.info[provenance.EXPORTS_KEY][-1] == entry
    assert open_predictor(out).choice["source"] == "model.onnx"  # named alone, checked against best.ckpt
    flip(out, "last")
    with pytest.raises(provenance.UnverifiedModelError, match="model.onnx"):
        open_predictor(out)
    alone = tmp_path / "alone"
    alone.mkdir()
    export(run / "best.ckpt", alone / "model.onnx")
    (alone / "model.onnx").rename(alone / "moved.onnx")
    with caplog.at_level(logging.WARNING, logger="mucosa"):
        open_predictor(alone / "moved.onnx")
    assert "moved.onnx: no checkpoint beside it to check its bytes against" in caplog.text


@pytest.mark.parametrize("tamper", ["fp32", "int8", "other run"])
def test_serve_onnx_refuses_a_file_its_card_does_not_record(run, tamper):
    pytest.importorskip("fastapi")
    from mucosa.service.engine import Engine

    path = run / ("best.int8.onnx" if tamper == "int8" else "best.onnx")
    if tamper == "other run":
        another_runs_file(run, path)
    else:
        flip(path, "last")
    with pytest.raises(ConfigError, match="its SHA-256 is not one"):
        Engine(run / "best.ckpt", device="cpu", onnx=path)
    engine = Engine(run / "best.ckpt", device="cpu")  # auto: the unverified file is not a candidate
    assert engine.runtime == "torch" or engine.predictor.model_bytes != path.read_bytes()
