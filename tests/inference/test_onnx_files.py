"""ONNX models written beside a trained checkpoint (onnx_files) and what --runtime auto picks from them."""

import hashlib
import json
import logging
import shutil

import numpy as np
import pytest

from mucosa.atomic import write_torch
from mucosa.cli import main
from mucosa.inference import onnx_files
from mucosa.inference.onnx import PARITY_TOLERANCE, OnnxPredictor
from mucosa.inference.pytorch import TorchPredictor
from mucosa.inference.runtime import describe, open_predictor
from mucosa.models.checkpoint import load_checkpoint, read_checkpoint_file, record_in_card


def frames(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 40, 40), dtype=np.uint8)


@pytest.mark.slow
def test_deploy_writes_checked_models_and_records_them_in_the_card(deployed):
    run, card, _ = deployed
    loaded = load_checkpoint(run / "best.ckpt")
    assert loaded.info[onnx_files.CARD_KEY] == card
    assert card["weights_sha256"] == loaded.weights_sha256
    assert card["bounds"] == onnx_files.BOUNDS == {"min_agreement": 0.99, "max_abs_auc_change": 0.005,
                                                    "min_frames": 100}
    assert max(card["fp32"]["parity_max_abs_difference"].values()) < PARITY_TOLERANCE
    for entry, path in ((card["fp32"], run / "best.onnx"), (card["int8"], run / "best.int8.onnx")):
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"]
        assert OnnxPredictor(path).metadata["weights_sha256"] == loaded.weights_sha256
    int8 = card["int8"]
    assert int8["evaluated"] == "rows whose split column is 'val'" and int8["frames"] > 0
    assert int8["passed"] == onnx_files.int8_gate(int8)[0]
    x = frames(5)
    np.testing.assert_allclose(OnnxPredictor(run / "best.onnx")(x), TorchPredictor(loaded)(x), atol=1e-5)
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


def test_the_int8_bounds():
    enough = {"frames": onnx_files.MIN_FRAMES}
    assert onnx_files.int8_gate({**enough, "agreement": 0.995, "auc_change": -0.004})[0]
    assert not onnx_files.int8_gate({**enough, "agreement": 0.98, "auc_change": 0.0})[0]
    assert not onnx_files.int8_gate({**enough, "agreement": 1.0, "auc_change": 0.006})[0]
    assert not onnx_files.int8_gate({**enough, "agreement": 1.0, "auc_change": None})[0]  # not measurable: not used
    assert not onnx_files.int8_gate({"frames": onnx_files.MIN_FRAMES - 1, "agreement": 1.0, "auc_change": 0.0})[0]
    nan = float("nan")  # a non-finite measurement never passes
    assert not onnx_files.int8_gate({**enough, "agreement": nan, "auc_change": 0.0})[0]
    assert not onnx_files.int8_gate({**enough, "agreement": 1.0, "auc_change": nan})[0]
    assert not onnx_files.int8_gate({"frames": nan, "agreement": 1.0, "auc_change": 0.0})[0]


def _set_int8_passed(run, passed: bool | None) -> None:
    card = load_checkpoint(run / "best.ckpt").info[onnx_files.CARD_KEY]
    if passed is None:
        card.pop("int8")
    else:
        card["int8"]["passed"] = passed
    record_in_card(run / "best.ckpt", onnx_files.CARD_KEY, card)


@pytest.mark.slow
def test_auto_prefers_int8_only_when_its_card_says_it_passed(run):
    _set_int8_passed(run, True)
    chosen = open_predictor(run / "best.ckpt", device="cpu").choice
    assert (chosen["runtime"], chosen["precision"], chosen["source"]) == ("onnxruntime", "int8", "best.int8.onnx")
    assert open_predictor(run / "best.ckpt", "onnx", device="cpu").choice["source"] == "best.onnx"  # fp32 asked
    assert open_predictor(run / "best.ckpt", "torch", device="cpu").choice["runtime"] == "pytorch"
    for passed in (False, None):  # failed, or no int8 entry in the card
        _set_int8_passed(run, passed)
        chosen = open_predictor(run / "best.ckpt", device="cpu").choice
        assert (chosen["precision"], chosen["source"]) == ("fp32", "best.onnx")
    (run / "best.onnx").unlink()
    assert open_predictor(run / "best.ckpt", device="cpu").choice["source"] == "exported in memory"


