"""ONNX export of a checkpoint (fp32, or int8 with calibration), its parity check, and the ONNX predictor.

The exported graph takes ``image``: float32 (B, 1, S, S), a preprocessed gray frame in [0, 1] (dynamic
batch B), and returns ``logits`` (B, num_outputs), ``probabilities`` ((B,) positive-class probability
for a binary model, (B, K) otherwise) and ``embedding`` ((B, D) frame embedding, unit length:
``models.embedding``; files exported before mucosa had it lack it, and only ``predict_and_embed`` needs it).
Batch norms are folded first (``pytorch.fold_batchnorm``); the
model's per-image standardisation is inside the graph. Everything needed to preprocess frames as in
training is stored in the model's ``metadata_props`` (see :func:`metadata`), so ``mucosa predict`` and
``mucosa stream`` run from the ``.onnx`` file alone.

int8 models are quantized statically (QDQ, per-channel int8 weights, uint8 activations: the fast path of
ONNX Runtime's CPU kernels) with calibration frames from a manifest; Conv1, with a single input channel,
and the LSTM stay in float. Quantization changes predictions a little, so an int8 export always measures
it: share of frames with the same verdict and the ROC AUC change against the float model, on the part of
the manifest that ``evaluate`` would use.
"""

from __future__ import annotations

import io
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mucosa import atomic, metrics
from mucosa._version import __version__
from mucosa.data.cache import FrameCache
from mucosa.data.frame_table import assemble
from mucosa.data.manifest import Cohort, load_manifest
from mucosa.data.preparation import Preprocessing
from mucosa.data.splits import select_parts
from mucosa.errors import ConfigError, MucosaError
from mucosa.formats import check_version, split_format
from mucosa.inference import provenance
from mucosa.inference import verdict as verdicts
from mucosa.inference.pytorch import fold_batchnorm, probabilities, resolve_device
from mucosa.models.checkpoint import LoadedCheckpoint, load_checkpoint

FORMAT = "mucosa-onnx"
FORMAT_VERSION = 1
FORMAT_VERSIONS = (0, 1)  # 0: exported before the metadata recorded its format version
OPSET = 17
PARITY_TOLERANCE = 1e-4
PARITY_BATCHES = (1, 16)
INSTALL_HINT = "install it with `pip install onnxruntime` (and `pip install onnx` for export)"


class ExportError(MucosaError):
    """An export failed its check, or an ONNX file is not one mucosa wrote."""


class NoEmbeddingError(ExportError):
    """An ONNX file exported before mucosa gave frame embeddings: it predicts, but cannot embed."""


def import_onnxruntime():
    """``onnxruntime``, or a MucosaError saying how to install it."""
    try:
        import onnxruntime
    except ImportError:
        raise MucosaError(f"the ONNX runtime is not installed: {INSTALL_HINT}") from None
    return onnxruntime


def _import_onnx():
    try:
        import onnx
    except ImportError:
        raise MucosaError(f"the onnx package is not installed: {INSTALL_HINT}") from None
    return onnx


class _Deployed(torch.nn.Module):
    """The folded model with the three outputs of the exported graph, from one pass through the network."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = fold_batchnorm(model)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        logits, embedding = self.model.forward_and_embed(image)
        return logits, probabilities(logits), embedding


def exported_from(predictor: OnnxPredictor, checkpoint: LoadedCheckpoint) -> bool:
    """Whether an ONNX model is an export of the checkpoint's current weights, classes and preprocessing."""
    return (predictor.metadata.get("weights_sha256") == checkpoint.weights_sha256
            and predictor.classes == checkpoint.classes and predictor.preprocessing == checkpoint.preprocessing)


def metadata(checkpoint: LoadedCheckpoint, quantization: str = "none") -> dict[str, str]:
    """The ``metadata_props`` of an exported model: preprocessing, classes and provenance, as strings."""
    prep = checkpoint.preprocessing
    return {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "mucosa_version": __version__,
        "classes": json.dumps(checkpoint.classes),
        "size": str(prep.size), "crop": json.dumps(prep.to_dict()["crop"]), "channel": prep.channel,
        "quality_threshold": repr(prep.quality_threshold), "fov_frames": str(prep.fov_frames),
        "preprocessing": json.dumps(prep.to_dict()), "model": json.dumps(checkpoint.model_config.to_dict()),
        "quantization": quantization, "checkpoint": checkpoint.path.name,
        "weights_sha256": checkpoint.weights_sha256,
        "input": "image: float32 (batch, 1, size, size), preprocessed gray frame in [0, 1]",
        "outputs": "logits (batch, outputs); probabilities: (batch,) positive class for 2 classes, else "
                   "(batch, classes); embedding: (batch, features) frame embedding, unit length",
    }


