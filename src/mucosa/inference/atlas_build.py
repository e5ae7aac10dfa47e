"""Atlases made from a trained model and a manifest: built, grown, calibrated, recorded in the model card,
and found beside a checkpoint.

- :func:`build_atlas` embeds every usable frame (the quality gate applies) of a manifest's rows (those of
  ``parts``, e.g. ``train,val``, when given) the way ``mucosa predict`` runs the model
  (``runtime.for_checkpoint``: on a CPU, the validated ONNX file beside the checkpoint), with each frame's
  case, patient, label, frame number, file name and a thumbnail. A case is one manifest row: one file (an
  image or a video, with its frame range), named ``FILE@SHA`` by the file's name and the start of its
  content's SHA-256, so that the same recording is the same case whatever folder or manifest names it.
- The unfamiliarity threshold is calibrated on the manifest's validation rows (split column ``val``), each
  frame's own patient left out, and the case threshold on the atlas's own cases (:meth:`Atlas.calibrate`);
  data that cannot set a threshold (fewer than :data:`~mucosa.inference.atlas.MIN_CALIBRATION_FRAMES`
  validation frames, an atlas of one patient: ``CalibrationError``) leave the atlas uncalibrated, with a
  warning (it shows similar cases but cannot tell unfamiliar frames).
- The atlas records how it was built (``built_from``: the checkpoint's file name, the runtime, the
  manifest's name and hash, the parts, the validation cases), and the checkpoint's model card records the
  atlas (key :data:`CARD_KEY`: folder, ``atlas.json``'s SHA-256, frames, threshold, k, quantile, case
  threshold).
- :func:`add_to_atlas` grows an atlas by a manifest's new cases, with the checkpoint it was built for (its
  weights are checked), and calibrates it again on its validation cases and the new ones.
- :func:`atlas_after_training` writes ``atlas/`` beside ``best.ckpt`` after ``mucosa train``; a failure is a
  warning, never the loss of the run.
- :func:`find_atlas` finds the atlas a command uses: the one named, else ``atlas/`` beside the model, else
  none, with one warning that mucosa then cannot tell unfamiliar recordings; :func:`open_atlas` loads it,
  refusing the atlas of another model.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mucosa.atomic import file_sha256
from mucosa.data.cache import FrameCache
from mucosa.data.frame_table import FrameTable, assemble
from mucosa.data.manifest import Cohort, Record, check_parts, load_manifest
from mucosa.data.pseudonyms import Pseudonym
from mucosa.data.readers import FrameSelection
from mucosa.errors import MucosaWarning, first_line
from mucosa.inference import atlas_store
from mucosa.inference.atlas import (
    MIN_CALIBRATION_FRAMES,
    Atlas,
    AtlasError,
    AtlasModel,
    CalibrationError,
    FrameRecords,
    TextureView,
    load,
    refuse_other_model,
)
from mucosa.inference.atlas_store import make_thumbnails
from mucosa.inference.leave_out import HASH_DIGITS
from mucosa.inference.onnx import OnnxPredictor
from mucosa.inference.onnx_files import process_rank
from mucosa.inference.runtime import describe, for_checkpoint
from mucosa.inference.texture_view import file_textures, spread
from mucosa.models.checkpoint import LoadedCheckpoint, load_checkpoint, record_in_card

__all__ = ["ATLAS_FOLDER", "CARD_KEY", "AtlasReport", "add_to_atlas", "atlas_after_training", "atlas_beside",
           "atlas_checkpoint", "build_atlas", "case_id", "embed_frames", "file_weights", "find_atlas",
           "model_weights", "open_atlas", "say_if_uncalibrated"]

log = logging.getLogger(__name__)

ATLAS_FOLDER = "atlas"  # beside best.ckpt
CARD_KEY = "atlas"  # the model card's record of the atlas
CHUNK = 1024  # frames read from the cache and embedded at a time
NO_ATLAS = ("{model} has no atlas beside it: mucosa cannot tell whether these recordings are unlike its training "
            "data (build one with mucosa atlas build)")


@dataclass
class AtlasReport:
    """What :func:`build_atlas` or :func:`add_to_atlas` did: the atlas, its folder, the card entry."""

    atlas: Atlas
    folder: Path
    card: dict
    added: int = 0  # frames added (add_to_atlas)

    def format(self) -> str:
        cases = len(set(self.atlas.records.cases.tolist()))
        calibration = self.atlas.calibration
        told = (f"a frame unfamiliar above distance {calibration.threshold:.4f} (k {calibration.k}, set on "
                f"{calibration.frames} validation frames of {calibration.patients} patients), a case above "
                f"{calibration.case_threshold:.4f} (set on the atlas's {calibration.cases} cases"
                + (", its frames' median joined with its texture view's)" if calibration.scales else
                   ", its frames' median)")
                if calibration else
                "not calibrated: it shows similar cases but cannot tell unfamiliar frames")
        return f"atlas {self.folder}: {len(self.atlas)} frames of {cases} cases; {told}"


def atlas_beside(model: str | Path) -> Path:
    """``atlas/`` beside a checkpoint (or an ``.onnx`` file)."""
    return Path(model).parent / ATLAS_FOLDER


def case_id(path: Path, selection: FrameSelection, sha256: str) -> str:
    """A manifest row's case: ``FILE@SHA`` (the file's name, the first 12 hex digits of its content's SHA-256,
    by which ``leave_out`` knows the recording), with ``[FRAMES]`` for a frame range."""
    frames = str(selection)
    return f"{path.name}@{sha256[:HASH_DIGITS]}" + ("" if selection == FrameSelection() else f"[{frames}]")


def model_weights(predictor) -> str | None:
    """The SHA-256 of a predictor's weights: its checkpoint's, or an ``.onnx`` file's metadata (None: unknown)."""
    checkpoint = getattr(predictor, "checkpoint", None)
    if checkpoint is not None:
        return checkpoint.weights_sha256
    return getattr(predictor, "metadata", {}).get("weights_sha256") or None


