"""ONNX models written beside a trained checkpoint, and which of them ``--runtime auto`` may run.

After training, :func:`deploy` writes beside ``best.ckpt``:

- ``best.onnx``: the fp32 graph (``onnx.to_onnx``), written only when it matches PyTorch within
  ``onnx.PARITY_TOLERANCE`` at batch 1 and 16;
- ``best.int8.onnx``: static int8 (``onnx.quantize_int8``), calibrated on the run's own validation frames,
  and compared with the fp32 model on those frames (verdict agreement, ROC AUC change);

and records both in the checkpoint's model card (its description, key :data:`CARD_KEY`): the SHA-256 of
the weights they were exported from, each file's SHA-256, the parity, the int8 measurements, the bounds
(:data:`MIN_AGREEMENT`, :data:`MAX_AUC_CHANGE`) and whether the int8 model is within them.

:func:`exported_beside` then picks, for ``auto`` on a CPU: the int8 file when the card says it passed the
bounds, else the fp32 file, else nothing (the caller exports in memory). A file is run only when its
SHA-256 is the one the card records for the checkpoint's current weights (``provenance``): a file changed
after it was written, another run's file, or a stale ``best.onnx`` beside a retrained ``best.ckpt`` is
never run, whatever its metadata says.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from mucosa import atomic
from mucosa.data.cache import FrameCache
from mucosa.errors import MucosaError, first_line
from mucosa.inference import onnx, provenance
from mucosa.models.checkpoint import LoadedCheckpoint, load_checkpoint, record_in_card

log = logging.getLogger(__name__)

CARD_KEY = provenance.CARD_KEY
# An int8 model replaces the fp32 one under --runtime auto only within these bounds, measured on the run's
# validation frames: the share of frames with the same verdict, and |ROC AUC int8 - ROC AUC fp32|.
MIN_AGREEMENT = 0.99
MAX_AUC_CHANGE = 0.005
# ... on at least this many frames: 8 agreeing frames of 8 say little (agreement could well be 0.7)
MIN_FRAMES = 100
BOUNDS = {"min_agreement": MIN_AGREEMENT, "max_abs_auc_change": MAX_AUC_CHANGE, "min_frames": MIN_FRAMES}


def fp32_path(checkpoint: str | Path) -> Path:
    """``best.onnx`` beside ``best.ckpt``."""
    return Path(checkpoint).with_suffix(".onnx")


def int8_path(checkpoint: str | Path) -> Path:
    """``best.int8.onnx`` beside ``best.ckpt``."""
    return Path(checkpoint).with_suffix(".int8.onnx")


def int8_gate(comparison: dict) -> tuple[bool, str]:
    """Whether int8 measurements (``onnx.compare_int8``) are within :data:`BOUNDS`, and a sentence why."""
    agreement, change = comparison["agreement"], comparison["auc_change"]
    frames = comparison.get("frames", 0)
    # written as "not (x >= bound)" so that a NaN measurement fails the gate instead of slipping through it
    if not frames >= MIN_FRAMES:
        return False, f"measured on {frames} validation frames (< {MIN_FRAMES}): too few to show the agreement"
    if not agreement >= MIN_AGREEMENT:
        return False, f"verdict agreement {agreement:.4f} < {MIN_AGREEMENT}"
    if change is None:
        return False, "ROC AUC change not measurable (the validation frames hold one class)"
    if not abs(change) <= MAX_AUC_CHANGE:
        return False, f"|ROC AUC change| {abs(change):.4f} > {MAX_AUC_CHANGE}"
    return True, f"verdict agreement {agreement:.4f} >= {MIN_AGREEMENT}, |ROC AUC change| {abs(change):.4f} " \
                 f"<= {MAX_AUC_CHANGE}"


def _int8_entry(loaded: LoadedCheckpoint, model: bytes, manifest: str | Path, cache: FrameCache | None,
                out: Path) -> dict:
    """Quantize on the validation frames, measure, write ``out``; the card's ``int8`` entry."""
    data = onnx.manifest_frames(loaded, manifest, cache, split="val", calibrate_within=True)
    quantized, comparison = onnx.quantize_and_measure(loaded, model, data, "validation frames")
    passed, why = int8_gate(comparison)
    atomic.write_bytes(out, quantized)
    return {"file": out.name, "sha256": provenance.sha256(quantized), **comparison, "passed": passed, "why": why}


def deploy(checkpoint: str | Path, manifest: str | Path, cache: FrameCache | None = None) -> dict:
    """Write ``best.onnx`` and ``best.int8.onnx`` beside ``checkpoint`` and record them in its model card.

    Args:
        checkpoint: the trained checkpoint (its description records the validation patients).
        manifest: the run's manifest with its split column (``split.csv``): the int8 model is calibrated
            and measured on its ``val`` rows.

    Returns:
        the card entry written (also under ``CARD_KEY`` in the checkpoint's description).

    Raises:
        onnx.ExportError: the fp32 graph fails its parity check (nothing is written). WriteError: a file or the
        card cannot be written (then neither ONNX file is left beside the checkpoint). An int8 failure is
        recorded in the card (``passed``: false, ``why``), not raised.
    """
    checkpoint = Path(checkpoint)
    loaded = load_checkpoint(checkpoint)
    model, diffs = onnx.export_checked(loaded)
    try:
        return _write_and_record(checkpoint, loaded, model, diffs, manifest, cache)
    except BaseException:  # the card could not record them (disk full, Ctrl-C): no files that say otherwise
        for path in (fp32_path(checkpoint), int8_path(checkpoint)):
            path.unlink(missing_ok=True)
        raise