def _with_metadata(model_bytes: bytes, meta: dict[str, str]) -> bytes:
    onnx = _import_onnx()
    proto = onnx.load_from_string(model_bytes)
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = "mucosa CLE classifier (see metadata_props for the preprocessing)"
    return proto.SerializeToString()


def to_onnx(checkpoint: LoadedCheckpoint) -> bytes:
    """The fp32 ONNX model (bytes) of a checkpoint, with dynamic batch size and metadata."""
    _import_onnx()
    size = checkpoint.preprocessing.size
    dummy = torch.rand(1, 1, size, size)
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the model's input-shape check is a Python branch, fixed at export
        warnings.simplefilter("ignore")
        torch.onnx.export(_Deployed(checkpoint.model), (dummy,), buffer, dynamo=False, opset_version=OPSET,
                          input_names=["image"], output_names=["logits", "probabilities", "embedding"],
                          dynamic_axes={name: {0: "batch"} for name in ("image", "logits", "probabilities",
                                                                         "embedding")})
    return _with_metadata(buffer.getvalue(), metadata(checkpoint))


def providers(device: str | torch.device = "cpu") -> list[str]:
    """ONNX Runtime execution providers for a device: CUDA first where it is installed and asked for."""
    ort = import_onnxruntime()
    if resolve_device(device).type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _session(model: bytes | Path, threads: int | None = None, device: str | torch.device = "cpu",
             spinning: bool = True, name: str | Path = "model"):
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0  # 0: one per physical core
    if not spinning:  # threads sleep between calls instead of spinning (a server shares its cores)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3  # errors only: the NCHWc layout warning is about saving, which we do not
    # no memory pattern per input shape: batches of every size (a case's last batch, the quality gate's drops)
    # would each keep one, and the memory of a long-running server would grow with them (1% slower at most)
    options.enable_mem_pattern = False
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, options, providers=providers(device))
    except Exception as error:  # onnxruntime raises its own exception types for a bad file
        name = name if isinstance(model, bytes) else model
        raise ExportError(f"{name}: not a loadable ONNX model ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:200]})") from None


def parity(checkpoint: LoadedCheckpoint, model: bytes | Path, batches: tuple[int, ...] = PARITY_BATCHES,
           seed: int = 0) -> dict[int, float]:
    """Largest |difference| between the outputs of ONNX Runtime and of the checkpoint's PyTorch model, per
    batch size: of the logits and of the frame embedding (where the graph has one).

    Inputs are random uint8 frames scaled to [0, 1], as predict feeds them.
    """
    session = _session(model)
    names = [name for name in ("logits", "embedding") if name in {o.name for o in session.get_outputs()}]
    size = checkpoint.preprocessing.size
    rng = np.random.default_rng(seed)
    result = {}
    checkpoint.model.eval()
    for batch in batches:
        x = rng.integers(0, 256, (batch, 1, size, size)).astype(np.float32) / 255.0
        with torch.inference_mode():
            expected = [t.numpy() for t in checkpoint.model.forward_and_embed(torch.from_numpy(x))]
        got = session.run(names, {"image": x})
        result[batch] = max(float(np.abs(g - e).max()) for g, e in zip(got, expected))  # logits first, as named
    return result


def export_checked(checkpoint: LoadedCheckpoint, batches: tuple[int, ...] = PARITY_BATCHES
                   ) -> tuple[bytes, dict[int, float]]:
    """The fp32 ONNX model of a checkpoint (:func:`to_onnx`) and its parity with PyTorch per batch size
    (:func:`parity`), the one export step of ``mucosa export``, of training's files and of in-memory exports.

    Raises:
        ExportError: the largest |difference| of logits and embedding is not below :data:`PARITY_TOLERANCE`.
    """
    model = to_onnx(checkpoint)
    diffs = parity(checkpoint, model, batches)
    worst = max(diffs.values())
    if not worst < PARITY_TOLERANCE:
        raise ExportError(f"{checkpoint.path}: the ONNX model differs from PyTorch by {worst:.2e} (max |difference| "
                          f"of logits and embedding, tolerance {PARITY_TOLERANCE:g}); not writing it")
    return model, diffs