def embed_frames(predictor, table: FrameTable) -> tuple[np.ndarray, np.ndarray]:
    """The embeddings (N, D) and thumbnails (N, h, w) of a frame table's frames, read a chunk at a time."""
    embeddings, thumbnails = [], []
    for start in range(0, len(table), CHUNK):
        frames = np.stack([table.frame(i) for i in range(start, min(start + CHUNK, len(table)))])
        embeddings.append(predictor.predict_and_embed(frames)[1])
        thumbnails.append(make_thumbnails(frames))
    return np.concatenate(embeddings), np.concatenate(thumbnails)


def _records(table: FrameTable, cache: FrameCache, pseudonym: Pseudonym | None) -> FrameRecords:
    """What each frame is; ``pseudonym``: its patient and file named by their pseudonyms."""
    cohort, name = table.cohort.records, pseudonym or str
    files = [Path(name(r.path.name)) for r in cohort]
    ids = [case_id(file, r.frames, cache.content_hash(r.path)) for file, r in zip(files, cohort)]
    return FrameRecords.of([ids[r] for r in table.row], [name(p) for p in table.patients],
                           [cohort[r].label for r in table.row], table.frame_index, [files[r].name for r in table.row])


@dataclass
class _Frames:
    """A manifest's frames embedded for an atlas."""

    embeddings: np.ndarray
    records: FrameRecords
    thumbnails: np.ndarray
    validation: np.ndarray  # (N,) bool: frames of the manifest's validation rows
    textures: TextureView | None = None  # the texture view of each case's frames (rows into these frames)


def _texture_view(table: FrameTable, records: list[Record], prep) -> TextureView:
    """Texture vectors of up to ``TEXTURE_FRAMES`` evenly spaced frames of each row (case), decoded again."""
    rows, vectors = [], []
    of_record, numbers = np.asarray(table.row), table.frame_index
    for r, record in enumerate(records):
        own = np.flatnonzero(of_record == r)
        chosen = own[spread(len(own))]
        if not len(chosen):
            continue
        found = file_textures(record.path, prep, numbers[chosen], record.frames)
        for row in chosen:
            vector = found.get(int(numbers[row]))
            if vector is not None:
                rows.append(int(row))
                vectors.append(vector)
    return TextureView(np.asarray(rows, np.int64), np.stack(vectors) if vectors else np.zeros((0, 1), np.float32))


