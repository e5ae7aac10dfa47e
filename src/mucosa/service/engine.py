"""The service's door to the model, with :mod:`~mucosa.service.reading` (a case's files as it reads them)
and :mod:`~mucosa.service.atlas` (the atlas beside the model).

:class:`Engine` loads a checkpoint once, on the fastest runtime available to it, and offers what the web
service needs, as plain Python types (JSON-ready dicts, bytes):

- :meth:`Engine.card`: the model card (classes, input size, preprocessing, training cohort counts without
  ids, validation metrics).
- :meth:`Engine.inspect`: what an uploaded file or set of files is (raises ``reading.UnsupportedMedia`` or
  ``reading.UnreadableMedia``).
- :meth:`Engine.predict_image`: one image → class probabilities, verdict, quality, whether the quality gate
  dropped it, optionally a Grad-CAM overlay.
- :meth:`Engine.frames`: a video or the images of one case, frame by frame: quality, probability, the
  smoothed probability and the running case verdict (``running_verdict.Smoother``'s rule: the mean probability of
  the frames that passed the quality gate against the threshold; with a calibrated atlas, "gathering frames"
  until there are enough to judge the case, ``Smoother.gathering``, and the case's own verdict on its last
  frame however few they are); each frame is kept in a :class:`~mucosa.service.framestore.FrameStore` for
  the viewer.
- :meth:`Engine.frame_png`: a stored frame as PNG, with its Grad-CAM heat map when asked (masked to the field
  of view found by preprocessing, ``data.fov.field_mask``).

Every model call holds :attr:`Engine.lock`, a :class:`PriorityLock`: single-image predictions and Grad-CAM
(someone is waiting for them) go before the frames of background cases, which still get a turn after
waiting ``PriorityLock.max_wait`` seconds. A probability that is not finite never becomes a verdict:
:class:`ModelOutputError` is raised instead.

It stands on mucosa's own pieces: the checkpoint, the frame iterator (``data.preparation.iter_frames``, via
``reading``), the verdict rule (``inference.verdict``), the running case verdict (``running_verdict.Smoother``),
Grad-CAM (``Classifier.grad_cam``) and the predictors; the rest of the service only sees the methods above.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from mucosa.data.fov import FieldOfView, field_mask
from mucosa.errors import ConfigError, ModelOutputError, MucosaError
from mucosa.inference import verdict as verdicts
from mucosa.inference.atlas import CASE_CALIBRATION_FRAMES
from mucosa.inference.classifier import Classifier
from mucosa.inference.leave_out import own_patients
from mucosa.inference.onnx import OnnxPredictor, exported_from, to_checked_onnx
from mucosa.inference.onnx_files import CARD_KEY, exported_beside
from mucosa.inference.provenance import UnverifiedModelError, read_vouched
from mucosa.inference.pytorch import TorchPredictor, resolve_device
from mucosa.inference.running_verdict import Smoother
from mucosa.inference.texture_view import field_texture, textured
from mucosa.models.checkpoint import load_checkpoint, read_checkpoint_file
from mucosa.service import atlas as case_atlas
from mucosa.service.framestore import FrameStore, encode, to_uint8
from mucosa.service.media import media_kind, media_suffix, public  # noqa: F401  (the routes' names for them)
from mucosa.service.reading import case_frames, inspect_case, read_still
from mucosa.service.scheduling import PriorityLock

log = logging.getLogger(__name__)

def _ratio(scores, calibration, textures) -> float | None:
    """A case's unfamiliarity over the atlas's case threshold (``verdict.unfamiliarity_ratio``), rounded."""
    if scores is None or calibration is None:
        return None
    found = verdicts.unfamiliarity_ratio(scores, calibration.case_threshold, textures, calibration.scales)
    return None if found is None else round(found, 4)


def _plain(value):
    """A probability as JSON: float (binary), list of floats (K classes) or None."""
    if value is None:
        return None
    return float(value) if np.ndim(value) == 0 else [float(v) for v in value]


def _counts(probabilities, classes: int, threshold: float) -> np.ndarray:
    """How many of the frames' ``probabilities`` (None: no frame) are called each of ``classes``."""
    if probabilities is None:
        return np.zeros(classes, np.int64)
    return np.bincount(verdicts.calls(probabilities, threshold), minlength=classes)


