import sys

import numpy as np
import pytest
import torch

from mucosa import __version__
from mucosa.atomic import write_torch
from mucosa.cli import main
from mucosa.errors import ConfigError, MucosaError
from mucosa.inference.batch import predict
from mucosa.inference.onnx import ExportError, OnnxPredictor, export
from mucosa.inference.pytorch import TorchPredictor, fold_batchnorm, predict_frames
from mucosa.models.checkpoint import (
    CheckpointFileError,
    load_checkpoint,
    read_checkpoint_file,
)
from mucosa.models.networks import ModelConfig, create_model

QUICK = {"model": {"size": 40}, "preprocessing": {"quality_threshold": 0.0, "crop": "none", "channel": "luminance"},
         "split": {"mode": "patient", "test": 0.4, "val": 0.0, "seed": 1},
         "training": {"epochs": 2, "batch_size": 8, "threads": 1}}


@pytest.fixture(scope="module")
def trained(train_tiny):
    """A tiny CNN-LSTM (40x40) trained on 8 synthetic patients; returns (checkpoint, split manifest, cache)."""
    tiny = train_tiny("export", QUICK, patients=8, per_patient=5, seed=4)
    return tiny.best, tiny.run / "split.csv", tiny.cache


def frames(n: int, size: int = 40, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


@pytest.mark.parametrize("kind", ["cnn-lstm", "cnn"])
def test_folding_batch_norm_keeps_the_function(kind):
    torch.manual_seed(0)
    model = create_model(ModelConfig(kind=kind, size=32)).eval()
    for bn in (model.bn1, model.bn2):  # statistics far from the identity
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.2, 3)
        bn.weight.data.uniform_(0.5, 2)
        bn.bias.data.uniform_(-1, 1)
    x = frames(6, 32)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    np.testing.assert_allclose(predict_frames(folded, x), predict_frames(model, x), atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


def test_export_parity_metadata_and_dynamic_batch(trained, tmp_path, capsys):
    import onnx

    checkpoint, manifest, _ = trained
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "batch 1:" in printed and "batch 16:" in printed
    report = export(checkpoint, tmp_path / "m.onnx")
    assert set(report.parity) == {1, 16} and max(report.parity.values()) < 1e-4
    proto = onnx.load(str(tmp_path / "m.onnx"))
    meta = {p.key: p.value for p in proto.metadata_props}
    loaded = load_checkpoint(checkpoint)
    assert meta["classes"] == '["control", "active"]' and meta["mucosa_version"] == __version__
    assert (meta["size"], meta["crop"], meta["channel"]) == ("40", '"none"', "luminance")
    assert float(meta["quality_threshold"]) == loaded.preprocessing.quality_threshold
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    onnx_model, torch_model = OnnxPredictor(tmp_path / "m.onnx", batch_size=16), TorchPredictor(loaded)
    assert onnx_model.classes == loaded.classes and onnx_model.preprocessing == loaded.preprocessing
    for n in (1, 5, 16, 37):  # any batch size; 37 = two full batches and a partial one
        x = frames(n, seed=n)
        np.testing.assert_allclose(onnx_model(x), torch_model(x), atol=1e-5)
    # predict runs from the .onnx file alone, with the preprocessing stored in it
    from_onnx = predict(tmp_path / "m.onnx", [manifest], tmp_path / "po")
    from_torch = predict(checkpoint, [manifest], tmp_path / "pt")
    a = np.array([s.mean() for s in from_onnx.files], float)
    np.testing.assert_allclose(a, np.array([s.mean() for s in from_torch.files], float), atol=1e-5)


def test_int8_export_reports_agreement_and_auc_change(trained, tmp_path, capsys):
    import onnx

    checkpoint, manifest, cache = trained
    report = export(checkpoint, tmp_path / "q.onnx", int8=True, manifest=manifest, cache=cache)
    q = report.int8
    from mucosa.data.manifest import load_manifest

    test_rows = [r for r in load_manifest(manifest).records if r.split == "test"]
    assert q["frames"] == len(test_rows) and "test" in q["evaluated"]  # the part evaluate would use
    assert 0.0 <= q["agreement"] <= 1.0 and q["auc_fp32"] is not None
    assert q["auc_change"] == pytest.approx(q["auc_int8"] - q["auc_fp32"])
    ops = {node.op_type for node in onnx.load(str(tmp_path / "q.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    int8, fp32 = OnnxPredictor(tmp_path / "q.onnx"), TorchPredictor(load_checkpoint(checkpoint))
    assert int8.metadata["quantization"].startswith("int8")
    x = frames(8)
    assert np.abs(int8(x) - fp32(x)).max() < 0.05
    assert main(["export", "--checkpoint", str(checkpoint), "--int8", "--manifest", str(manifest), "--cache",
                 str(cache.root), "--out", str(tmp_path / "c.onnx")]) == 0
    assert "same verdict for" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--int8 needs --manifest"):
        export(checkpoint, tmp_path / "x.onnx", int8=True)


def test_failed_parity_writes_nothing(trained, tmp_path, monkeypatch):
    checkpoint, _, _ = trained
    monkeypatch.setattr("mucosa.inference.onnx.PARITY_TOLERANCE", 0.0)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export(checkpoint, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


def test_bad_files_give_clear_errors(trained, tmp_path, capsys, monkeypatch):
    checkpoint, manifest, _ = trained
    text = tmp_path / "model.ckpt"
    text.write_text("hello")
    assert main(["export", "--checkpoint", str(text)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "model.ckpt" in err and "Traceback" not in err
    future = read_checkpoint_file(checkpoint)
    future["mucosa"]["format_version"] = 99
    write_torch(future, tmp_path / "future.ckpt")
    with pytest.raises(CheckpointFileError, match="upgrade mucosa"):
        export(tmp_path / "future.ckpt")
    not_ours = tmp_path / "other.onnx"
    torch.onnx.export(torch.nn.Linear(2, 1), (torch.zeros(1, 2),), str(not_ours), dynamo=False)
    with pytest.raises(ExportError, match="not an ONNX model written by `mucosa export`"):
        OnnxPredictor(not_ours)
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(ExportError, match="junk.onnx: not a loadable ONNX model"):
        OnnxPredictor(tmp_path / "junk.onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(MucosaError, match="pip install onnxruntime"):
        OnnxPredictor(not_ours)
    assert main(["predict", "--checkpoint", str(checkpoint), "--runtime", "onnx", str(manifest), "--out",
                 str(tmp_path / "p")]) == 2
    assert "pip install onnxruntime" in capsys.readouterr().err


@pytest.mark.parametrize("key, value", [("classes", "junk["), ("classes", '"one"'), ("classes", None),
                                        ("preprocessing", '{"size": "big"}'), ("preprocessing", "[]")])
def test_damaged_mucosa_metadata_is_one_line_naming_the_file(trained, tmp_path, capsys, key, value):
    import onnx

    checkpoint, _, _ = trained
    good = export(checkpoint, tmp_path / "good.onnx").path
    model = onnx.load(str(good))
    kept = [p for p in model.metadata_props if p.key != key]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    if value is not None:
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(tmp_path / "damaged.onnx"))
    with pytest.raises(ExportError, match=f"damaged.onnx: damaged mucosa metadata \\({key}"):
        OnnxPredictor(tmp_path / "damaged.onnx")
    from PIL import Image

    Image.fromarray(frames(1)[0]).save(tmp_path / "frame.png")
    assert main(["predict", "--checkpoint", str(tmp_path / "damaged.onnx"), str(tmp_path / "frame.png"),
                 "--out", str(tmp_path / "p")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "damaged.onnx" in err and len(err.strip().splitlines()) == 1