def _embedded(predictor, records: list[Record], cohort: Cohort, cache: FrameCache,
              pseudonym: Pseudonym | None = None, textures: bool = False) -> _Frames | None:
    """The rows' usable frames embedded, with what they are (``textures``: and their texture view); None when
    the quality gate drops them all."""
    table = assemble(Cohort(records, cohort.classes, cohort.source), predictor.preprocessing, cache)
    if not len(table):
        return None
    embeddings, thumbnails = embed_frames(predictor, table)
    validation = np.array([records[r].split == "val" for r in table.row], bool)
    view = _texture_view(table, records, predictor.preprocessing) if textures else None
    return _Frames(embeddings, _records(table, cache, pseudonym), thumbnails, validation, view)


def _manifest_frames(predictor, manifest: Path, parts, cache: FrameCache, pseudonym: Pseudonym | None = None
                     ) -> tuple[_Frames, _Frames | None]:
    """The frames of the rows of ``parts``, and the validation rows' frames not among them (None if none)."""
    check_parts(parts)
    cohort = load_manifest(manifest, classes=predictor.classes, require_all=False)
    chosen = cohort.parts(parts).records
    frames = _embedded(predictor, chosen, cohort, cache, pseudonym, textures=True)
    if frames is None:
        raise AtlasError(f"{manifest}: the quality gate dropped every frame of its {len(chosen)} rows; an atlas "
                         "needs frames")
    taken = set(chosen)
    outside = [r for r in cohort.records if r.split == "val" and r not in taken]
    return frames, _embedded(predictor, outside, cohort, cache, pseudonym) if outside else None


def _calibrate(atlas: Atlas, embeddings: np.ndarray, patients: np.ndarray, cases: list[str]) -> None:
    """Calibrate on validation frames; where the data cannot set a threshold (``CalibrationError``: too few
    validation frames, an atlas of one patient, ...), leave the atlas as it is, with a warning. The validation
    cases are recorded either way, so that growing the atlas (``add_to_atlas``) calibrates on them again."""
    atlas.origin["validation_cases"] = sorted(set(cases))
    try:
        atlas.calibrate(embeddings, patients)
    except CalibrationError as error:
        kept = "keeps its earlier thresholds" if atlas.calibration else "is not calibrated, so it cannot tell " \
            "unfamiliar frames"
        warnings.warn(f"{error}; the atlas {kept}", MucosaWarning, stacklevel=3)


def _record(atlas: Atlas, folder: Path, checkpoint: LoadedCheckpoint) -> dict:
    """Save the atlas and record it in the checkpoint's model card; returns the card entry."""
    atlas.save(folder)
    calibration = atlas.calibration
    entry = {"folder": folder.name, "atlas_json_sha256": file_sha256(folder / atlas_store.MANIFEST),
             "weights_sha256": atlas.model.weights_sha256, "frames": len(atlas),
             "cases": len(set(atlas.records.cases.tolist())), "threshold": None, "k": None, "quantile": None}
    if calibration is not None:
        entry.update(threshold=calibration.threshold, k=calibration.k, quantile=calibration.quantile,
                     case_quantile=calibration.case_quantile,
                     calibration_frames=calibration.frames, flagged_share=calibration.flagged_share,
                     case_threshold=calibration.case_threshold, calibration_cases=calibration.cases,
                     texture_view=atlas.textures is not None, case_scales=calibration.scales)
    record_in_card(checkpoint.path, CARD_KEY, entry)
    return entry


def _origin(loaded: LoadedCheckpoint, predictor, manifest: Path, parts) -> dict:
    return {"checkpoint": loaded.path.name, "runtime": describe(predictor.choice),
            "manifests": [{"name": manifest.name, "sha256": file_sha256(manifest), "parts": list(parts or [])}]}


