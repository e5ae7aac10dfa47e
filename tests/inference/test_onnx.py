import re
import sys

import numpy as np
import pytest
import torch

from mucosa import __version__
from mucosa.atomic import write_torch
from mucosa.cli import main
from mucosa.errors import ConfigError, MucosaError
from mucosa.inference.batch import predict
from mucosa.inference.onnx import (
    ExportError,
    NoEmbeddingError,
    OnnxPredictor,
    export,
    manifest_frames,
    parity,
    to_onnx,
)
from mucosa.inference.pytorch import TorchPredictor, fold_batchnorm, predict_and_embed_frames, predict_frames
from mucosa.models.checkpoint import (
    CheckpointFileError,
    load_checkpoint,
    read_checkpoint_file,
)
from mucosa.models.networks import ModelConfig, create_model
from tiny_configs import TINY_LUMINANCE, tiny_config

QUICK = tiny_config(TINY_LUMINANCE, split={"test": 0.4, "val": 0.0, "seed": 1}, training={"epochs": 2})  # no validation


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
    # the embedding, taken after BN2, is unchanged too (BN2 moves to the pooled features)
    np.testing.assert_allclose(predict_and_embed_frames(folded, x)[1], predict_and_embed_frames(model, x)[1],
                               atol=1e-5)
    assert folded.state_dict().keys() <= model.state_dict().keys()  # nothing new would reach a checkpoint
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched


@pytest.mark.slow
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


@pytest.mark.slow
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
    # the int8 embedding points where the fp32 one does (cosine similarity seen: 0.99999), on the cohort's frames
    # and on noise, and each frame's int8 embedding is nearest to its own fp32 one, not to another frame's
    cohort = manifest_frames(load_checkpoint(checkpoint), manifest, cache).frames
    for images in (cohort, x):
        quantized, exact = int8.predict_and_embed(images)[1], fp32.predict_and_embed(images)[1]
        similarity = quantized @ exact.T
        assert np.diag(similarity).mean() > 0.98
        np.testing.assert_array_equal(similarity.argmax(axis=1), np.arange(len(images)))
    assert main(["export", "--checkpoint", str(checkpoint), "--int8", "--manifest", str(manifest), "--cache",
                 str(cache.root), "--out", str(tmp_path / "c.onnx")]) == 0
    assert "same verdict for" in capsys.readouterr().out
    with pytest.raises(ConfigError, match="--int8 needs --manifest"):
        export(checkpoint, tmp_path / "x.onnx", int8=True)


@pytest.mark.slow
def test_failed_parity_writes_nothing(trained, tmp_path, monkeypatch):
    checkpoint, _, _ = trained
    monkeypatch.setattr("mucosa.inference.onnx.PARITY_TOLERANCE", 0.0)
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export(checkpoint, tmp_path / "m.onnx")
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
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


@pytest.mark.slow
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


class CountingSession:
    """An ONNX Runtime session that records the outputs asked of each run."""

    def __init__(self, session) -> None:
        self.session, self.runs = session, []

    def run(self, names, feed):
        self.runs.append(list(names))
        return self.session.run(names, feed)

    def get_outputs(self):
        return self.session.get_outputs()


