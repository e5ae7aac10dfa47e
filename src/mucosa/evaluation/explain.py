"""Figures of what the network looks at: the paper's Fig. 3 feature-map grids and Grad-CAM overlays.

- :func:`save_feature_grid` tiles the channels of one layer; :func:`save_overlay` draws a heat map over
  the model's input crop. The arrays come from ``mucosa.inference.saliency``.
- :func:`explain_paths` (``mucosa explain``) and :func:`gallery` (the evaluation report) write the figures;
  ``mucosa explain`` keeps the heat inside the field of view found by preprocessing (``data.fov.field_mask``).
"""

from __future__ import annotations

import csv
import heapq
import logging
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mucosa import atomic
from mucosa.data.fov import field_mask, tile_boxes
from mucosa.data.preparation import Frame, iter_frames
from mucosa.data.readers import (
    IMAGE_SUFFIXES,
    VIDEO_SUFFIXES,
    FrameSelection,
    is_image,
    is_video,
    media_in,
    path_key,
)
from mucosa.errors import ConfigError, UnreadableFileError
from mucosa.inference import verdict as verdicts
from mucosa.inference.pytorch import predict_frames, resolve_device
from mucosa.inference.runtime import check_runtime, for_checkpoint
from mucosa.inference.saliency import cam_layer, feature_maps, grad_cam
from mucosa.models.checkpoint import LoadedCheckpoint, load_checkpoint
from mucosa.tables import safe_row

log = logging.getLogger(__name__)