def build_atlas(checkpoint: str | Path, manifest: str | Path, out: str | Path, cache: FrameCache | None = None,
                parts: list[str] | tuple[str, ...] | None = None, runtime: str = "auto", device: str = "auto",
                batch_size: int = 64, pseudonym: Pseudonym | None = None) -> AtlasReport:
    """Build the atlas of a checkpoint's model from a manifest's rows (``parts``: their split; all rows for
    None), calibrate it on the manifest's validation rows, save it in ``out`` and record it in the checkpoint's
    model card (see the module). ``pseudonym``: the atlas names patients and files by these pseudonyms (a run
    trained with ``--pseudonymise``).

    Raises:
        CheckpointFileError, ManifestError, ConfigError: a bad checkpoint, manifest or ``parts``.
        AtlasError: no usable frame. OutputError, WriteError: ``out`` or the checkpoint cannot be written (a
        previous atlas in ``out`` stays whole).
    """
    manifest, out = Path(manifest), Path(out)
    check_parts(parts)
    loaded = load_checkpoint(checkpoint)
    predictor = for_checkpoint(loaded, runtime, batch_size, device=device)
    cache = cache or FrameCache()
    frames, outside = _manifest_frames(predictor, manifest, parts, cache, pseudonym)
    model = AtlasModel(loaded.weights_sha256, tuple(loaded.classes), frames.embeddings.shape[1])
    atlas = Atlas(model, frames.embeddings, frames.records, frames.thumbnails,
                  origin=_origin(loaded, predictor, manifest, parts), textures=frames.textures)
    validation = [frames] + ([outside] if outside else [])
    _calibrate(atlas, np.concatenate([f.embeddings[f.validation] for f in validation]),
               np.concatenate([f.records.patients[f.validation] for f in validation]),
               [c for f in validation for c in f.records.cases[f.validation].tolist()])
    return AtlasReport(atlas, out, _record(atlas, out, loaded))


def atlas_checkpoint(folder: Path, atlas: Atlas, checkpoint: str | Path | None) -> Path:
    """The checkpoint named, else the one the atlas was built for, beside it."""
    if checkpoint is not None:
        return Path(checkpoint)
    name = atlas.origin.get("checkpoint")
    if not isinstance(name, str) or not (folder.parent / name).is_file():
        raise AtlasError(f"{folder}: the checkpoint it was built for ({name or 'not recorded'}) is not beside it; "
                         "name it with --checkpoint")
    return folder.parent / name


def add_to_atlas(folder: str | Path, manifest: str | Path, checkpoint: str | Path | None = None,
                 cache: FrameCache | None = None, parts: list[str] | tuple[str, ...] | None = None,
                 runtime: str = "auto", device: str = "auto", batch_size: int = 64) -> AtlasReport:
    """Grow the atlas in ``folder`` by a manifest's cases (the rows of ``parts``), embedded by ``checkpoint``
    (default: the one the atlas records, beside it; its weights must be the atlas's), then calibrate it again
    on its validation cases and the manifest's validation rows, save it and record it in the model card.

    Raises:
        AtlasFileError: the atlas cannot be read, or belongs to another model. AtlasError: a case already in
            the atlas, no usable frame. As :func:`build_atlas` otherwise.
    """
    folder, manifest = Path(folder), Path(manifest)
    atlas = load(folder)
    loaded = load_checkpoint(atlas_checkpoint(folder, atlas, checkpoint))
    refuse_other_model(folder, atlas.model, loaded.weights_sha256)
    predictor = for_checkpoint(loaded, runtime, batch_size, device=device)
    frames, outside = _manifest_frames(predictor, manifest, parts, cache or FrameCache())
    earlier = np.isin(atlas.records.cases, list(atlas.origin.get("validation_cases", [])))  # before it grows
    validation = [(atlas.embeddings[earlier], atlas.records.patients[earlier], atlas.records.cases[earlier])]
    model = AtlasModel(loaded.weights_sha256, tuple(loaded.classes), frames.embeddings.shape[1])
    atlas.add(model, frames.embeddings, frames.records, frames.thumbnails, frames.textures)
    atlas.origin.setdefault("manifests", []).extend(_origin(loaded, predictor, manifest, parts)["manifests"])
    for f in [frames] + ([outside] if outside else []):
        validation.append((f.embeddings[f.validation], f.records.patients[f.validation], f.records.cases[f.validation]))
    _calibrate(atlas, *(np.concatenate([part[i] for part in validation]) for i in range(2)),
               [c for part in validation for c in part[2].tolist()])
    return AtlasReport(atlas, folder, _record(atlas, folder, loaded), added=len(frames.embeddings))


