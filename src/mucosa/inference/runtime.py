"""Choosing how a model runs: a checkpoint or an ``.onnx`` file → a predictor (PyTorch or ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

from mucosa.errors import ConfigError
from mucosa.inference.onnx import OnnxPredictor, to_checked_onnx
from mucosa.inference.predictors import TorchPredictor
from mucosa.models.checkpoint import load_checkpoint


def open_predictor(path, runtime: str = "torch", batch_size: int = 16, threads: int | None = None):
    """A predictor (``TorchPredictor`` or ``export.OnnxPredictor``) for a checkpoint or an ``.onnx`` file.

    Args:
        path: a mucosa checkpoint, or an ONNX model written by ``mucosa export`` (then the runtime is ONNX).
        runtime: ``torch`` or ``onnx``; ``onnx`` with a checkpoint exports it (in memory) first.
        batch_size: frames per forward pass.
        threads: intra-op threads of the runtime (default: PyTorch's or ONNX Runtime's own, all cores).

    Raises:
        ConfigError: unknown runtime. CheckpointFileError: not a checkpoint. MucosaError: no onnxruntime.
    """
    if runtime not in ("torch", "onnx"):
        raise ConfigError(f"runtime {runtime!r} must be 'torch' or 'onnx'")
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return OnnxPredictor(path, batch_size=batch_size, threads=threads)
    checkpoint = load_checkpoint(path)
    if runtime == "torch":
        return TorchPredictor(checkpoint, batch_size, threads)
    return OnnxPredictor(to_checked_onnx(checkpoint), batch_size=batch_size, checkpoint=checkpoint,
                         threads=threads)