DEFAULT_TOP = 4  # frames explained per video when neither --frames nor --top is given
OUTPUTS = ("explain.csv", "*_features_*.png", "*_gradcam.png")  # what an earlier explain run left in --out
_MIN_TILE = 32  # feature-map tiles are enlarged to at least this many pixels per side...
_MAX_TILE = 100  # ...and shrunk (area average) to at most this many (a 300 px conv1 grid stays ~600 px wide)
_GAP = 2  # white pixels between tiles


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def grid_shape(channels: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid with one tile per channel."""
    cols = math.ceil(math.sqrt(channels))
    return math.ceil(channels / cols), cols


def feature_grid(maps: np.ndarray, gap: int = 1) -> np.ndarray:
    """Channels (C, h, w) tiled row by row, each scaled to [0, 1]; NaN in gaps and unused cells."""
    c, h, w = maps.shape
    rows, cols = grid_shape(c)
    mosaic = np.full((rows * h + (rows - 1) * gap, cols * w + (cols - 1) * gap), np.nan, np.float32)
    low = maps.min(axis=(1, 2), keepdims=True)
    span = maps.max(axis=(1, 2), keepdims=True) - low
    scaled = np.where(span > 0, (maps - low) / np.where(span > 0, span, 1), 0.0)
    for k in range(c):
        r, q = divmod(k, cols)
        mosaic[r * (h + gap):r * (h + gap) + h, q * (w + gap):q * (w + gap) + w] = scaled[k]
    return mosaic


def _figure(width_px: int, height_px: int, dpi: int = 100):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_px / dpi, height_px / dpi), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def save_feature_grid(name: str, maps: np.ndarray, path: str | Path) -> Path:
    """PNG of one layer's channels (C, h, w): viridis tiles on white, titled "name (C×h×w)".

    The PNG holds exactly one viridis block per channel, separated by white: small maps are enlarged by
    whole pixels to at least 32 px per side, large ones shrunk by area averaging to at most 100 px.
    """
    from matplotlib import colormaps

    c, h, w = maps.shape
    if max(h, w) > _MAX_TILE:
        step = math.ceil(max(h, w) / _MAX_TILE)
        shrunk = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(np.ascontiguousarray(maps, np.float32)),
                                                         (math.ceil(h / step), math.ceil(w / step)))
        shown = shrunk.numpy()
    else:
        scale = max(1, math.ceil(_MIN_TILE / min(h, w)))
        shown = np.repeat(np.repeat(maps, scale, 1), scale, 2)
    mosaic = feature_grid(shown, gap=_GAP)
    rgb = colormaps["viridis"](np.nan_to_num(mosaic))[..., :3]  # (H, W, 3)
    rgb[np.isnan(mosaic)] = 1.0
    band = 30  # title band, px
    fig = _figure(rgb.shape[1], rgb.shape[0] + band)
    fig.figimage(rgb, xo=0, yo=0, origin="upper")
    fig.text(0.5, 1 - band / 2 / (rgb.shape[0] + band), f"{name} ({c}×{h}×{w})", ha="center", va="center",
             fontsize=12)
    path = Path(path)
    fig.savefig(path, dpi=100, facecolor="white")
    return path


def save_overlay(frame: np.ndarray, cam: np.ndarray, title: str, path: str | Path, subtitle: str = "Grad-CAM"
                 ) -> Path:
    """PNG with the model's input crop (left) and the heat map over it (right)."""
    fig = _figure(720, 340)
    left, right = fig.subplots(1, 2, gridspec_kw={"wspace": 0.08})
    fig.subplots_adjust(left=0.02, right=0.94, bottom=0.03, top=0.85)
    left.imshow(frame, cmap="gray", vmin=0, vmax=255 if frame.dtype == np.uint8 else 1)
    left.set_title("input crop", fontsize=10)
    right.imshow(frame, cmap="gray", vmin=0, vmax=255 if frame.dtype == np.uint8 else 1)
    shown = right.imshow(cam, cmap="jet", vmin=0, vmax=1, alpha=0.45)
    right.set_title(subtitle, fontsize=10)
    fig.colorbar(shown, ax=right, fraction=0.046, pad=0.04)
    for ax in (left, right):
        ax.set_axis_off()
    fig.suptitle(title, fontsize=11)
    path = Path(path)
    fig.savefig(path, dpi=100, facecolor="white")
    return path


# --------------------------------------------------------------------------------------------------
# Explaining files (mucosa explain)
# --------------------------------------------------------------------------------------------------


@dataclass
class ExplainedFrame:
    """One explained frame: where it came from, what the model said, and the figures written.

    A frame below the quality gate is listed with ``predicted`` = :data:`DROPPED` and no figures: the model
    is not asked about it, as everywhere else in mucosa.
    """

    input: Path
    frame: int | None  # video frame or image tile index, None for a whole image
    quality: float
    probabilities: np.ndarray | None  # (K,) per class (binary: [1 - p, p]); None when dropped
    predicted: str
    files: list[Path] = field(default_factory=list)


DROPPED = "dropped by the quality gate"


def _class_probabilities(probs: np.ndarray) -> np.ndarray:
    """predict_frames output (N,) or (N, K) -> (N, K)."""
    return np.stack([1 - probs, probs], 1) if probs.ndim == 1 else probs


def _predicted(probs: np.ndarray) -> int:
    """Class index called for one frame's (K,) probabilities (the verdict rule at threshold 0.5)."""
    return verdicts.call(probs[1] if len(probs) == 2 else probs)


def _title(checkpoint: LoadedCheckpoint, probs: np.ndarray, predicted: int, prefix: str) -> str:
    positive = checkpoint.positive
    name = checkpoint.classes[predicted]
    if positive is not None:
        return f"{prefix}predicted {name}, P({positive}) = {probs[1]:.3f}"
    return f"{prefix}predicted {name}, P({name}) = {probs[predicted]:.3f}"


def explain_frame(checkpoint: LoadedCheckpoint, frame: np.ndarray, out: Path, stem: str,
                  title_prefix: str = "", predictor=None, field: np.ndarray | None = None
                  ) -> tuple[np.ndarray, list[Path]]:
    """Write ``<stem>_features_<layer>.png`` for every layer and ``<stem>_gradcam.png`` for one uint8 frame.

    ``predictor`` (``runtime.for_checkpoint``) gives the probabilities, default the PyTorch model; feature
    maps and Grad-CAM always run the PyTorch model (they need its activations and gradients). ``field``
    (bool (S, S), ``data.fov.field_mask``) keeps the heat map inside the field of view.

    Returns:
        the (K,) class probabilities and the files written.
    """
    model = checkpoint.model
    out.mkdir(parents=True, exist_ok=True)
    files = [save_feature_grid(name, maps, out / f"{stem}_features_{name}.png")
             for name, maps in feature_maps(model, frame).items()]
    predict = predictor or (lambda frames: predict_frames(model, frames))
    probs = _class_probabilities(predict(frame[None]))[0]
    predicted = _predicted(probs)
    cam = grad_cam(model, frame, predicted, field=field)
    subtitle = f"Grad-CAM of {checkpoint.classes[predicted]} at {cam_layer(checkpoint.model)}"
    files.append(save_overlay(frame, cam, _title(checkpoint, probs, predicted, title_prefix),
                              out / f"{stem}_gradcam.png", subtitle))
    return probs, files


def _inputs(given: Sequence[str | Path], out: Path) -> list[Path]:
    """The files to explain: each image or video given, and those in each folder given (but for what an
    earlier run wrote in ``out``); each file once, however its path is spelled."""
    paths: dict[str, Path] = {}
    outputs = path_key(out) + os.sep
    for text in given:
        if not str(text).strip():
            raise UnreadableFileError("an empty path was given")
        path = Path(text)
        if path.is_dir():
            found = [p for p in media_in(path)
                     if not path_key(p).startswith(outputs)]
            if not found:
                raise UnreadableFileError(f"{path}: no images or videos in this folder")
        else:
            _check_input(path)
            found = [path]
        for file in found:
            paths.setdefault(path_key(file), file)
    return list(paths.values())


def _check_input(path: Path) -> None:
    if not path.exists():
        raise UnreadableFileError(f"{path}: not found")
    if not (is_image(path) or is_video(path)):
        known = " ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
        raise UnreadableFileError(f"{path}: not an image, a video or a folder of them (suffix "
                                  f"{path.suffix or 'none'!r}; expected one of {known})")
    if not path.is_file():
        raise UnreadableFileError(f"{path}: not a file")


def most_confident(checkpoint: LoadedCheckpoint, frames: Iterable[Frame], top: int, batch: int = 64,
                   predictor=None) -> list[Frame]:
    """The ``top`` frames with the most confident prediction (``predictor``'s, default the PyTorch model's),
    frames passing the quality gate first, in frame order; streams (only ``top + batch`` frames are held)."""
    prep = checkpoint.preprocessing
    best: list[tuple[tuple[bool, float, int], int, Frame]] = []
    predict = predictor or (lambda frames: predict_frames(checkpoint.model, frames))

    def flush(chunk: list[Frame]) -> None:
        probs = _class_probabilities(predict(np.stack([f.image for f in chunk])))
        for frame, p in zip(chunk, probs):
            item = ((bool(prep.passes(frame.quality)), float(p.max()), -frame.index), frame.index, frame)
            (heapq.heappush if len(best) < top else heapq.heappushpop)(best, item)

    chunk: list[Frame] = []
    for frame in frames:
        chunk.append(frame)
        if len(chunk) == batch:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    return [frame for _, _, frame in sorted(best, key=lambda t: t[1])]


def _unique(name: str, used: set[str]) -> str:
    """``name``, or ``name_2``, ``name_3``... where it is taken (the same file name in two folders, a still
    named like a video's frame figure)."""
    unique, n = name, 1
    while unique in used:
        n += 1
        unique = f"{name}_{n}"
    used.add(unique)
    return unique


def _explain_file(loaded: LoadedCheckpoint, path: Path, used: set[str], out: Path, selection: FrameSelection,
                  top: int | None, predictor=None) -> list[ExplainedFrame]:
    """Explain the chosen frames (or tiles) of one file; frames below the quality gate are listed only.
    ``used``: the figure names taken so far, to which this file's are added."""
    stem = _unique(path.stem, used)
    video = is_video(path)
    frames: Iterable[Frame] = iter_frames(path, loaded.preprocessing, selection if video else None)
    if not video:
        frames = list(frames)
    if top is not None and (video or len(frames) > 1):
        frames = most_confident(loaded, frames, top, predictor=predictor)
    whole_image = not video and len(frames) == 1
    unit = "frame" if video else "tile"
    results = []
    for frame in frames:
        index = None if whole_image else frame.index
        name = stem if index is None else _unique(f"{stem}_{unit[0]}{index:04d}", used)
        label = path.name if index is None else f"{path.name} {unit} {index}"
        if not loaded.preprocessing.passes(frame.quality):
            results.append(ExplainedFrame(path, index, float(frame.quality), None, DROPPED))
            continue
        probs, files = explain_frame(loaded, frame.image, out, name, title_prefix=f"{label}: ", predictor=predictor,
                                     field=_field(frame, loaded.preprocessing.tile, video))
        results.append(ExplainedFrame(path, index, float(frame.quality), probs, loaded.classes[_predicted(probs)],
                                      files))
    if not results:
        raise UnreadableFileError(f"{path}: no frames decoded for --frames {selection}")
    return results


def _field(frame: Frame, tile: int, video: bool) -> np.ndarray:
    """The part of ``frame``'s model input inside its field of view (a tile's part for a tiled image)."""
    boxes = tile_boxes(frame.fov.box, tile) if tile and not video else [frame.fov.box]
    box = boxes[frame.index] if frame.index < len(boxes) else frame.fov.box
    return field_mask(frame.fov, frame.image.shape, box)


def explain_paths(checkpoint: str | Path | LoadedCheckpoint, paths: Sequence[str | Path], out: str | Path,
                  frames: str | None = None, top: int | None = None, device: str = "auto",
                  runtime: str = "auto") -> list[ExplainedFrame]:
    """Feature-map grids and Grad-CAM overlays for images and video frames, indexed in ``out/explain.csv``.

    Args:
        checkpoint: a checkpoint file (or one already loaded); its preprocessing is applied to every input.
        paths: images (each explained), videos, and folders of them.
        out: folder for ``<stem>[_fNNNN]_features_<layer>.png``, ``<stem>[_fNNNN]_gradcam.png``, explain.csv,
            written as one set (``atomic.OutputSet``): the index and figures of an earlier explain run there
            are replaced whole, or not at all when this run fails.
        frames: video frames to consider (``every:K``, ``A-B``...; default all).
        top: per video, explain only the ``top`` most confident of those frames (default
            ``DEFAULT_TOP`` when ``frames`` is not given, else every selected frame).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        runtime: what computes the probabilities (choosing the ``top`` frames, the titles and explain.csv):
            ``auto``, ``torch`` or ``onnx`` (``runtime.open_predictor``). Feature maps and Grad-CAM always
            run the PyTorch model: they need its activations and gradients.

    Raises:
        UnreadableFileError: an input is not an image, video or folder of them, is missing or cannot be
            decoded.
        ConfigError: a bad ``frames`` or ``top``. OutputError: ``out`` cannot be written.
    """
    try:
        selection = FrameSelection.parse(frames)
    except ValueError as error:
        raise ConfigError(f"--frames: {error}") from None
    if top is not None and top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint)
    paths = _inputs(paths, Path(out))  # after the checkpoint: a folder's walk can take long
    if top is None and frames is None:
        top = DEFAULT_TOP
    out = atomic.check_writable_folder(out)
    loaded.model.to(resolve_device(device))
    predictor = for_checkpoint(loaded, check_runtime(runtime), batch_size=64, device=device)
    log.info("feature maps and Grad-CAM: pytorch fp32 on %s (they need gradients)", resolve_device(device))
    results: list[ExplainedFrame] = []
    used: set[str] = set()
    with atomic.OutputSet(out, OUTPUTS) as staged:
        for path in paths:
            results += _explain_file(loaded, path, used, staged.staging, selection, top,
                                     predictor)
        _write_index(results, loaded.classes, staged.path("explain.csv"))
    for result in results:  # where the figures are now
        result.files = [out / f.name for f in result.files]
    return results