def atlas_after_training(checkpoint: str | Path, manifest: str | Path, cache: FrameCache | None = None,
                         pseudonym: Pseudonym | None = None) -> AtlasReport | None:
    """:func:`build_atlas` of the run's training and validation rows into ``atlas/`` beside the checkpoint,
    logging a warning instead of raising: the trained checkpoint stays valid without it. Only the first
    process of a multi-process run writes (the others return None)."""
    if process_rank() != 0:
        return None
    try:
        report = build_atlas(checkpoint, manifest, atlas_beside(checkpoint), cache, parts=("train", "val"),
                             pseudonym=pseudonym)
    except Exception as error:  # noqa: BLE001 - an atlas problem must never lose the training run
        log.warning("%s: atlas not written (%s); the checkpoint is fine, but without an atlas mucosa cannot tell "
                    "whether recordings are unlike its training data", Path(checkpoint).name, first_line(error, 300))
        return None
    log.info("%s", report.format())
    return report


def find_atlas(model: str | Path, atlas: str | Path | None = None, use: bool = True) -> Path | None:
    """The folder of the atlas a command uses with ``model`` (a checkpoint or an ``.onnx`` file): ``atlas`` when
    named, else ``atlas/`` beside the model; None when ``use`` is false, or when there is none beside it (with
    one warning: mucosa cannot tell whether the recordings are unlike its training data)."""
    if not use:
        return None
    folder = Path(atlas) if atlas is not None else atlas_beside(model)
    if atlas is None and not folder.exists():
        if process_rank() == 0:  # once, not once a process
            warnings.warn(NO_ATLAS.format(model=Path(model).name), MucosaWarning, stacklevel=2)
        return None
    return folder


def open_atlas(folder: Path, weights_sha256: str | None) -> Atlas:
    """The atlas in ``folder``, checked to belong to the model with these weights (``model_weights``); a
    warning when it is not calibrated.

    Raises:
        AtlasFileError: the atlas cannot be read, or belongs to another model. AtlasError: the model's weights
            are unknown (an old ``.onnx`` file), so no atlas can be checked against it.
    """
    if weights_sha256 is None:
        raise AtlasError(f"{folder}: the model does not record the SHA-256 of its weights, so this atlas cannot be "
                         "checked against it; run its checkpoint, or pass --no-atlas")
    found = load(folder, weights_sha256)
    say_if_uncalibrated(folder, found)
    return found


def say_if_uncalibrated(folder: Path, atlas: Atlas) -> None:
    """A warning, naming ``folder``, when ``atlas`` is not calibrated and so cannot tell unfamiliar frames."""
    if atlas.calibration is None:
        warnings.warn(f"{folder}: the atlas is not calibrated: it shows similar cases, but cannot tell unfamiliar "
                      "frames (build it from a manifest of several patients, with at least "
                      f"{MIN_CALIBRATION_FRAMES} validation frames)", MucosaWarning, stacklevel=3)


def file_weights(model: str | Path) -> str | None:
    """The SHA-256 of the weights of a checkpoint or an ``.onnx`` file (its metadata's; None: not recorded)."""
    model = Path(model)
    if model.suffix.lower() == ".onnx":
        return model_weights(OnnxPredictor(model))
    return load_checkpoint(model).weights_sha256