@pytest.mark.slow
@pytest.mark.parametrize("card", ["junk", [1, 2], None, {"int8": "x"}, {"int8": {"passed": "yes", "sha256": 12}}])
def test_a_hand_edited_card_vouches_for_nothing(run, card):
    loaded = load_checkpoint(run / "best.ckpt")
    if isinstance(card, dict):
        card = {**card, "weights_sha256": loaded.weights_sha256}
    record_in_card(run / "best.ckpt", onnx_files.CARD_KEY, card)
    chosen = open_predictor(run / "best.ckpt", device="cpu").choice  # vouched for by nobody: not run
    assert (chosen["runtime"], chosen["source"]) == ("pytorch", "best.ckpt, ONNX file beside it not verified")


@pytest.mark.slow
def test_an_int8_file_that_is_not_the_one_measured_is_not_used(run):
    _set_int8_passed(run, True)
    shutil.copyfile(run / "best.onnx", run / "best.int8.onnx")  # same weights, but not the measured file
    assert open_predictor(run / "best.ckpt", device="cpu").choice["runtime"] == "pytorch"
    assert open_predictor(run / "best.ckpt", "onnx", device="cpu").choice["source"] == "best.onnx"  # fp32 asked


@pytest.mark.slow
def test_a_vouched_int8_file_that_does_not_load_falls_back_to_best_onnx(run, monkeypatch):
    _set_int8_passed(run, True)
    real = onnx_files.onnx.OnnxPredictor

    def int8_unsupported(model, *args, **kwargs):  # as an ONNX Runtime without these int8 kernels
        predictor = real(model, *args, **kwargs)
        if predictor.metadata.get("quantization", "none") != "none":
            raise onnx_files.onnx.ExportError("model: not a loadable ONNX model (NotImplemented: QLinearConv)")
        return predictor

    monkeypatch.setattr(onnx_files.onnx, "OnnxPredictor", int8_unsupported)
    chosen = open_predictor(run / "best.ckpt", device="cpu").choice
    assert (chosen["runtime"], chosen["precision"], chosen["source"]) == ("onnxruntime", "fp32", "best.onnx")


@pytest.mark.slow
def test_the_bytes_checked_are_the_bytes_run(run, monkeypatch):
    _set_int8_passed(run, True)
    measured = (run / "best.int8.onnx").read_bytes()
    stale = (run / "best.onnx").read_bytes()
    read = onnx_files.Path.read_bytes

    def replaced_after_reading(path):  # another process replaces the file right after it was read
        data = read(path)
        if path.name == "best.int8.onnx":
            (run / "best.int8.onnx").write_bytes(stale)
        return data

    monkeypatch.setattr(onnx_files.Path, "read_bytes", replaced_after_reading)
    predictor = open_predictor(run / "best.ckpt", device="cpu")
    assert predictor.choice["source"] == "best.int8.onnx" and predictor.model_bytes == measured
    assert predictor.metadata.get("quantization", "none") != "none"


@pytest.mark.slow
def test_onnx_files_of_other_weights_are_refused(run, caplog):
    _set_int8_passed(run, True)
    data = read_checkpoint_file(run / "best.ckpt")
    name = next(k for k, v in data["state_dict"].items() if k.startswith("model.") and v.is_floating_point())
    data["state_dict"][name] = data["state_dict"][name] + 0.01  # retrained: the card and the files are stale
    write_torch(data, run / "best.ckpt")
    with caplog.at_level(logging.INFO, logger="mucosa"):
        predictor = open_predictor(run / "best.ckpt", device="cpu")
    assert predictor.choice["runtime"] == "pytorch"
    assert "best.int8.onnx: its SHA-256 is not one that the model card of best.ckpt records" in caplog.text
    x = frames(3, seed=1)
    np.testing.assert_allclose(predictor(x), TorchPredictor(load_checkpoint(run / "best.ckpt"))(x), atol=1e-5)


