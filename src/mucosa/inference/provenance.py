"""Which ONNX model files a checkpoint vouches for: the bytes run are the bytes checked.

A model file's metadata (``weights_sha256`` and the rest) lives in the same bytes as its weights, so a file
changed after export, or another run's file given this run's metadata, would still claim to be an export of
the checkpoint. Only the checkpoint's model card can vouch for a file: it records the SHA-256 of each file
written from its weights, by training (key :data:`CARD_KEY`, ``inference.onnx_files``) and by
``mucosa export`` (key :data:`EXPORTS_KEY`). :func:`read_vouched` reads a file once and gives its bytes only
when their SHA-256 is one the card records for the checkpoint's current weights; else it raises
:class:`UnverifiedModelError`, and the callers run PyTorch instead (``--runtime auto``) or refuse.

>>> sha256(b"")[:12]
'e3b0c44298fc'
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

from mucosa.errors import MucosaError, first_line
from mucosa.models.checkpoint import LoadedCheckpoint, record_in_card

__all__ = ["CARD_KEY", "EXPORTS_KEY", "UnverifiedModelError", "check_vouched", "mapping", "read_vouched",
           "record_export", "sha256", "vouched"]

log = logging.getLogger(__name__)

CARD_KEY = "deployment"  # the files written after training (inference.onnx_files)
EXPORTS_KEY = "exports"  # the files written by `mucosa export`, newest last
_MOST_EXPORTS = 32  # the card keeps this many exports


class UnverifiedModelError(MucosaError):
    """A model file whose SHA-256 is not one the checkpoint's card records for its current weights."""


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def mapping(value) -> dict:
    """``value`` when it is a dict, else an empty one (a hand-edited card may hold anything)."""
    return value if isinstance(value, dict) else {}


def vouched(loaded: LoadedCheckpoint) -> dict[str, str]:
    """SHA-256 → precision (``fp32`` or ``int8``) of every model file the card records for the current weights.

    An int8 file written after training is vouched for only when it passed the int8 bounds.
    """
    hashes: dict[str, str] = {}
    card = mapping(loaded.info.get(CARD_KEY))
    if card.get("weights_sha256") == loaded.weights_sha256:
        fp32, int8 = mapping(card.get("fp32")), mapping(card.get("int8"))
        if isinstance(fp32.get("sha256"), str):
            hashes[fp32["sha256"]] = "fp32"
        if isinstance(int8.get("sha256"), str) and int8.get("passed") is True:
            hashes[int8["sha256"]] = "int8"
    exports = loaded.info.get(EXPORTS_KEY)
    for entry in map(mapping, exports if isinstance(exports, list) else []):
        if entry.get("weights_sha256") == loaded.weights_sha256 and isinstance(entry.get("sha256"), str):
            hashes[entry["sha256"]] = "int8" if entry.get("quantization", "none") != "none" else "fp32"
    return hashes


def read_vouched(path: str | Path, loaded: LoadedCheckpoint, precision: str | None = None) -> bytes:
    """The bytes of the model file at ``path``, read once, when the card of ``loaded`` vouches for them
    (:func:`check_vouched`)."""
    path = Path(path)
    return check_vouched(path.read_bytes(), path.name, loaded, precision)


def check_vouched(data: bytes, name: str, loaded: LoadedCheckpoint, precision: str | None = None) -> bytes:
    """``data`` (a model file called ``name``) when the card of ``loaded`` records its SHA-256 for the current
    weights (of ``precision`` when given).

    Raises:
        UnverifiedModelError: it does not (changed after it was written, another run's file, or a stale file
            beside a retrained checkpoint).
    """
    found = vouched(loaded).get(sha256(data))
    if found is None or (precision is not None and found != precision):
        raise UnverifiedModelError(
            f"{name}: its SHA-256 is not one that the model card of {loaded.path.name} records for its "
            "current weights (changed after it was written, or another run's file); not run")
    return data


def record_export(checkpoint: str | Path, loaded: LoadedCheckpoint, model: bytes, name: str,
                  quantization: str = "none") -> bool:
    """Record an exported file's SHA-256 in the checkpoint's card (``mucosa export``), so that it may run with it.

    Returns False, with a warning, when the checkpoint cannot be rewritten (then the file runs only alone).
    """
    exports = loaded.info.get(EXPORTS_KEY)
    entry = {"file": name, "sha256": sha256(model), "weights_sha256": loaded.weights_sha256,
             "quantization": quantization}
    # the same file exported again (same bytes, same weights) is one entry, moved to the end
    exports = [e for e in (exports if isinstance(exports, list) else []) if isinstance(e, dict) and e != entry]
    exports.append(entry)
    try:
        record_in_card(checkpoint, EXPORTS_KEY, exports[-_MOST_EXPORTS:])
    except MucosaError as error:
        log.warning("%s: its card could not record the export (%s): the file will not run beside it",
                    Path(checkpoint).name, first_line(error, 200))
        return False
    loaded.info[EXPORTS_KEY] = exports[-_MOST_EXPORTS:]
    return True