def to_checked_onnx(checkpoint: LoadedCheckpoint) -> bytes:
    """:func:`export_checked` at batch 2 (``--runtime onnx`` with a checkpoint)."""
    return export_checked(checkpoint, batches=(2,))[0]


# --------------------------------------------------------------------------------------------------
# int8
# --------------------------------------------------------------------------------------------------


def _evenly(count: int, most: int) -> np.ndarray:
    return np.unique(np.linspace(0, count - 1, min(count, most)).round().astype(np.int64)) if count else \
        np.zeros(0, np.int64)


@dataclass
class ManifestFrames:
    """Frames of a manifest for int8 calibration and for measuring what quantization changes."""

    calibration: np.ndarray  # (C, S, S) uint8
    frames: np.ndarray       # (N, S, S) uint8, evaluated
    labels: np.ndarray       # (N,) class index
    why: str


def manifest_frames(checkpoint: LoadedCheckpoint, manifest: str | Path, cache: FrameCache | None = None,
                    calibration: int = 64, most: int = 2000, split: str = "auto",
                    calibrate_within: bool = False) -> ManifestFrames:
    """Evaluated frames (the part ``split`` picks as ``evaluate`` would, at most ``most``, evenly spread) and
    calibration frames (from the other rows when there are any and not ``calibrate_within``, else from the
    same part)."""
    cohort = load_manifest(manifest, classes=checkpoint.classes, require_all=False)
    part, _, why = select_parts(cohort, checkpoint.info, split)
    chosen = set(part.records)
    rest = Cohort([] if calibrate_within else [r for r in cohort.records if r not in chosen], cohort.classes,
                  cohort.source)
    table = assemble(part, checkpoint.preprocessing, cache)
    if len(table) == 0:
        raise ConfigError(f"{manifest}: every frame of {why} was dropped by the quality gate")
    pick = _evenly(len(table), most)
    frames = np.stack([table.frame(i) for i in pick])
    source = assemble(rest, checkpoint.preprocessing, cache) if rest.records else table
    if len(source) == 0:
        source = table
    calib = np.stack([source.frame(i) for i in _evenly(len(source), calibration)])
    return ManifestFrames(calib, frames, table.labels[pick], why)


def quantize_int8(model: bytes, calibration: np.ndarray) -> bytes:
    """Static int8 quantization (QDQ, per-channel weights) of an fp32 mucosa ONNX model."""
    import_onnxruntime()
    onnx = _import_onnx()
    import onnxruntime.quantization as quantization
    from onnxruntime.quantization.shape_inference import quant_pre_process

    frames = [(calibration[i:i + 8].astype(np.float32) / 255.0)[:, None] for i in range(0, len(calibration), 8)]

    class Reader(quantization.CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(frames)

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"image": batch}

    with tempfile.TemporaryDirectory(prefix="mucosa-int8-") as tmp:
        fp32, pre, out = Path(tmp, "fp32.onnx"), Path(tmp, "pre.onnx"), Path(tmp, "int8.onnx")
        fp32.write_bytes(model)
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        names = [n.name for n in onnx.load(str(pre)).graph.node]
        first = [n for n in names if "/conv1/" in n]  # one input channel: int8 gains nothing, costs accuracy
        quantization.quantize_static(
            str(pre), str(out), Reader(), quant_format=quantization.QuantFormat.QDQ, per_channel=True,
            activation_type=quantization.QuantType.QUInt8, weight_type=quantization.QuantType.QInt8,
            op_types_to_quantize=["Conv", "Relu", "MaxPool", "MatMul"], nodes_to_exclude=first)
        return out.read_bytes()


def _auc(labels: np.ndarray, probs: np.ndarray) -> float | None:
    values = metrics.binary_metrics(labels, probs) if probs.ndim == 1 else metrics.multiclass_metrics(labels, probs)
    return values["roc_auc"] if np.isfinite(values["roc_auc"]) else None


def compare_int8(fp32: bytes, int8: bytes, data: ManifestFrames) -> dict:
    """What quantization changes on the evaluated frames: verdict agreement, AUC, probability shift."""
    a, b = OnnxPredictor(fp32)(data.frames), OnnxPredictor(int8)(data.frames)
    auc_a, auc_b = _auc(data.labels, a), _auc(data.labels, b)
    return {"frames": int(len(a)), "evaluated": data.why, "calibration_frames": int(len(data.calibration)),
            "agreement": float(np.mean(verdicts.calls(a) == verdicts.calls(b))),
            "max_probability_change": float(np.abs(a - b).max()),
            "mean_probability_change": float(np.abs(a - b).mean()),
            "auc_fp32": auc_a, "auc_int8": auc_b,
            "auc_change": None if auc_a is None or auc_b is None else auc_b - auc_a}