def _finite(value) -> bool:
    return bool(np.all(np.isfinite(np.asarray(value, np.float64))))


def _onnx_predictor(checkpoint, threads: int | None, path: Path | bytes | None = None):
    """``onnx.OnnxPredictor`` of the checkpoint (exported in memory and parity-checked, read from ``path``, or
    ``path`` given as bytes) whose ONNX Runtime threads sleep between calls instead of spinning: a server shares
    its cores with request parsing, preprocessing and video decoding, which spinning threads would slow down."""
    model = path if isinstance(path, bytes) else path.read_bytes() if path is not None else to_checked_onnx(checkpoint)
    return OnnxPredictor(model, batch_size=8, checkpoint=checkpoint, threads=threads, spinning=False)


def _ms_per_frame(predictor, size: int, calls: int = 6) -> float:
    frame = np.random.default_rng(0).integers(0, 256, (1, size, size), dtype=np.uint8)
    predictor(frame)  # warm-up
    times = []
    for _ in range(calls):
        tic = time.perf_counter()
        predictor(frame)
        times.append(time.perf_counter() - tic)
    return 1000 * float(np.median(times))


class Engine:
    """A checkpoint loaded once for the web service (see the module docstring).

    Args:
        checkpoint: a mucosa checkpoint (``.ckpt``); Grad-CAM needs its PyTorch model.
        device: ``auto`` (a CUDA GPU when PyTorch sees one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.
        threshold: a binary case (or image) is called positive when its mean probability reaches it.
        window: informative frames averaged into a frame's smoothed probability.
        onnx: an ONNX model exported from this checkpoint by ``mucosa export`` (e.g. ``--int8``, whose
            agreement with the float model export measures) to predict with instead; Grad-CAM still uses
            the checkpoint. Its classes and preprocessing must be the checkpoint's.
        slots: model calls that may run at the same time (default: one per CPU core; 1 on a GPU).
        threads: threads of each call (default: the cores shared out between the slots, at least 1).
            Several single-threaded calls side by side use a small CPU better than one call spread
            over all cores, and a busy machine slows them down less.

    Raises:
        CheckpointFileError: not a mucosa checkpoint. ConfigError: a bad device, threshold or window.
    """

    def __init__(self, checkpoint: str | Path, device: str = "auto", threshold: float = 0.5, window: int = 16,
                 onnx: str | Path | None = None, slots: int | None = None, threads: int | None = None) -> None:
        threshold = verdicts.check_threshold(threshold)
        if window < 1:
            raise ConfigError(f"window {window} must be at least 1 frame")
        self.path = Path(checkpoint)
        if self.path.suffix.lower() == ".onnx":
            raise ConfigError(f"{self.path}: serve needs the PyTorch checkpoint (.ckpt), which Grad-CAM uses; it "
                              "runs the ONNX runtime itself when that is faster")
        self.device = str(resolve_device(device))
        self.checkpoint = load_checkpoint(self.path)
        self.classes = list(self.checkpoint.classes)
        self.prep = self.checkpoint.preprocessing
        self.input_size = self.prep.size
        self.threshold, self.window = float(threshold), window
        self.verdicts = verdicts.verdict_names(self.classes)
        cores = os.cpu_count() or 1
        self.slots = slots or (cores if self.device == "cpu" else 1)
        self.threads = threads or max(1, cores // self.slots)
        self.lock = PriorityLock(self.slots)
        self._cam_lock = threading.Lock()  # Grad-CAM hooks the model: one at a time
        if onnx is not None:
            self.predictor = self._exported(Path(onnx), self.threads)
            self.timings = {"onnx": _ms_per_frame(self.predictor, self.prep.size)}
        else:
            self.predictor, self.timings = self._fastest(self.threads)
        self.quantization = getattr(self.predictor, "metadata", {}).get("quantization", "none")
        self.classifier = Classifier(self.predictor, self.threshold)
        self.runtime = self.predictor.runtime
        self.atlas, self.atlas_note = case_atlas.atlas_beside(self.path, self.checkpoint.weights_sha256)
        log.info("model %s: %s on %s, %d call(s) at a time of %d thread(s) (%s ms per frame)", self.path.name,
                 self.runtime, self.device, self.slots, self.threads,
                 ", ".join(f"{k} {v:.1f}" for k, v in self.timings.items()))

    # ---------------------------------------------------------------------------------------------- loading

    def _fastest(self, threads: int | None):
        """The fastest predictor on this device: GPU PyTorch, or the faster of PyTorch and ONNX Runtime."""
        if self.device != "cpu":
            predictor = TorchPredictor(self.checkpoint, batch_size=8, device=self.device)
            return predictor, {"torch": _ms_per_frame(predictor, self.prep.size)}
        candidates = [TorchPredictor(self.checkpoint, batch_size=8, threads=threads)]
        try:  # the validated int8 or fp32 export beside the checkpoint when there is one (onnx_files)
            beside = exported_beside(self.checkpoint, threads=threads)
            model = None if beside is None else beside.model_bytes  # the bytes checked, not the file read again
            candidates.append(_onnx_predictor(self.checkpoint, threads, model))
        except (MucosaError, ImportError) as error:
            log.warning("ONNX runtime not used: %s", error)
        timings = {p.runtime: _ms_per_frame(p, self.prep.size) for p in candidates}
        return min(candidates, key=lambda p: timings[p.runtime]), timings

    def _exported(self, path: Path, threads: int):
        """The ONNX model at ``path``, checked to be an export of this checkpoint."""
        if self.device != "cpu":
            raise ConfigError(f"--onnx {path.name}: ONNX models run on the CPU here; use --device cpu")
        if not path.is_file():
            raise ConfigError(f"--onnx {path}: not found")
        try:  # the bytes the card vouches for, read once: metadata alone proves nothing
            model = read_vouched(path, self.checkpoint)
        except UnverifiedModelError as error:
            raise ConfigError(f"--onnx {error}: export it again with `mucosa export`") from None
        predictor = _onnx_predictor(self.checkpoint, threads, model)
        if not exported_from(predictor, self.checkpoint):
            raise ConfigError(f"--onnx {path.name}: not an export of {self.path.name}'s current weights, classes and "
                              "preprocessing (or written by an older mucosa): export it again")
        return predictor

    def card(self) -> dict:
        """The model card: what the checkpoint says about the model, its inputs and its training."""
        data = read_checkpoint_file(self.path)
        info = self.checkpoint.info
        split = dict(info.get("split") or {})
        patients = {side: len(ids) for side, ids in (split.pop("patients", None) or {}).items()}
        split.pop("manifest", None)  # a path on the training machine
        validation = {}
        for state in (data.get("callbacks") or {}).values():
            if isinstance(state, dict) and state.get("monitor") and state.get("best_model_score") is not None:
                score = float(state["best_model_score"])
                validation[state["monitor"]] = score if math.isfinite(score) else None
        config = info.get("config") or {}
        return {
            "name": self.path.name, "run": self.path.resolve().parent.name or None,
            "mucosa_version": info.get("mucosa_version"),
            "weights_sha256": self.checkpoint.weights_sha256,
            "classes": self.classes, "positive": self.classes[1] if len(self.classes) == 2 else None,
            "verdicts": dict(zip(self.classes, self.verdicts)),
            "input_size": self.prep.size, "model": info.get("model"), "preprocessing": self.prep.to_dict(),
            "threshold": self.threshold, "window": self.window,
            "training": {"patients": patients, "split": split, "epochs": int(data.get("epoch", -1)) + 1,
                         "steps": int(data.get("global_step", 0)), "settings": config.get("training"),
                         "augmentation": config.get("augmentation")},
            "validation": validation, "atlas": case_atlas.atlas_card(self.atlas, self.atlas_note),
            "atlas_note": self.atlas_note,
            "deployment": info.get(CARD_KEY),
            "runtime": {"name": self.runtime, "device": self.device, "quantization": self.quantization,
                        "slots": self.slots, "threads": self.threads,
                        "ms_per_frame": {k: round(v, 2) for k, v in self.timings.items()}},
        }

    # ---------------------------------------------------------------------------------------------- media

    def inspect(self, paths: list[Path]) -> dict:
        """What a case's files are (``reading.inspect_case``, which says what it refuses), for this model."""
        return inspect_case(paths, self.prep)

    # ---------------------------------------------------------------------------------------------- images

    def _predict(self, frames: np.ndarray, urgent: bool) -> np.ndarray:
        with (self.lock.urgent() if urgent else self.lock.background()):
            return np.asarray(self.predictor(np.ascontiguousarray(frames)))

    def _predict_and_embed(self, frame: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """A background frame's probability and embedding, from one pass."""
        probabilities, embeddings = self._predict_and_embed_all(frame[None], urgent=False)
        return probabilities[0], embeddings[0]

    def _predict_and_embed_all(self, frames: np.ndarray, urgent: bool) -> tuple[np.ndarray, np.ndarray]:
        with (self.lock.urgent() if urgent else self.lock.background()):
            probabilities, embeddings = self.predictor.predict_and_embed(np.ascontiguousarray(frames))
        return np.asarray(probabilities), np.asarray(embeddings)

    def verdict(self, mean, used: int, total: int, state: str, calls=None, flags=None, scores=None,
                textures=None, gathering: bool = False) -> dict:
        """A verdict as JSON: ``label`` (the clinical words for the class, or None without informative
        frames), ``class``, ``text`` (the label, or why there is none), ``score`` (mean probability),
        ``threshold``, ``frames`` it rests on, ``total`` frames seen, ``state`` (queued, running, final) and
        ``calls``: how many of the informative frames each class was called on (``calls``, one count per
        class; none yet when not given) and ``unfamiliar``: the share of the informative frames the atlas finds
        unfamiliar (``flags``, one bool a frame; None: no atlas to tell). Their median unfamiliarity (``scores``)
        above the atlas's case threshold gives the label ``unfamiliar`` and no class
        (``verdict.verdict_or_unfamiliar``), with ``reason`` (why, in words) and ``network_alone`` (what the network
        alone would have said, worded as no verdict); both None for any other label. ``gathering`` (a running case
        too short for the atlas to judge, ``running_verdict.Smoother.gathering``): no label nor class, the text
        ``verdict.GATHERING``, and ``needed``, the informative frames it must reach (None otherwise)."""
        label = cls = None
        calibration = None if self.atlas is None else self.atlas.calibration
        said, share = verdicts.verdict_or_unfamiliar(mean, self.classes, flags, self.threshold, scores,
                                                     None if calibration is None else calibration.case_threshold,
                                                     textures, None if calibration is None else calibration.scales)
        if gathering:  # no verdict yet: neither a class nor unfamiliar
            pass
        elif said == verdicts.UNFAMILIAR:
            label = said
        elif mean is not None:
            index = verdicts.call(mean, self.threshold)
            label, cls = self.verdicts[index], self.classes[index]
        counts = {c: int(n) for c, n in zip(self.classes, [0] * len(self.classes) if calls is None else calls)}
        share = None if share is None else round(share, 4)
        ratio, unfamiliar = _ratio(scores, calibration, textures), label == verdicts.UNFAMILIAR
        text = label or (verdicts.GATHERING if gathering else verdicts.NO_VERDICT)
        return {"state": state, "label": label, "class": cls, "text": text,
                "score": _plain(mean), "threshold": self.threshold, "frames": used, "total": total, "calls": counts,
                "unfamiliar": share, "unfamiliarity_ratio": ratio,
                "needed": CASE_CALIBRATION_FRAMES if gathering else None,
                "reason": verdicts.unfamiliar_reason(share, ratio) if unfamiliar else None,
                "network_alone": verdicts.network_alone(mean, self.classes, self.threshold, counts) if unfamiliar
                else None}

    def predict_image(self, source: bytes | str | Path, gradcam: bool = False) -> dict:
        """One image: class probabilities, verdict, quality score and whether the quality gate dropped it.

        A tiled checkpoint averages its tiles that pass the gate (``tiles`` lists them). With ``gradcam``
        an informative untiled image also gets ``gradcam_png``: the image with the heat map, PNG bytes.

        Raises:
            UnreadableMedia: the image does not decode. ModelOutputError: a non-finite probability.
        """
        if isinstance(source, bytes):
            with tempfile.NamedTemporaryFile(suffix=media_suffix("", source[:16]) or ".png") as handle:
                handle.write(source)
                handle.flush()
                return self.predict_image(Path(handle.name), gradcam)
        path = Path(source)
        image, parts, boxes, fov = read_still(path, self.prep)
        quality = [float(np.nan_to_num(q)) for _, q in parts]
        used = [k for k, q in enumerate(quality) if self.prep.passes(q)]
        probs, familiar = self._judge_still([parts[k][0] for k in used], path, image, fov,
                                            [boxes[k] for k in used])
        mean = np.mean(probs, axis=0) if probs is not None else None
        calls = _counts(probs, len(self.classes), self.threshold)
        result = {"classes": self.classes, "probabilities": self._by_class(mean), "probability": _plain(mean),
                  "verdict": self.verdict(mean, len(used), len(parts), "final", calls, *familiar),
                  "quality": float(np.mean(quality)), "quality_threshold": self.prep.quality_threshold,
                  "dropped": not used, "threshold": self.threshold}
        if len(parts) > 1:
            by_position = dict(zip(used, probs if probs is not None else []))
            result["tiles"] = [{"tile": k, "quality": q, "dropped": k not in by_position,
                                "probability": _plain(by_position.get(k))} for k, q in enumerate(quality)]
        if gradcam and used and len(parts) == 1:
            result["gradcam_png"] = encode(self._overlay(to_uint8(image), parts[0][0], boxes[0], (fov, boxes[0])))
        return result

    def _judge_still(self, frames: list[np.ndarray], path: Path, image: np.ndarray, fov: FieldOfView,
                     boxes: list[tuple]) -> tuple[np.ndarray | None, tuple]:
        """The used frames (tiles, each in its box of ``image``) of one still image: probabilities and, with an
        atlas, each frame's unfamiliar flag and score, and the texture scores of the textured ones (the image is
        a case of its own: when it is an atlas case, its patient is left out, ``leave_out``)."""
        if not frames:
            return None, ()
        if self.atlas is None:
            probs, familiar = self._predict(np.stack(frames), urgent=True), ()
        else:
            probs, embeddings = self._predict_and_embed_all(np.stack(frames), urgent=True)
        if not _finite(probs):
            raise ModelOutputError(f"{path.name}: the model gave a non-finite probability; no verdict")
        if self.atlas is not None:
            own = own_patients(self.atlas, [path])
            found = self.atlas.unfamiliar(np.asarray(embeddings, np.float32), own)
            familiar = (None if found.flags is None else [bool(f) for f in found.flags], found.scores,
                        self._texture_scores([(image, fov, box) for k, box in enumerate(boxes) if textured(k)],
                                             own))
        return probs, familiar

    def _texture_scores(self, fields: list[tuple[np.ndarray, FieldOfView, tuple]], left_out: tuple | None = None
                        ) -> list[float] | None:
        """The atlas's texture scores of decoded frames' fields (each a source, its field of view and the box of
        the model frame in it), the ``left_out`` patients' atlas frames left out (None: the atlas has no texture
        view)."""
        if self.atlas is None or not self.atlas.judges_texture or not fields:
            return None
        vectors = np.stack([field_texture(source, fov, self.prep, box) for source, fov, box in fields])
        return self.atlas.texture_scores(vectors, exclude_patient=left_out).tolist()

    def _by_class(self, mean) -> dict | None:
        if mean is None:
            return None
        if np.ndim(mean) == 0:
            return {self.classes[0]: 1.0 - float(mean), self.classes[1]: float(mean)}
        return {c: float(v) for c, v in zip(self.classes, mean)}

    # ---------------------------------------------------------------------------------------------- cases

    def frames(self, sources: list[Path], store: FrameStore | None = None, cancel: threading.Event | None = None,
               warnings: list[str] | None = None, patient: str | None = None) -> Iterator[dict]:
        """A case frame by frame: one dict per decoded frame (video) or model frame (images).

        Keys: ``frame`` (video frame index, or position among the images' frames), ``time`` (seconds,
        videos only), ``quality``, ``dropped`` (below the quality gate: no probability), ``probability``
        (of the positive class for two classes, else a list), ``smoothed`` (mean of the last ``window``
        informative frames), ``called`` (the class the frame's own probability calls; None when dropped),
        ``source`` (the image's position; None for a video) and ``case``: the running verdict (``state``
        "running", ``label``, ``class``, ``score`` = mean probability of the informative frames, ``frames`` it
        rests on, ``total`` frames seen, ``calls`` per class; no label while gathering frames, :meth:`verdict`),
        the last row's the case's verdict.

        A damaged video still gives the frames that decode; once it is read to its end, what was found
        (frames decoded of those announced, decode errors, gaps, an early end) is appended to ``warnings``.
        ``patient``: the one the case's exam names, left out of the atlas's answers with the atlas's patients
        of its files (``leave_out``).

        Raises:
            UnreadableMedia: a file that does not decode. ModelOutputError: a non-finite probability
            (nothing is yielded for that frame).
        """
        calls = np.zeros(len(self.classes), np.int64)  # informative frames called each class
        familiar = None if self.atlas is None else case_atlas.CaseFamiliarity(
            self.atlas, sources, None if store is None else store.folder.parent, patient)
        calibration = None if familiar is None else self.atlas.calibration
        smoother = Smoother(self.classes, self.window, self.threshold,
                            *(() if calibration is None else (calibration.case_threshold, calibration.scales)))
        items = case_frames(sources, self.prep, warnings)
        row = None  # each row goes out once the next is read: the last one carries the atlas's vote
        used_in_file: dict = {}  # used frames of each file so far: the texture view counts them file by file
        for seen, (number, seconds, frame, model_frame, quality, box, fov, source) in enumerate(items, start=1):
            if cancel is not None and cancel.is_set():
                return
            if row is not None:
                yield row
            dropped = not self.prep.passes(quality)
            probability = called = flag = score = None
            if not dropped:
                probability, flag, score = self._frame(number, model_frame, familiar)
                texture, used_in_file[source] = None, used_in_file.get(source, 0) + 1
                if familiar is not None and textured(used_in_file[source] - 1):
                    found = self._texture_scores([(frame, fov, box)], familiar.patient)
                    texture = None if found is None else found[0]
                smoother.update(probability, flag, score, texture)
                index = verdicts.call(probability, self.threshold)
                calls[index] += 1
                called = self.classes[index]
            if store is not None:
                store.add(number, frame, model_frame, box, field=(fov, box))
            row = {"frame": number, "time": seconds, "quality": round(quality, 4), "dropped": dropped,
                   "probability": _plain(probability), "smoothed": _plain(smoother.smoothed), "called": called,
                   "source": source, "unfamiliar": flag, "unfamiliarity": score}
            row["case"] = self._running(smoother, seen, calls, familiar, smoother.gathering)
        if familiar is not None:
            familiar.save()
        if row is not None:  # the case's own verdict, however few its frames (no longer gathering them)
            row["case"] = {**self._running(smoother, seen, calls, familiar, False),
                           "atlas_vote": None if familiar is None else familiar.vote()}
            yield row

    def _running(self, smoother: Smoother, seen: int, calls, familiar, gathering: bool) -> dict:
        """The running verdict of a case read so far (:meth:`verdict`)."""
        return self.verdict(smoother.case_probability, smoother.count, seen, "running", calls,
                            *((smoother.flags, smoother.scores, smoother.textures) if familiar is not None else ()),
                            gathering=gathering)

    def _frame(self, number: int, model_frame: np.ndarray, familiar) -> tuple:
        """An informative frame's probability, and (with an atlas) whether it is unfamiliar and its score."""
        if familiar is None:
            probability, flag, score = self._predict(model_frame[None], urgent=False)[0], None, None
        else:
            probability, embedding = self._predict_and_embed(model_frame)
        if not _finite(probability):
            raise ModelOutputError(f"the model gave a non-finite probability for frame {number}; no verdict")
        if familiar is not None:
            flag, score = familiar.add(number, embedding)
        return probability, flag, score

    # ---------------------------------------------------------------------------------------------- pictures

    def frame_png(self, store: FrameStore, number: int, gradcam: bool = False) -> bytes:
        """Stored frame ``number`` as PNG; with ``gradcam`` the heat map of its predicted class is laid over
        the part the model saw, none of it outside the field of view (computed once, then kept in the store)."""
        if not gradcam:
            return encode(store.display(number))
        cached = store.gradcam_path(number)
        if not cached.is_file():
            data = encode(self._overlay(store.display(number), store.model_frame(number), store.box(number),
                                        store.field(number)))
            store.keep_gradcam(number, data)
            return data
        return cached.read_bytes()

    def _overlay(self, display: np.ndarray, model_frame: np.ndarray, box: tuple,
                 field: tuple[FieldOfView, tuple] | None) -> np.ndarray:
        """RGB display frame with the Grad-CAM heat map (jet colours, opacity following the heat) in ``box``,
        outlined. ``field`` (the field of view and the model frame's box in the source frame) masks the heat:
        none outside the field of view."""
        from matplotlib import colormaps
        from PIL import Image

        with self._cam_lock, self.lock.urgent():
            mask = None if field is None else field_mask(field[0], model_frame.shape, field[1])
            heat = self.classifier.grad_cam(model_frame, field=mask)  # (S, S) in [0, 1], 0 outside the field
        x0, y0, x1, y1 = box
        heat = np.asarray(Image.fromarray(heat, mode="F").resize((x1 - x0, y1 - y0), Image.Resampling.BILINEAR))
        if field is not None:  # and none at the display's resolution either, where the map was enlarged
            heat = heat * field_mask(field[0], heat.shape, field[1])
        heat = np.clip(heat, 0, 1)[..., None]
        rgb = np.repeat(display[..., None], 3, axis=2).astype(np.float32)
        colour = colormaps["jet"](heat[..., 0])[..., :3] * 255
        alpha = 0.65 * np.clip((heat - 0.15) / 0.85, 0, 1)  # the weakest evidence leaves the tissue untinted
        rgb[y0:y1, x0:x1] = rgb[y0:y1, x0:x1] * (1 - alpha) + colour * alpha
        outline = np.array([120, 190, 255], np.float32)  # the part of the frame the model saw
        rgb[y0, x0:x1] = rgb[y1 - 1, x0:x1] = outline
        rgb[y0:y1, x0] = rgb[y0:y1, x1 - 1] = outline
        return np.round(rgb).astype(np.uint8)