def _write_and_record(checkpoint: Path, loaded: LoadedCheckpoint, model: bytes, diffs: dict, manifest, cache) -> dict:
    """Write both files and record them in the card (:func:`deploy`)."""
    atomic.write_bytes(fp32_path(checkpoint), model)
    card = {"weights_sha256": loaded.weights_sha256, "bounds": BOUNDS,
            "fp32": {"file": fp32_path(checkpoint).name, "sha256": provenance.sha256(model),
                     "parity_max_abs_difference": {str(b): d for b, d in diffs.items()}}}
    try:
        card["int8"] = _int8_entry(loaded, model, manifest, cache, int8_path(checkpoint))
    except Exception as error:  # quantization raises its libraries' own types; fp32 stays usable
        int8_path(checkpoint).unlink(missing_ok=True)  # an older run's file would only mislead
        card["int8"] = {"file": None, "passed": False, "why": f"not exported: {first_line(error, 300)}"}
    record_in_card(checkpoint, CARD_KEY, card)
    return card


def process_rank() -> int:
    """This process's global rank as Lightning reads it (``RANK``, ``LOCAL_RANK``, ``SLURM_PROCID``...; 0 alone),
    and ``NODE_RANK`` for nodes started by hand."""
    from lightning.fabric.utilities.rank_zero import _get_rank

    return (_get_rank() or 0) or int(os.environ.get("NODE_RANK", "0") or 0)


def deploy_after_training(checkpoint: str | Path, manifest: str | Path, cache: FrameCache | None = None
                          ) -> dict | None:
    """:func:`deploy`, logging a warning instead of raising: the trained checkpoint stays valid without it.
    Only the first process of a multi-process run writes (the others return None)."""
    if process_rank() != 0:
        return None
    try:
        card = deploy(checkpoint, manifest, cache)
    except Exception as error:  # noqa: BLE001 - an export problem must never lose the training run
        log.warning("%s: ONNX models not written (%s); the checkpoint is fine and runs with PyTorch or an "
                    "in-memory export", Path(checkpoint).name, first_line(error, 300))
        return None
    int8 = card["int8"]
    log.info("ONNX models -> %s%s; int8 %s (%s)", card["fp32"]["file"],
             f", {int8['file']}" if int8.get("file") else "", "used by --runtime auto" if int8["passed"]
             else "not used", int8["why"])
    return card


def _open(path: Path, loaded: LoadedCheckpoint, batch_size: int, threads: int | None, device, precision: str):
    """The ONNX model at ``path``, whose bytes the card vouches for (``provenance.read_vouched``: else
    UnverifiedModelError), or None when it does not load here (logged). The file is read once: the bytes
    checked are the bytes run, also where it is replaced meanwhile; they are kept as ``predictor.model_bytes``."""
    data = provenance.read_vouched(path, loaded, precision)
    try:
        predictor = onnx.OnnxPredictor(data, batch_size=batch_size, checkpoint=loaded, threads=threads, device=device)
    except MucosaError as error:
        log.warning("%s: not used (%s)", path.name, str(error).replace("model: ", "", 1))
        return None
    if not onnx.exported_from(predictor, loaded):  # the card's own record disagrees with the file: trust neither
        raise provenance.UnverifiedModelError(f"{path.name}: its metadata does not match {loaded.path.name}; not run")
    predictor.model_bytes, predictor.source, predictor.precision = data, path.name, precision
    return predictor


def exported_beside(loaded: LoadedCheckpoint, batch_size: int = 16, threads: int | None = None,
                    device="cpu", int8: bool = True):
    """The best ONNX predictor of the files beside the checkpoint (see the module docstring), or None.

    Sets ``predictor.source`` to the file's name, ``predictor.precision`` to ``int8`` or ``fp32`` and
    ``predictor.model_bytes`` to the model checked (run those bytes, not the file again).

    Raises:
        provenance.UnverifiedModelError: a file that would be run is not one the card vouches for (changed,
            another run's, or stale beside a retrained checkpoint): no file beside this checkpoint is run.
    """
    card = provenance.mapping(loaded.info.get(CARD_KEY))
    entry = provenance.mapping(card.get("int8"))
    path = int8_path(loaded.path)
    if int8 and path.is_file():
        if card.get("weights_sha256") == loaded.weights_sha256 and entry.get("passed") is not True:
            log.info("%s: not used (%s)", path.name, entry.get("why", "the checkpoint's card does not vouch for it"))
        else:
            predictor = _open(path, loaded, batch_size, threads, device, "int8")
            if predictor is not None:
                return predictor
    path = fp32_path(loaded.path)
    return _open(path, loaded, batch_size, threads, device, "fp32") if path.is_file() else None
