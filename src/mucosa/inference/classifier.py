"""The Python API of a trained model: ``mucosa.load`` → :class:`Classifier` → :class:`Prediction`.

A classifier wraps a checkpoint (or an ``.onnx`` model written by ``mucosa export``) with its
preprocessing, so a notebook gets the same frames, quality gate and verdicts as ``mucosa predict``:

    >>> import numpy as np, mucosa
    >>> classifier = mucosa.load(checkpoint_path)                    # doctest: +SKIP
    >>> prediction = classifier.predict(np.random.rand(8, 96, 96))   # doctest: +SKIP
    >>> prediction.verdict, prediction.probabilities.shape           # doctest: +SKIP
    ('mucosal healing', (8,))

``predict`` takes a NumPy array ((H, W) or (H, W, C): one image; (N, H, W): the frames of one case, any
dtype), a path (image, video, folder or manifest CSV), or a list of paths; see :meth:`Classifier.predict`.
``embed`` takes the same and gives each frame's embedding (``models.embedding``: unit-length rows, frames
the model sees alike have a high dot product), one row per row of ``predict``:

    >>> embeddings = classifier.embed(np.random.rand(8, 96, 96))     # doctest: +SKIP
    >>> embeddings.shape, embeddings.dtype                           # doctest: +SKIP
    ((8, 128), dtype('float32'))

With an atlas (``atlas/`` beside the checkpoint, as ``mucosa train`` writes it, or ``load(..., atlas=A)``),
every prediction says which used frames are unlike every confirmed case the model learnt from, and a case
that is unfamiliar as a whole (``verdict.unfamiliar_case``) gets the verdict ``unfamiliar`` instead of a
class; ``similar_cases`` gives the confirmed cases that look alike. A case's own patients are left out of
the atlas's answers (``leave_out``: the atlas's patients of its files, and the patient a manifest names):

    >>> prediction = classifier.predict("test-pattern.png")          # doctest: +SKIP
    >>> prediction.verdict, prediction.unfamiliar_share              # doctest: +SKIP
    ('unfamiliar', 1.0)
    >>> [(c.label, round(c.distance, 3)) for c in classifier.similar_cases("men-03.mpg", k=2)]  # doctest: +SKIP
    [('meningioma', 0.012), ('meningioma', 0.019)]
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mucosa.data.cache import FrameCache
from mucosa.data.preparation import Frame, iter_frames
from mucosa.data.readers import FrameSelection
from mucosa.errors import ConfigError
from mucosa.inference import verdict as verdicts
from mucosa.inference.atlas import Atlas, SimilarCase
from mucosa.inference.atlas_build import CARD_KEY as ATLAS_CARD_KEY
from mucosa.inference.atlas_build import find_atlas, model_weights, open_atlas
from mucosa.inference.leave_out import own_patients, own_patients_by_case
from mucosa.inference.onnx_files import CARD_KEY
from mucosa.inference.runtime import open_predictor
from mucosa.inference.saliency import grad_cam
from mucosa.inference.sources import collect_sources
from mucosa.inference.texture_view import file_textures, textured

__all__ = ["Classifier", "Prediction", "CaseVerdict", "load"]


@dataclass(frozen=True)
class CaseVerdict:
    """The verdict of one case (a patient, a video or an image set): the mean probability of its used
    frames against the threshold, or ``unfamiliar`` when the atlas finds most of them unlike every confirmed
    case (``mucosa.inference.verdict``)."""

    case: str
    verdict: str
    score: float | np.ndarray | None  # mean positive probability (binary) or (K,) class means; None: no frame
    frames: int                       # frames read
    used: int                         # frames that passed the quality gate
    unfamiliar_share: float | None = None  # share of used frames the atlas finds unfamiliar; None: cannot tell


@dataclass
class Prediction:
    """Per-frame probabilities and per-case verdicts, as plain NumPy arrays and Python objects.

    Attributes:
        classes: the model's classes (the positive one last for two classes).
        threshold: the decision threshold of a binary model.
        source: (N,) the file of each frame (``"array"`` for an array).
        case: (N,) the case of each frame.
        frame: (N,) frame number in its video, or tile number of its image.
        quality: (N,) quality score in [0, 1].
        used: (N,) whether the frame passed the quality gate.
        probabilities: (N,) positive-class probability, or (N, K); NaN for frames not used.
        cases: one :class:`CaseVerdict` per case, in order of appearance.
        embeddings: (N, D) float32 frame embeddings, unit length, NaN for frames not used; only when
            ``predict(..., embed=True)`` (else None).
        unfamiliar: (N,) whether the atlas finds each used frame unlike every confirmed case (False for frames
            not used); None without a calibrated atlas (it cannot tell).
        unfamiliarity: (N,) each used frame's unfamiliarity score, the cosine distance to its k-th nearest
            atlas frame (NaN for frames not used); None without an atlas.
    """

    classes: list[str]
    threshold: float
    source: np.ndarray
    case: np.ndarray
    frame: np.ndarray
    quality: np.ndarray
    used: np.ndarray
    probabilities: np.ndarray
    cases: list[CaseVerdict] = field(default_factory=list)
    embeddings: np.ndarray | None = None
    unfamiliar: np.ndarray | None = None
    unfamiliarity: np.ndarray | None = None

    @property
    def verdict(self) -> str:
        """The verdict when there is one case (an array, one file); raises ConfigError otherwise."""
        return self._one_case().verdict

    @property
    def unfamiliar_share(self) -> float | None:
        """The share of used frames the atlas finds unfamiliar, when there is one case (None: no calibrated
        atlas, or no used frame); raises ConfigError otherwise."""
        return self._one_case().unfamiliar_share

    def _one_case(self) -> CaseVerdict:
        if len(self.cases) != 1:
            raise ConfigError(f"{len(self.cases)} cases: read .cases for each one's verdict")
        return self.cases[0]

    def __len__(self) -> int:
        return len(self.frame)


class Classifier:
    """A trained model with its preprocessing, on a device and runtime; built by :func:`load`.

    Attributes:
        classes: class names (binary: negative first, the positive class last).
        preprocessing: how raw frames become model input (from the checkpoint).
        runtime: ``torch`` or ``onnx``.
        device: the ``torch.device`` inference runs on.
        threshold: decision threshold for binary verdicts.
        atlas: the atlas of confirmed cases (``mucosa.inference.atlas.Atlas``) that tells unfamiliar frames and
            finds similar cases, or None.
    """

    def __init__(self, predictor, threshold: float = 0.5, cache: FrameCache | None = None,
                 atlas: Atlas | None = None) -> None:
        self._predictor = predictor
        self.classes: list[str] = list(predictor.classes)
        self.preprocessing = predictor.preprocessing
        self.runtime: str = predictor.runtime
        self.device = predictor.device
        self.threshold = verdicts.check_threshold(threshold)
        self.cache = cache
        self.atlas = atlas

    def __repr__(self) -> str:
        return (f"Classifier(classes={self.classes}, size={self.preprocessing.size}, runtime={self.runtime!r}, "
                f"device={str(self.device)!r})")

    @property
    def checkpoint(self):
        """The loaded PyTorch checkpoint (None for an ``.onnx`` file)."""
        return getattr(self._predictor, "checkpoint", None)

    def probabilities(self, frames: np.ndarray) -> np.ndarray:
        """Probabilities for prepared uint8 frames (N, S, S): (N,) positive class, or (N, K)."""
        return self._predictor(np.asarray(frames, np.uint8))

    def frames(self, x: str | Path | np.ndarray, selection: str | None = None) -> Iterator[Frame]:
        """The prepared frames of one image, video or array (``data.preparation.iter_frames``)."""
        return iter_frames(x, self.preprocessing, selection)

    def predict(self, x: str | Path | np.ndarray | Sequence[str | Path], case: str | None = None,
                embed: bool = False) -> Prediction:
        """Probabilities for every frame and a verdict for every case (and, with ``embed``, the frames'
        embeddings, from the same pass through the model).

        Args:
            x: an array ((H, W) or (H, W, C): one image; (N, H, W): the frames of one video, judged by
               the video quality gate (pass still images one by one, or save them and pass their folder);
               any dtype, integers scaled by their type's maximum, floats by their maximum when above 1), an image,
               a video, a folder (searched recursively: the images of one folder form a case, each video
               is a case) or a manifest CSV (cases are its patients), or a list of these.
            case: the case name of an array (default ``"array"``).
            embed: also give ``Prediction.embeddings`` (see :meth:`embed`).

        Raises:
            UnreadableFileError, MucosaError: a path that cannot be read; ModelOutputError: the model
            gave a non-finite probability; onnx.NoEmbeddingError: ``embed`` with an ``.onnx`` file exported
            before mucosa gave embeddings.
        """
        return self._predict(self._items(x, case), embed)

    def _items(self, x, case: str | None = None) -> list[tuple]:
        """What ``predict`` takes, as (source, case, frames, patient, (origin, selection)) for each file (or the
        array): ``origin`` is what the frames are read from (the file, or the array)."""
        if isinstance(x, np.ndarray):
            return [("array", str(case or "array"), iter_frames(x, self.preprocessing), None, (x, None))]
        return [(str(s.path), s.case, self._source_frames(s.path, s.frames), s.patient, (s.path, s.frames))
                for s in collect_sources(_paths(x))]

    def embed(self, x: str | Path | np.ndarray | Sequence[str | Path], case: str | None = None) -> np.ndarray:
        """The embedding of every frame of ``x`` (what :meth:`predict` takes): (N, D) float32, each row of unit
        length, in the order of ``predict(x)``'s rows; NaN rows for frames that fail the quality gate.

        The embedding is the model's final feature map averaged over the image (``models.embedding``): frames
        that look alike to the model have a dot product near 1. Raises as :meth:`predict` does.
        """
        return self.predict(x, case, embed=True).embeddings

    def similar_cases(self, x: str | Path | np.ndarray | Sequence[str | Path], k: int = 5,
                      exclude_patient: str | None = None) -> list[SimilarCase]:
        """The ``k`` confirmed cases of the atlas most like the used frames of ``x`` (what :meth:`predict` takes;
        give one case's frames), never of ``exclude_patient`` nor of the query's own patients (``leave_out``:
        the atlas's patients of its files, the patients a manifest names); each with its label, patient,
        distance and closest frames with thumbnails (``Atlas.similar_cases``).

        Raises:
            ConfigError: no atlas, or ``k`` below 1. As :meth:`predict` otherwise.
        """
        if self.atlas is None:
            raise ConfigError("this classifier has no atlas: load it with atlas=FOLDER, or build one with mucosa "
                              "atlas build")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ConfigError(f"k {k!r} must be a whole number of at least 1")
        items = self._items(x)
        exclude = own_patients(self.atlas, [path for _, path, _ in self._members(items) if path is not None],
                               [exclude_patient, *(item[3] for item in items)], self.cache)
        embeddings = self._predict(items, embed=True).embeddings
        return self.atlas.similar_cases(embeddings[~np.isnan(embeddings).any(1)], k, exclude)

    def _source_frames(self, path: Path, selection: FrameSelection) -> Iterator[tuple[int, np.ndarray, float]]:
        if self.cache is None:
            return ((f.index, f.image, f.quality) for f in iter_frames(path, self.preprocessing, selection))
        prepared = self.cache.get(path.resolve(), self.preprocessing, selection)
        return ((int(i), np.asarray(prepared.frames[k]), float(q))
                for k, (i, q) in enumerate(zip(prepared.indices, prepared.quality)))

    @staticmethod
    def _members(items) -> list[tuple[str, Path | None, str | None]]:
        """(case, file or None for an array, patient named) of each item."""
        return [(case, origin[0] if isinstance(origin[0], Path) else None, patient)
                for _, case, _, patient, origin in items]

    def _predict(self, items, embed: bool = False) -> Prediction:
        columns: dict[str, list] = {"source": [], "case": [], "frame": [], "quality": [], "probabilities": [],
                                    "embeddings": [], "unfamiliarity": [], "unfamiliar": []}
        asks_atlas = self.atlas is not None
        embedding_width = self._predictor.embedding_size if embed or asks_atlas else None  # an old .onnx refuses
        per_case: dict[str, list] = {}
        own = own_patients_by_case(self.atlas, self._members(items), self.cache) if asks_atlas else {}
        for source, case, frames, _, origin in items:
            probs, vectors = self._score(frames, columns, source, case, embedding_width)
            scores, flags, count, unfamiliarity, textures = per_case.setdefault(case, [[], [], 0, [], []])
            per_case[case][2] = count + len(probs)
            scores += [p for p in probs if not np.any(np.isnan(p))]
            if asks_atlas:
                found_flags, found_scores = self._familiarity(probs, vectors, own[case], columns)
                flags += found_flags
                unfamiliarity += found_scores
                numbers = columns["frame"][len(columns["frame"]) - len(probs):]  # this source's frames
                textures += self._texture_scores(probs, numbers, own[case], *origin)
        cases = [self._case(name, *found) for name, found in per_case.items()]
        width = () if len(self.classes) == 2 else (len(self.classes),)
        probabilities = (np.asarray(columns["probabilities"], np.float32) if columns["probabilities"]
                         else np.zeros((0, *width), np.float32))
        quality = np.asarray(columns["quality"], np.float32)
        embeddings = (None if embedding_width is None or not embed
                      else np.asarray(columns["embeddings"], np.float32).reshape(-1, embedding_width))
        told = asks_atlas and self.atlas.calibration is not None
        return Prediction(self.classes, self.threshold, np.asarray(columns["source"], dtype=object),
                          np.asarray(columns["case"], dtype=object), np.asarray(columns["frame"], np.int64),
                          quality, self.preprocessing.passes(quality), probabilities, cases, embeddings,
                          np.asarray(columns["unfamiliar"], bool) if told else None,
                          np.asarray(columns["unfamiliarity"], np.float64) if asks_atlas else None)

    def _case(self, name: str, scores: list, flags: list, count: int, unfamiliarity: list,
              textures: list) -> CaseVerdict:
        """A case's verdict by the one rule (``verdict.verdict_or_unfamiliar``), from its used frames."""
        score = verdicts.mean_score(scores)
        calibration = None if self.atlas is None else self.atlas.calibration
        told = calibration is not None
        verdict, share = verdicts.verdict_or_unfamiliar(score, self.classes, flags if told else None, self.threshold,
                                                        unfamiliarity if told else None,
                                                        calibration.case_threshold if told else None,
                                                        textures, calibration.scales if told else None)
        return CaseVerdict(name, verdict, None if score is None else (float(score) if np.ndim(score) == 0 else score),
                           count, len(scores), share)

    def _texture_scores(self, probs: list, numbers: list, left_out: tuple | None, origin, selection) -> list:
        """The texture scores of every ``TEXTURE_STRIDE``-th used frame of one source (none without the
        atlas's texture view), read again from ``origin``."""
        if not self.atlas.judges_texture:
            return []
        used = [n for n, p in zip(numbers, probs) if not np.any(np.isnan(p))]
        chosen = [int(n) for k, n in enumerate(used) if textured(k)]
        found = file_textures(origin, self.preprocessing, chosen, selection)
        vectors = [found[n] for n in chosen if n in found]
        return self.atlas.texture_scores(np.stack(vectors), exclude_patient=left_out).tolist() if vectors else []

    def _familiarity(self, probs: list, vectors: np.ndarray | None, left_out: tuple | None,
                     columns: dict) -> tuple[list, list]:
        """Append each frame's unfamiliarity score and flag to ``columns`` (NaN and False for frames not used;
        ``left_out``: the case's own patients); returns the used frames' flags and scores."""
        used = [k for k, p in enumerate(probs) if not np.any(np.isnan(p))]
        scores, flags = np.full(len(probs), np.nan), np.zeros(len(probs), bool)
        if used:
            familiarity = self.atlas.unfamiliar(vectors, left_out)
            scores[used] = familiarity.scores
            if familiarity.flags is not None:
                flags[used] = familiarity.flags
        columns["unfamiliarity"].extend(scores.tolist())
        columns["unfamiliar"].extend(flags.tolist())
        return flags[used].tolist(), scores[used].tolist()

    def _score(self, frames, columns: dict[str, list], source: str, case: str,
               embedding_width: int | None) -> tuple[list, np.ndarray | None]:
        """Append one source's frames to ``columns`` (and their embeddings, ``embedding_width`` wide, unless
        None); returns their probabilities (NaN where dropped) and the used frames' embeddings."""
        held = [(f.index, f.image, f.quality) if isinstance(f, Frame) else f for f in frames]
        used = [k for k, (_, _, q) in enumerate(held) if self.preprocessing.passes(q)]
        probs, vectors = self._run(np.stack([held[k][1] for k in used]), embedding_width) if used else ([], None)
        width = () if len(self.classes) == 2 else (len(self.classes),)
        out = [np.full(width, np.nan, np.float32) for _ in held]
        for k, p in zip(used, probs):
            out[k] = p
        verdicts.calls(np.asarray([out[k] for k in used]).reshape(len(used), *width))  # refuse non-finite
        if embedding_width is not None:
            embedded = np.full((len(held), embedding_width), np.nan, np.float32)
            if used:
                embedded[used] = vectors
            columns["embeddings"].extend(embedded)
        for (index, _, quality), p in zip(held, out):
            columns["source"].append(source)
            columns["case"].append(case)
            columns["frame"].append(index)
            columns["quality"].append(quality)
            columns["probabilities"].append(p)
        return out, vectors

    def _run(self, frames: np.ndarray, embedding_width: int | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Probabilities of prepared frames, and their embeddings from the same pass unless the width is None."""
        if embedding_width is None:
            return self.probabilities(frames), None
        return self._predictor.predict_and_embed(np.asarray(frames, np.uint8))

    def grad_cam(self, frame: np.ndarray, target: int | None = None, field: np.ndarray | None = None
                 ) -> np.ndarray:
        """Grad-CAM (S, S) in [0, 1] of a prepared uint8 frame (``saliency.grad_cam``), zero outside ``field``
        (bool (S, S), the field of view: ``data.fov.field_mask``) when given; needs the PyTorch model (a
        checkpoint, not an ``.onnx`` file)."""
        frame, size = np.asarray(frame), self.preprocessing.size
        if frame.dtype != np.uint8 or frame.shape != (size, size):
            raise ConfigError(f"grad_cam takes a prepared frame: uint8 ({size}, {size}), as Classifier.frames gives; "
                              f"got {frame.dtype} {frame.shape}")
        if target is not None and (not isinstance(target, (int, np.integer)) or not 0 <= target < len(self.classes)):
            raise ConfigError(f"target {target!r} must be a class index from 0 to {len(self.classes) - 1}")
        if self.checkpoint is None:
            raise ConfigError("Grad-CAM needs the PyTorch model: load a checkpoint, not an .onnx file")
        return grad_cam(self.checkpoint.model, frame, target, field=field)

    def card(self) -> dict:
        """The model card: classes, input size, preprocessing, model, training cohort counts (no ids)."""
        prep = self.preprocessing
        card = {"classes": self.classes, "verdicts": verdicts.verdict_names(self.classes),
                "input_size": prep.size, "preprocessing": prep.to_dict(), "runtime": self.runtime,
                "device": str(self.device), "threshold": self.threshold,
                "runtime_choice": dict(getattr(self._predictor, "choice", {}))}
        checkpoint = self.checkpoint
        if checkpoint is not None:
            info = checkpoint.info
            split = info.get("split", {})
            card["model"] = {"kind": checkpoint.model_config.kind, "file": checkpoint.path.name}
            card["training_cohort"] = {side: len(ids) for side, ids in split.get("patients", {}).items()}
            card["split"] = {k: v for k, v in split.items() if k in ("mode", "seed", "test", "val", "k", "fold")}
            card["validation"] = info.get("validation", {})
            card["mucosa_version"] = info.get("mucosa_version")
            card["deployment"] = info.get(CARD_KEY)
            card["atlas"] = info.get(ATLAS_CARD_KEY)
        return card


def load(checkpoint: str | Path, device: str = "auto", runtime: str = "auto", threshold: float = 0.5,
         batch_size: int = 16, threads: int | None = None, cache: FrameCache | str | Path | None = None,
         atlas: str | Path | bool | None = None) -> Classifier:
    """Load a trained model for prediction.

    Args:
        checkpoint: a mucosa checkpoint (``best.ckpt``), or an ``.onnx`` file from ``mucosa export``.
        device: ``auto`` (a CUDA GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N``.
        runtime: ``auto`` (ONNX Runtime on the CPU: the validated int8 or fp32 export beside the checkpoint,
            else one made in memory; PyTorch on a GPU; ``runtime.open_predictor``), ``torch`` or ``onnx``.
        threshold: decision threshold of a binary model, in [0, 1].
        batch_size: frames per forward pass.
        threads: intra-op threads (default: all cores).
        cache: a preprocessing cache for files (default: prepare in memory).
        atlas: the atlas of confirmed cases to compare with: a folder, else (None) ``atlas/`` beside the
            checkpoint when there is one (a MucosaWarning when there is none: then it cannot tell unfamiliar
            recordings), or False for none.

    Raises:
        CheckpointFileError: not a mucosa checkpoint. ConfigError: bad device, runtime or threshold.
        AtlasFileError: the atlas cannot be read, or belongs to another model.
    """
    _check_options(checkpoint, batch_size, threads)
    threshold = verdicts.check_threshold(threshold)
    cache = FrameCache(cache) if isinstance(cache, (str, Path)) else cache
    predictor = open_predictor(checkpoint, runtime, batch_size, threads, device)
    folder = find_atlas(checkpoint, None if atlas in (None, True) else atlas, atlas is not False)
    found = open_atlas(folder, model_weights(predictor)) if folder is not None else None
    return Classifier(predictor, threshold, cache, found)


def _check_options(checkpoint, batch_size, threads) -> None:
    if not isinstance(checkpoint, (str, Path)) or not str(checkpoint).strip():
        raise ConfigError(f"checkpoint {checkpoint!r} must be the path of a .ckpt or .onnx file")
    if Path(checkpoint).is_dir():
        raise ConfigError(f"{checkpoint}: a folder, not a checkpoint (a run folder holds best.ckpt)")
    for name, value, least in (("batch_size", batch_size, 1), ("threads", threads, 1)):
        if value is None and name == "threads":
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least:
            raise ConfigError(f"{name} {value!r} must be a whole number of at least {least}")


def _paths(x) -> list[str | Path]:
    """What ``predict`` was given, as a list of paths (str, Path, or an iterable of them)."""
    items = [x] if isinstance(x, (str, Path)) else x
    try:
        items = list(items)
    except TypeError:
        raise ConfigError(f"predict takes an array, a path or a list of paths; got {type(x).__name__}") from None
    bad = [item for item in items if not isinstance(item, (str, Path))]
    if bad or isinstance(x, (bytes, dict)):
        kind = type(bad[0] if bad else x).__name__
        raise ConfigError(f"predict takes an array, a path or a list of paths; got {kind} (arrays one at a time)")
    if any(not str(item).strip() for item in items):
        raise ConfigError("predict: an empty path was given")
    return items