@pytest.mark.slow
def test_a_failed_export_keeps_the_training_run(run, monkeypatch, caplog):
    before = (run / "best.ckpt").read_bytes()
    (run / "best.onnx").unlink()

    def broken(checkpoint):
        raise RuntimeError("exporter crashed")

    monkeypatch.setattr(onnx_files.onnx, "to_onnx", broken)
    with caplog.at_level(logging.WARNING, logger="mucosa"):
        assert onnx_files.deploy_after_training(run / "best.ckpt", run / "split.csv") is None
    assert "ONNX models not written (RuntimeError: exporter crashed)" in caplog.text
    assert (run / "best.ckpt").read_bytes() == before and not (run / "best.onnx").exists()


@pytest.mark.slow
def test_a_card_that_cannot_be_written_leaves_no_onnx_files(run, monkeypatch, caplog):
    from mucosa.atomic import WriteError

    for path in (run / "best.onnx", run / "best.int8.onnx"):
        path.unlink()

    def full(path, key, value):
        raise WriteError(f"cannot write {path}: No space left on device")

    monkeypatch.setattr(onnx_files, "record_in_card", full)
    with caplog.at_level(logging.WARNING, logger="mucosa"):
        assert onnx_files.deploy_after_training(run / "best.ckpt", run / "split.csv") is None
    assert "ONNX models not written" in caplog.text
    assert not (run / "best.onnx").exists() and not (run / "best.int8.onnx").exists()
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


@pytest.mark.slow
def test_a_failed_int8_export_is_recorded_and_fp32_still_written(run, deployed, monkeypatch):
    def broken(model, calibration):
        raise ValueError("no calibration")

    monkeypatch.setattr(onnx_files.onnx, "quantize_int8", broken)
    assert (run / "best.int8.onnx").is_file()  # the earlier export's: it must not outlive the new card
    card = onnx_files.deploy(run / "best.ckpt", run / "split.csv", deployed[2])
    assert card["int8"]["passed"] is False and "ValueError: no calibration" in card["int8"]["why"]
    assert not (run / "best.int8.onnx").exists()
    assert open_predictor(run / "best.ckpt", device="cpu").choice["source"] == "best.onnx"


@pytest.mark.slow
def test_commands_print_and_record_the_runtime_chosen(run, tmp_path, capsys):
    _set_int8_passed(run, True)
    assert main(["predict", str(run / "split.csv"), "--checkpoint", str(run / "best.ckpt"), "--device", "cpu",
                 "--out", str(tmp_path / "p")]) == 0
    out = capsys.readouterr().out
    assert "runtime: onnxruntime int8 on cpu (auto; best.int8.onnx)" in out.splitlines()
    assert main(["evaluate", "--checkpoint", str(run / "best.ckpt"), "--manifest", str(run / "split.csv"),
                 "--device", "cpu", "--out", str(tmp_path / "e"), "--bootstrap", "10", "--gallery", "0",
                 "--runtime", "onnx"]) == 0
    assert "runtime: onnxruntime fp32 on cpu (onnx; best.onnx)" in capsys.readouterr().out.splitlines()
    recorded = json.loads((tmp_path / "e" / "metrics.json").read_text())["runtime"]
    assert recorded["source"] == "best.onnx" and recorded["line"] == describe(recorded)


def test_only_the_first_process_writes_the_onnx_files(monkeypatch, tmp_path):
    """Under SLURM Lightning sets SLURM_PROCID, not LOCAL_RANK: a second task must not export too."""
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert onnx_files.process_rank() == 0
    monkeypatch.setenv("SLURM_PROCID", "1")
    assert onnx_files.process_rank() == 1
    assert onnx_files.deploy_after_training(tmp_path / "best.ckpt", tmp_path / "split.csv") is None
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("NODE_RANK", "2")
    assert onnx_files.process_rank() == 2