def quantize_and_measure(checkpoint: LoadedCheckpoint, model: bytes, data: ManifestFrames, frames_from: str
                         ) -> tuple[bytes, dict]:
    """The int8 model of an fp32 export (:func:`quantize_int8` on ``data.calibration``), with its metadata,
    and what quantization changes on ``data``'s frames (:func:`compare_int8`); ``frames_from`` says where the
    calibration frames came from, for the metadata."""
    quantized = quantize_int8(model, data.calibration)
    comparison = compare_int8(model, quantized, data)
    meta = metadata(checkpoint, f"int8 static QDQ, calibrated on {len(data.calibration)} {frames_from}; "
                                f"verdict agreement {comparison['agreement']:.4f}")
    return _with_metadata(quantized, meta), comparison


@dataclass
class ExportReport:
    """What ``export`` wrote and measured."""

    path: Path
    parity: dict[int, float]
    int8: dict | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    def format(self) -> str:
        lines = [f"ONNX model -> {self.path}"]
        lines += [f"parity with PyTorch (fp32 graph), batch {b}: max |difference| of logits and embedding {d:.2e}"
                  for b, d in self.parity.items()]
        if self.int8:
            q = self.int8
            lines.append(f"int8 vs fp32 on {q['frames']} frames ({q['evaluated']}): same verdict for "
                         f"{100 * q['agreement']:.2f}%, probability change max {q['max_probability_change']:.4f}"
                         f" mean {q['mean_probability_change']:.4f}")
            if q["auc_change"] is not None:
                lines.append(f"ROC AUC fp32 {q['auc_fp32']:.4f} -> int8 {q['auc_int8']:.4f} "
                             f"(change {q['auc_change']:+.4f})")
            else:
                lines.append("ROC AUC change: not defined (the evaluated frames hold one class)")
        return "\n".join(lines)


def export(checkpoint: str | Path, out: str | Path | None = None, int8: bool = False,
           manifest: str | Path | None = None, cache: FrameCache | None = None) -> ExportReport:
    """Export a checkpoint to ONNX (``mucosa export``), checking parity with PyTorch at batch 1 and 16.

    Args:
        checkpoint: a mucosa checkpoint.
        out: the ``.onnx`` file (default: beside the checkpoint, ``-int8`` added for int8).
        int8: quantize (needs ``manifest`` for calibration frames and the agreement / AUC report).
        manifest: a cohort manifest with the checkpoint's classes.
        cache: preprocessing cache for the manifest's frames.

    The file's SHA-256 is recorded in the checkpoint's model card (``provenance.record_export``), so that
    ``serve --onnx`` and a file named alone beside its checkpoint are run only as exported.

    Raises:
        ExportError: parity above tolerance. ConfigError: ``int8`` without a manifest. OutputError: ``out``
            cannot be written (checked first) or is the checkpoint itself.
    """
    if int8 and manifest is None:
        raise ConfigError("--int8 needs --manifest: quantization is calibrated on its frames, and the share "
                          "of unchanged verdicts and the AUC change are measured on them before the model is "
                          "written")
    out = Path(out) if out else Path(checkpoint).with_name(Path(checkpoint).stem + ("-int8" if int8 else "")
                                                           + ".onnx")
    atomic.check_writable_file(out, "ONNX model")
    if out.resolve() == Path(checkpoint).resolve():
        raise atomic.OutputError(f"--out {out} would overwrite the checkpoint being exported")
    loaded = load_checkpoint(checkpoint)
    model, diffs = export_checked(loaded)
    report = ExportReport(out, diffs)
    if int8:
        data = manifest_frames(loaded, manifest, cache)
        model, report.int8 = quantize_and_measure(loaded, model, data, f"frames of {Path(manifest).name}")
    # recorded before it is written: a hash recorded for a file never written vouches for nothing
    provenance.record_export(checkpoint, loaded, model, out.name, "int8" if int8 else "none")
    atomic.write_bytes(out, model)
    report.metadata = OnnxPredictor(model).metadata
    return report


# --------------------------------------------------------------------------------------------------
# Running an exported model
# --------------------------------------------------------------------------------------------------