@pytest.mark.slow
def test_predict_and_embed_is_one_pass_with_the_probabilities_of_call(trained, tmp_path):
    checkpoint, _, _ = trained
    loaded = load_checkpoint(checkpoint)
    export(checkpoint, tmp_path / "m.onnx")
    x = frames(37, seed=5)  # two full batches of 16 and a partial one
    x[20] = x[3]  # the same frame in two batches
    with torch.inference_mode():
        expected = loaded.model.eval().embed(torch.from_numpy(x[:, None] / np.float32(255))).numpy()
    onnx_model, torch_model = OnnxPredictor(tmp_path / "m.onnx"), TorchPredictor(loaded, device="cpu")
    onnx_model.session = CountingSession(onnx_model.session)
    original, passes = torch_model.model.features_and_source, []
    torch_model.model.features_and_source = lambda images: passes.append(len(images)) or original(images)
    for predictor in (torch_model, onnx_model):
        probs, embeddings = predictor.predict_and_embed(x)
        np.testing.assert_allclose(probs, predictor(x), rtol=0, atol=1e-7)
        assert embeddings.shape == (37, 128) == (37, predictor.embedding_size) and embeddings.dtype == np.float32
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1, atol=1e-5)
        np.testing.assert_allclose(embeddings, expected, atol=1e-4)  # ONNX's and the folded model's: as PyTorch's
        np.testing.assert_allclose(embeddings[20], embeddings[3], atol=1e-6)
        assert np.abs(embeddings[:16] - embeddings[16:32]).max() > 1e-3  # different frames, different points
        empty = predictor.predict_and_embed(x[:0])
        assert empty[0].shape == (0,) and empty[1].shape == (0, 128)
    assert passes == [16, 16, 5] + [16, 16, 5]  # predict_and_embed, then __call__: one pass per batch each
    # __call__ asks for the probabilities alone; no frames, no run
    assert onnx_model.session.runs == [["probabilities", "embedding"]] * 3 + [["probabilities"]] * 3


@pytest.mark.slow
def test_parity_measures_the_embedding_too(trained):
    loaded = load_checkpoint(trained[0])
    model = to_onnx(loaded)
    assert max(parity(loaded, model, (2,)).values()) < 1e-4
    original = loaded.model.embedding_of
    loaded.model.embedding_of = lambda source: original(source).flip(1)  # PyTorch's embedding changes, not its logits
    assert max(parity(loaded, model, (2,)).values()) > 1e-2


@pytest.mark.slow
def test_an_export_without_the_embedding_output_predicts_but_cannot_embed(trained, tmp_path):
    import onnx

    import mucosa

    checkpoint, _, _ = trained
    export(checkpoint, tmp_path / "new.onnx")
    model = onnx.load(str(tmp_path / "new.onnx"))  # as exported before mucosa gave embeddings
    kept = [output for output in model.graph.output if output.name != "embedding"]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    onnx.save(model, str(tmp_path / "old.onnx"))
    old, x = OnnxPredictor(tmp_path / "old.onnx"), frames(5)
    np.testing.assert_allclose(old(x), OnnxPredictor(tmp_path / "new.onnx")(x), atol=1e-6)
    message = "^" + re.escape(f"{tmp_path / 'old.onnx'} has no embedding output: export it again") + "$"
    with pytest.raises(NoEmbeddingError, match=message):
        old.predict_and_embed(x)
    classifier = mucosa.load(tmp_path / "old.onnx")
    assert classifier.predict(x).probabilities.shape == (5,)
    with pytest.raises(NoEmbeddingError, match=message):
        classifier.embed(x)


@pytest.mark.slow
@pytest.mark.parametrize("kind, classes", [("cnn-lstm", 2), ("cnn", 3), ("timm:fakenet", 2)])
def test_every_kind_exports_its_embedding_in_fp32_and_int8(kind, classes, timm, tmp_path):
    from mucosa.data.preparation import Preprocessing
    from mucosa.inference.onnx import export_checked, quantize_int8
    from mucosa.models.checkpoint import LoadedCheckpoint

    torch.manual_seed(0)
    model = create_model(ModelConfig(kind=kind, size=40, num_classes=classes)).eval()
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # folded, and not identities
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 2)
    loaded = LoadedCheckpoint(model, model.config, ["a", "b", "c"][:classes],
                              Preprocessing(size=40, crop="none", quality_threshold=0.0), {}, tmp_path / "x.ckpt")
    fp32, _ = export_checked(loaded)  # parity of logits and embedding at batch 1 and 16
    x = frames(12, seed=3)
    with torch.inference_mode():
        expected = model.embed(torch.from_numpy(x[:, None] / np.float32(255))).numpy()
    exact = OnnxPredictor(fp32).predict_and_embed(x)[1]
    np.testing.assert_allclose(exact, expected, atol=1e-4)
    quantized = OnnxPredictor(quantize_int8(fp32, frames(16, seed=4))).predict_and_embed(x)[1]
    assert quantized.shape == exact.shape == (12, 8 if kind.startswith("timm:") else 128)
    assert np.sum(quantized * exact, axis=1).mean() > 0.98
