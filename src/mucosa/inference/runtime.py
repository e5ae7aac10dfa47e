"""Choosing how a model runs: a checkpoint or an ``.onnx`` file → a predictor (PyTorch or ONNX Runtime).

``auto`` (the default of the Python API and of every command) runs, on a CPU, the first of:

1. ``best.int8.onnx`` beside the checkpoint, when the checkpoint's model card says it is an export of these
   weights within the int8 bounds (``onnx_files.MIN_AGREEMENT``, ``onnx_files.MAX_AUC_CHANGE``);
2. ``best.onnx`` beside it;
3. an fp32 ONNX export made in memory and parity-checked against PyTorch, when no file lies beside it;
4. PyTorch (no onnxruntime, or an export that fails its check);

and PyTorch on a GPU. A file beside the checkpoint runs only when its SHA-256 is one the card records for the
current weights (``provenance``); otherwise ``auto`` warns once and runs PyTorch, and ``onnx`` refuses.
An ``.onnx`` file named alone is checked against the checkpoint its metadata names when that lies beside it
(a mismatch is refused), else run with a warning that nothing could check it.

Every predictor carries ``choice`` (a dict: runtime, precision, device, source, requested) and
:func:`describe` turns it into the one line the commands print and record.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mucosa.choices import RUNTIMES
from mucosa.errors import ConfigError, MucosaError
from mucosa.inference.onnx import OnnxPredictor, to_checked_onnx
from mucosa.inference.onnx_files import exported_beside
from mucosa.inference.provenance import UnverifiedModelError, check_vouched
from mucosa.inference.pytorch import TorchPredictor, resolve_device
from mucosa.models.checkpoint import LoadedCheckpoint, load_checkpoint

log = logging.getLogger(__name__)

ENGINES = {"torch": "pytorch", "onnx": "onnxruntime"}


def open_predictor(path, runtime: str = "auto", batch_size: int = 16, threads: int | None = None,
                   device: str = "auto"):
    """A predictor (``TorchPredictor`` or ``OnnxPredictor``) for a checkpoint or an ``.onnx`` file.

    Args:
        path: a mucosa checkpoint, or an ONNX model written by ``mucosa export`` (then the runtime is ONNX).
        runtime: ``auto`` (see the module docstring), ``torch``, or ``onnx`` (fp32: ``best.onnx`` beside the
            checkpoint when it is an export of its weights, else exported in memory and parity-checked).
        batch_size: frames per forward pass.
        threads: intra-op threads of the runtime (default: PyTorch's or ONNX Runtime's own, all cores).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (``resolve_device``).

    Raises:
        ConfigError: unknown runtime or device. CheckpointFileError: not a checkpoint. MucosaError: no
        onnxruntime (``onnx`` only).
    """
    check_runtime(runtime)
    chosen = resolve_device(device)
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        predictor = OnnxPredictor(path, batch_size=batch_size, threads=threads, device=chosen)
        _check_standalone(path, predictor)
        quantization = predictor.metadata.get("quantization", "none")
        _note(predictor, "int8" if quantization != "none" else "fp32", chosen, path.name, runtime)
        log.info("runtime: %s", describe(predictor.choice))
        return predictor
    return for_checkpoint(load_checkpoint(path), runtime, batch_size, threads, device)


def check_runtime(runtime: str) -> str:
    """``runtime``, or a ConfigError naming the choices."""
    if runtime not in RUNTIMES:
        raise ConfigError(f"runtime {runtime!r} must be one of {', '.join(RUNTIMES)}")
    return runtime


def for_checkpoint(checkpoint: LoadedCheckpoint, runtime: str = "auto", batch_size: int = 16,
                   threads: int | None = None, device: str = "auto"):
    """:func:`open_predictor` for a checkpoint already loaded; logs the choice (``runtime: ...``)."""
    check_runtime(runtime)
    chosen = resolve_device(device)
    predictor = _for_checkpoint(checkpoint, runtime, batch_size, threads, chosen)
    log.info("runtime: %s", describe(predictor.choice))
    return predictor


def describe(choice: dict) -> str:
    """``onnxruntime int8 on cpu (auto; best.int8.onnx)``: the line the commands print."""
    return (f"{choice['runtime']} {choice['precision']} on {choice['device']} ({choice['requested']}; "
            f"{choice['source']})")


def _note(predictor, precision: str, device, source: str, requested: str):
    predictor.choice = {"runtime": ENGINES[predictor.runtime], "precision": precision, "device": str(device),
                        "source": source, "requested": requested}
    return predictor


def _for_checkpoint(checkpoint: LoadedCheckpoint, runtime: str, batch_size: int, threads: int | None, device):
    if runtime == "auto":
        if device.type == "cuda":
            return _note(TorchPredictor(checkpoint, batch_size, threads, device), "fp32", device,
                         f"{checkpoint.path.name}, on a GPU", runtime)
        try:
            return _onnx(checkpoint, batch_size, threads, device, runtime, int8=True)
        except UnverifiedModelError as error:
            log.warning("%s; running PyTorch (remove the file, or export again, to use ONNX Runtime)", error)
            return _note(TorchPredictor(checkpoint, batch_size, threads, device), "fp32", device,
                         f"{checkpoint.path.name}, ONNX file beside it not verified", runtime)
        except MucosaError as error:  # no onnxruntime, or an export that fails its parity check
            log.info("ONNX Runtime not used (%s); running PyTorch", error)
            return _note(TorchPredictor(checkpoint, batch_size, threads, device), "fp32", device,
                         f"{checkpoint.path.name}, ONNX Runtime not usable", runtime)
    if runtime == "torch":
        return _note(TorchPredictor(checkpoint, batch_size, threads, device), "fp32", device, checkpoint.path.name,
                     runtime)
    return _onnx(checkpoint, batch_size, threads, device, runtime, int8=False)


def _check_standalone(path: Path, predictor: OnnxPredictor) -> None:
    """An ``.onnx`` file named alone, checked against the card of the checkpoint its metadata names when that
    lies beside it (UnverifiedModelError on a mismatch); else a warning that nothing could check it."""
    named = Path(predictor.metadata.get("checkpoint", "")).name
    beside = path.parent / named if named.endswith(".ckpt") else None
    if beside is None or not beside.is_file():
        log.warning("%s: no checkpoint beside it to check its bytes against; it runs as given", path.name)
        return
    check_vouched(predictor.model_bytes, path.name, load_checkpoint(beside))


def _onnx(checkpoint: LoadedCheckpoint, batch_size: int, threads: int | None, device, requested: str, int8: bool):
    """A file beside the checkpoint when one may be used (int8 only when ``int8``), else an in-memory export."""
    if device.type == "cpu":
        predictor = exported_beside(checkpoint, batch_size, threads, device, int8=int8)
        if predictor is not None:
            return _note(predictor, predictor.precision, device, predictor.source, requested)
    predictor = OnnxPredictor(to_checked_onnx(checkpoint), batch_size=batch_size, checkpoint=checkpoint,
                              threads=threads, device=device)
    return _note(predictor, "fp32", device, "exported in memory", requested)