def _described(metadata: dict, name) -> tuple[list[str], Preprocessing]:
    """The classes and preprocessing a mucosa ONNX model records, or an ExportError naming what is damaged."""
    key = "classes"
    try:
        classes = json.loads(metadata[key])
        if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) and c for c in classes)):
            raise ValueError(f"expected a list of two or more class names, got {classes!r:.80}")
        key = "preprocessing"
        values = json.loads(metadata[key])
        if not isinstance(values, dict):
            raise ValueError(f"expected an object, got {values!r:.80}")
        return classes, Preprocessing(**values)
    except (KeyError, ValueError, TypeError, MucosaError) as error:  # ConfigError: a value out of range
        why = "missing" if isinstance(error, KeyError) else " ".join(str(error).split())[:200]
        raise ExportError(f"{name}: damaged mucosa metadata ({key}: {why}); export the checkpoint again") from None


def _check_format_version(metadata: dict, name) -> int:
    """The ONNX metadata's format version (a ``mucosa-onnx-N`` suffix or ``format_version``), refused with the
    version found and those known when this mucosa does not know it."""
    suffix = split_format(metadata.get("format"), FORMAT)[1]
    found = metadata.get("format_version", "0") if suffix is None else suffix
    found = int(found) if isinstance(found, str) and found.isdigit() else found
    return check_version(name, "ONNX metadata", found, FORMAT_VERSIONS, ExportError)


class OnnxPredictor:
    """Probabilities (and frame embeddings) from an ONNX model written by mucosa, with its preprocessing read
    from the file.

    Attributes:
        classes, preprocessing: from the model's metadata.
        source: the file the model was read from ("model" for bytes).
        checkpoint: the PyTorch checkpoint when the model was exported on the fly (for Grad-CAM), else None.
    """

    runtime = "onnx"

    def __init__(self, model: bytes | str | Path, batch_size: int = 16,
                 checkpoint: LoadedCheckpoint | None = None, threads: int | None = None,
                 device: str | torch.device = "cpu", spinning: bool = True) -> None:
        name = "model" if isinstance(model, bytes) else Path(model)
        if not isinstance(model, bytes):
            if not name.is_file():
                raise ExportError(f"{name}: ONNX model not found")
            model = name.read_bytes()
        self.model_bytes = model  # the bytes run: a file is read once, and what is checked is what runs
        self.session = _session(model, threads, device, spinning, name)
        self.device = resolve_device(device)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        if split_format(self.metadata.get("format"), FORMAT) is None:
            raise ExportError(f"{name}: not an ONNX model written by `mucosa export` (no mucosa metadata)")
        _check_format_version(self.metadata, name)
        self.classes, self.preprocessing = _described(self.metadata, name)
        self.batch_size = batch_size
        self.checkpoint = checkpoint
        self.source = str(name)  # what errors name (onnx_files sets the name of a file it read)

    @property
    def embedding_size(self) -> int:
        """D, the width of the model's ``embedding`` output.

        Raises:
            NoEmbeddingError: a file exported before mucosa gave embeddings.
        """
        output = next((o for o in self.session.get_outputs() if o.name == "embedding"), None)
        if output is None or len(output.shape) != 2 or not isinstance(output.shape[1], int):
            raise NoEmbeddingError(f"{self.source} has no embedding output: export it again")
        return output.shape[1]

    def _inputs(self, frames: np.ndarray):
        for start in range(0, len(frames), self.batch_size):
            yield {"image": np.asarray(frames[start:start + self.batch_size], dtype=np.float32)[:, None] / 255.0}

    def _no_probabilities(self) -> np.ndarray:
        k = len(self.classes)
        return np.zeros((0,) if k == 2 else (0, k), np.float32)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames (N, S, S) → (N,) positive probability, or (N, K)."""
        out = [self.session.run(["probabilities"], x)[0] for x in self._inputs(frames)]
        return np.concatenate(out) if out else self._no_probabilities()

    def predict_and_embed(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 frames (N, S, S) → (the probabilities of ``__call__``, frame embeddings (N, D) float32), from one
        run of the model per batch.

        Raises:
            NoEmbeddingError: a file exported before mucosa gave embeddings (``__call__`` still runs it).
        """
        size = self.embedding_size
        out = [self.session.run(["probabilities", "embedding"], x) for x in self._inputs(frames)]
        if not out:
            return self._no_probabilities(), np.zeros((0, size), np.float32)
        return np.concatenate([p for p, _ in out]), np.concatenate([e for _, e in out]).astype(np.float32, copy=False)