def _write_index(results: list[ExplainedFrame], classes: list[str], path: Path) -> None:
    binary = len(classes) == 2
    probability = ["probability"] if binary else [f"probability_{c}" for c in classes]
    rows = [["input", "frame", "quality", *probability, "predicted", "files"]]
    for r in results:
        values = [] if r.probabilities is None else [r.probabilities[1]] if binary else list(r.probabilities)
        values = [f"{v:.4f}" for v in values] or [""] * len(probability)
        rows.append([str(r.input), "" if r.frame is None else r.frame, f"{r.quality:.4f}", *values, r.predicted,
                     ";".join(f.name for f in r.files)])
    with atomic.temporary_beside(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows(safe_row(row) for row in rows)


# --------------------------------------------------------------------------------------------------
# Gallery for the evaluation report
# --------------------------------------------------------------------------------------------------


def _groups(y_true: np.ndarray, y_score: np.ndarray, threshold: float | None
            ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(group name, frame positions most confident first, class index to explain per frame)."""
    if y_score.ndim == 1:  # binary: the four cells of the confusion matrix
        called = verdicts.calls(y_score, threshold).astype(bool)
        order = {True: np.argsort(-y_score, kind="stable"), False: np.argsort(y_score, kind="stable")}
        groups = []
        for name, truth, call in (("true positive", 1, True), ("true negative", 0, False),
                                  ("false positive", 0, True), ("false negative", 1, False)):
            members = order[call][((y_true == truth) & (called == call))[order[call]]]
            groups.append((name, members, np.full(len(members), int(call))))
        return groups
    predicted = y_score.argmax(1)
    order = np.argsort(-y_score.max(1), kind="stable")  # most confident first
    right = (predicted == y_true)[order]
    return [("correct", order[right], predicted[order][right]),
            ("incorrect", order[~right], predicted[order][~right])]


def gallery(checkpoint: LoadedCheckpoint, frames: np.ndarray, y_true: np.ndarray, y_score: np.ndarray,
            threshold: float | None, out_dir: str | Path, per_group: int = 3) -> list[tuple[str, Path]]:
    """Grad-CAM overlays of the most confident true/false positives and negatives (binary), or of the most
    confident correct and incorrect frames (3+ classes), each explaining the class the model called.

    Args:
        checkpoint: the evaluated model.
        frames: uint8 (N, S, S) preprocessed frames.
        y_true: (N,) true class index.
        y_score: (N,) positive-class probability, or (N, K) class probabilities.
        threshold: binary decision threshold (ignored for 3+ classes).
        out_dir: folder for the PNGs (created).
        per_group: at most this many frames per group.

    Returns:
        (group name, PNG path) pairs, groups in the order TP, TN, FP, FN (or correct, incorrect).
    """
    y_true, y_score = np.asarray(y_true).astype(np.int64), np.asarray(y_score, np.float64)
    if y_score.ndim == 1 and threshold is None:
        raise ConfigError("a binary gallery needs the decision threshold")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    chosen = []
    for name, members, targets in _groups(y_true, y_score, threshold):
        for rank, (i, target) in enumerate(zip(members[:per_group], targets[:per_group]), 1):
            cam = grad_cam(checkpoint.model, frames[i], int(target))
            probs = np.array([1 - y_score[i], y_score[i]]) if y_score.ndim == 1 else y_score[i]
            title = _title(checkpoint, probs, int(target), f"{name}: true {checkpoint.classes[y_true[i]]}, ")
            subtitle = f"Grad-CAM of {checkpoint.classes[int(target)]} at {cam_layer(checkpoint.model)}"
            path = save_overlay(np.asarray(frames[i]), cam, title,
                                out / f"{name.replace(' ', '-')}_{rank}_n{i}.png", subtitle)
            chosen.append((name, path))
    return chosen
