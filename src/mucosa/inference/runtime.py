"""Choosing how a model runs: a checkpoint or an ``.onnx`` file → a predictor (PyTorch or ONNX Runtime)."""

from __future__ import annotations

import logging
from pathlib import Path

from mucosa.errors import ConfigError, MucosaError
from mucosa.inference.onnx import OnnxPredictor, to_checked_onnx
from mucosa.inference.pytorch import TorchPredictor, resolve_device
from mucosa.models.checkpoint import load_checkpoint

log = logging.getLogger(__name__)

RUNTIMES = ("auto", "torch", "onnx")


def open_predictor(path, runtime: str = "torch", batch_size: int = 16, threads: int | None = None,
                   device: str = "auto"):
    """A predictor (``TorchPredictor`` or ``OnnxPredictor``) for a checkpoint or an ``.onnx`` file.

    Args:
        path: a mucosa checkpoint, or an ONNX model written by ``mucosa export`` (then the runtime is ONNX).
        runtime: ``torch``, ``onnx`` (a checkpoint is exported in memory first, parity-checked against
            PyTorch), or ``auto``: ONNX Runtime on the CPU (faster there, docs/performance.md), PyTorch on
            a GPU or where the ONNX export fails its parity check.
        batch_size: frames per forward pass.
        threads: intra-op threads of the runtime (default: PyTorch's or ONNX Runtime's own, all cores).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``resolve_device``).

    Raises:
        ConfigError: unknown runtime or device. CheckpointFileError: not a checkpoint. MucosaError: no
        onnxruntime.
    """
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} must be one of {', '.join(RUNTIMES)}")
    chosen = resolve_device(device)
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        predictor = OnnxPredictor(path, batch_size=batch_size, threads=threads, device=chosen)
    else:
        predictor = _for_checkpoint(load_checkpoint(path), runtime, batch_size, threads, chosen)
    log.info("runtime: %s on %s", predictor.runtime, chosen)
    return predictor


def _for_checkpoint(checkpoint, runtime: str, batch_size: int, threads: int | None, device):
    if runtime == "auto":
        runtime = "torch" if device.type == "cuda" else "onnx"
        try:
            return _for_checkpoint(checkpoint, runtime, batch_size, threads, device)
        except MucosaError as error:  # no onnxruntime, or an export that fails its parity check
            log.info("ONNX Runtime not used (%s); running PyTorch", error)
            runtime = "torch"
    if runtime == "torch":
        return TorchPredictor(checkpoint, batch_size, threads, device)
    return OnnxPredictor(to_checked_onnx(checkpoint), batch_size=batch_size, checkpoint=checkpoint,
                         threads=threads, device=device)
