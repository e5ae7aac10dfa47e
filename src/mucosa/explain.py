"""What the network looks at: the paper's Fig. 3 feature maps and Grad-CAM heat maps, as arrays and figures.

- :func:`feature_maps` returns the output of every conv and pooling layer (Conv1..Pool2) for one frame, as
  the paper's "Visual analysis" shows them; :func:`save_feature_grid` tiles the channels of one layer.
- :func:`grad_cam` is Grad-CAM (Selvaraju et al. 2017) of the predicted class, or of ``target``, at
  ``conv4``: the last convolutional layer carries the most class-specific features of the network at twice
  the resolution of ``pool2`` (after it come only max-pooling, batch norm and dropout, which add no new
  features), which is the layer Grad-CAM prescribes. For the single-logit binary head the score of the
  positive class is the logit ``z`` and that of the negative class is ``-z`` (``sigmoid(-z) = 1 - p``), so
  a frame called negative is explained by the evidence *against* inflammation.
- :func:`explain_paths` (``mucosa explain``) and :func:`gallery` (the evaluation report) write the figures.

Grad-CAM is computed here in a few lines rather than with ``monai.visualize.GradCAM``: MONAI's
``ModelWithHooks`` registers forward and full-backward hooks on the model that are never removed (each
call on a checkpoint's model would leave two more), it accumulates ``.grad`` on every parameter, its default
post-processing maps the maximum to 0 (it inverts the map), and the single-logit head needs a wrapper for
the negated logit anyway. Here a temporary forward hook captures ``conv4``'s output and
``torch.autograd.grad`` differentiates the class score with respect to it alone; the map is the same as
MONAI's (tests/test_explain.py checks it).

The heat map is brought back to the input with the layer's true geometry (its "valid" convolutions and
poolings put the centre of map cell ``i`` at input pixel ``offset + stride * i``, 6.5 + 2i for conv4),
not by stretching the smaller map over the whole frame.
"""

from __future__ import annotations

import csv
import heapq
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mucosa.checkpoint import LoadedCheckpoint, load_checkpoint
from mucosa.errors import ConfigError, UnreadableFileError
from mucosa.frames import (IMAGE_SUFFIXES, VIDEO_SUFFIXES, FrameSelection, is_image, is_video, iter_video_frames,
                           read_image)
from mucosa.infer import predict_frames
from mucosa.prepare import FramePreparer, buffered_field_of_view

GRAD_CAM_LAYER = "conv4"
DEFAULT_TOP = 4  # frames explained per video when neither --frames nor --top is given
_MIN_TILE = 32  # feature-map tiles are enlarged to at least this many pixels per side...
_MAX_TILE = 100  # ...and shrunk (area average) to at most this many (a 300 px conv1 grid stays ~600 px wide)
_GAP = 2  # white pixels between tiles


# --------------------------------------------------------------------------------------------------
# Arrays
# --------------------------------------------------------------------------------------------------


def _input(model: nn.Module, image: np.ndarray) -> torch.Tensor:
    """uint8 or float (S, S) frame -> (1, 1, S, S) float tensor on the model's device."""
    image = np.asarray(image)
    size = model.config.size
    if image.shape != (size, size):
        raise ConfigError(f"the model expects a preprocessed {size}x{size} frame, got shape {image.shape}")
    x = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    param = next(model.parameters())
    return torch.from_numpy(np.ascontiguousarray(x))[None, None].to(param.device, param.dtype)


def _layer(model: nn.Module, name: str) -> nn.Module:
    layers = dict(model.feature_layers())
    if name not in layers:
        raise ConfigError(f"unknown layer {name!r}; expected one of {', '.join(layers)}")
    return layers[name]


def feature_maps(model: nn.Module, image: np.ndarray) -> dict[str, np.ndarray]:
    """Outputs of every conv and pooling layer for one frame, in forward order (the paper's Fig. 3).

    Args:
        model: a mucosa model (``feature_layers()``); run in eval mode, its mode is restored.
        image: preprocessed frame (S, S): uint8, or float in [0, 1] as the model gets it.

    Returns:
        layer name -> float32 array (C, h, w); conv layers after their ReLU.
    """
    x = _input(model, image)
    maps: dict[str, np.ndarray] = {}
    handles = [module.register_forward_hook(
        lambda mod, inputs, output, name=name: maps.__setitem__(name, output[0].float().cpu().numpy().copy()))
        for name, module in model.feature_layers()]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model.forward_features(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return maps


def layer_geometry(model: nn.Module, name: str) -> tuple[float, int]:
    """``(offset, stride)``: cell ``i`` of layer ``name`` is centred on input pixel ``offset + stride * i``."""
    offset, stride = 0.0, 1
    for layer_name, module in model.feature_layers():
        if isinstance(module, nn.Conv2d):
            offset += stride * ((module.kernel_size[0] - 1) * module.dilation[0] / 2 - module.padding[0])
            stride *= module.stride[0]
        elif isinstance(module, nn.MaxPool2d):
            kernel = module.kernel_size if isinstance(module.kernel_size, int) else module.kernel_size[0]
            step = module.stride if isinstance(module.stride, int) else module.stride[0]
            offset += stride * (kernel - 1) / 2
            stride *= step
        if layer_name == name:
            return offset, stride
    raise ConfigError(f"unknown layer {name!r}")


def upsample(cam: np.ndarray, size: int, offset: float, stride: int) -> np.ndarray:
    """Bilinear map (h, w) -> (size, size), cell centres at ``offset + stride * i``; edges held constant."""
    h, w = cam.shape
    pixels = np.arange(size, dtype=np.float64)
    rows = np.stack([np.interp((pixels - offset) / stride, np.arange(h), cam[:, j]) for j in range(w)], 1)  # (S, w)
    return np.stack([np.interp((pixels - offset) / stride, np.arange(w), row) for row in rows])  # (S, S)


def _binary(model: nn.Module) -> bool:
    return model.config.num_outputs == 1


def _scores(logits: torch.Tensor) -> torch.Tensor:
    """(1, 1) logit -> (1, 2) class scores (-z, z); (1, K) logits as they are."""
    return torch.cat([-logits, logits], 1) if logits.shape[1] == 1 else logits


def _cam(model: nn.Module, image: np.ndarray, target: int | None, layer: str) -> np.ndarray:
    """Raw Grad-CAM (h, w) of ``layer``: ReLU(sum_k alpha_k A_k), alpha_k the mean gradient of channel k."""
    module = _layer(model, layer)
    captured: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda mod, inputs, output: captured.append(output))
    was_training = model.training
    try:
        model.eval()
        # works inside no_grad/inference_mode; eval-mode cuDNN LSTMs have no backward, the native kernels do
        with torch.inference_mode(False), torch.enable_grad(), torch.backends.cudnn.flags(enabled=False):
            x = _input(model, image).requires_grad_(True)  # a graph even when the weights are frozen
            scores = _scores(model(x))  # (1, K)
            if target is None:  # the predicted class; p = 0.5 counts as positive, as at prediction
                target = int(scores[0, 1] >= scores[0, 0]) if _binary(model) else int(scores[0].argmax())
            if not 0 <= target < scores.shape[1]:
                raise ConfigError(f"target class {target} is out of range for a {scores.shape[1]}-class model")
            activation = captured[0]  # (1, C, h, w), after the ReLU
            (grad,) = torch.autograd.grad(scores[0, target], activation)
    finally:
        model.train(was_training)
        handle.remove()
    alpha = grad[0].mean(dim=(1, 2))  # (C,) global-average-pooled gradients
    cam = torch.relu((alpha[:, None, None] * activation[0]).sum(0))  # (h, w)
    return cam.detach().float().cpu().numpy()


def grad_cam(model: nn.Module, image: np.ndarray, target: int | None = None, layer: str = GRAD_CAM_LAYER
             ) -> np.ndarray:
    """Grad-CAM of the predicted class (or class index ``target``), upsampled to the input.

    Args:
        model: a mucosa model; a binary one's classes are 0 (negative, score ``-logit``) and 1 (positive).
        image: preprocessed frame (S, S): uint8, or float in [0, 1] as the model gets it.
        target: class index to explain; ``None`` explains the predicted class (p >= 0.5 for binary).
        layer: feature layer (default ``conv4``, see the module docstring).

    Returns:
        float32 (S, S) in [0, 1], scaled by its maximum (all zeros when nothing supports the class).
    """
    cam = _cam(model, image, target, layer)
    offset, stride = layer_geometry(model, layer)
    up = upsample(cam, model.config.size, offset, stride)
    peak = float(up.max())
    return (up / peak if peak > 0 else np.zeros_like(up)).astype(np.float32)


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
    """One explained frame: where it came from, what the model said, and the figures written."""

    input: Path
    frame: int | None  # video frame or image tile index, None for a whole image
    quality: float
    probabilities: np.ndarray  # (K,) per class (binary: [1 - p, p])
    predicted: str
    files: list[Path] = field(default_factory=list)


def _class_probabilities(probs: np.ndarray) -> np.ndarray:
    """predict_frames output (N,) or (N, K) -> (N, K)."""
    return np.stack([1 - probs, probs], 1) if probs.ndim == 1 else probs


def _predicted(probs: np.ndarray) -> int:
    """Class index called for one frame's (K,) probabilities (binary: positive from p = 0.5)."""
    return int(probs[1] >= 0.5) if len(probs) == 2 else int(probs.argmax())


def _title(checkpoint: LoadedCheckpoint, probs: np.ndarray, predicted: int, prefix: str) -> str:
    positive = checkpoint.positive
    name = checkpoint.classes[predicted]
    if positive is not None:
        return f"{prefix}predicted {name}, P({positive}) = {probs[1]:.3f}"
    return f"{prefix}predicted {name}, P({name}) = {probs[predicted]:.3f}"


def explain_frame(checkpoint: LoadedCheckpoint, frame: np.ndarray, out: Path, stem: str,
                  title_prefix: str = "") -> tuple[np.ndarray, list[Path]]:
    """Write ``<stem>_features_<layer>.png`` for every layer and ``<stem>_gradcam.png`` for one uint8 frame.

    Returns:
        the (K,) class probabilities and the files written.
    """
    model = checkpoint.model
    out.mkdir(parents=True, exist_ok=True)
    files = [save_feature_grid(name, maps, out / f"{stem}_features_{name}.png")
             for name, maps in feature_maps(model, frame).items()]
    probs = _class_probabilities(predict_frames(model, frame[None]))[0]
    predicted = _predicted(probs)
    cam = grad_cam(model, frame, predicted)
    subtitle = f"Grad-CAM of {checkpoint.classes[predicted]} at {GRAD_CAM_LAYER}"
    files.append(save_overlay(frame, cam, _title(checkpoint, probs, predicted, title_prefix),
                              out / f"{stem}_gradcam.png", subtitle))
    return probs, files


def _check_inputs(paths: Sequence[Path]) -> None:
    for path in paths:
        if not (is_image(path) or is_video(path)):
            known = " ".join(sorted(IMAGE_SUFFIXES | VIDEO_SUFFIXES))
            raise UnreadableFileError(f"{path}: not an image or video (suffix {path.suffix or 'none'!r}; "
                                      f"expected one of {known})")
        if not path.is_file():
            raise UnreadableFileError(f"{path}: file not found")


def _video_frames(path: Path, checkpoint: LoadedCheckpoint, selection: FrameSelection
                  ) -> Iterator[tuple[int, np.ndarray, float]]:
    """(index, uint8 (S, S), quality) of the selected frames, the field of view fixed as prepare.py does."""
    preparer = FramePreparer(checkpoint.preprocessing)
    decoded = buffered_field_of_view(preparer, iter_video_frames(path, selection, checkpoint.preprocessing.channel))
    for index, frame in decoded:
        model_frame, quality = preparer(frame)
        yield index, model_frame, quality


def most_confident(checkpoint: LoadedCheckpoint, frames: Iterable[tuple[int, np.ndarray, float]], top: int,
                   batch: int = 64) -> list[tuple[int, np.ndarray, float]]:
    """The ``top`` frames with the most confident prediction, frames passing the quality gate first,
    in frame order; streams (only ``top + batch`` frames are held)."""
    gate = checkpoint.preprocessing.quality_threshold
    best: list[tuple[tuple[bool, float, int], int, np.ndarray, float]] = []

    def flush(chunk: list[tuple[int, np.ndarray, float]]) -> None:
        probs = _class_probabilities(predict_frames(checkpoint.model, np.stack([f for _, f, _ in chunk])))
        for (index, frame, quality), p in zip(chunk, probs):
            item = ((quality >= gate, float(p.max()), -index), index, frame, quality)
            (heapq.heappush if len(best) < top else heapq.heappushpop)(best, item)

    chunk: list[tuple[int, np.ndarray, float]] = []
    for item in frames:
        chunk.append(item)
        if len(chunk) == batch:
            flush(chunk)
            chunk = []
    if chunk:
        flush(chunk)
    return sorted(((index, frame, quality) for _, index, frame, quality in best), key=lambda t: t[0])


def explain_paths(checkpoint: str | Path | LoadedCheckpoint, paths: Sequence[str | Path], out: str | Path,
                  frames: str | None = None, top: int | None = None) -> list[ExplainedFrame]:
    """Feature-map grids and Grad-CAM overlays for images and video frames, indexed in ``out/explain.csv``.

    Args:
        checkpoint: a checkpoint file (or one already loaded); its preprocessing is applied to every input.
        paths: images (each explained) and videos.
        out: folder for ``<stem>[_fNNNN]_features_<layer>.png``, ``<stem>[_fNNNN]_gradcam.png``, explain.csv.
        frames: video frames to consider (``every:K``, ``A-B``...; default all).
        top: per video, explain only the ``top`` most confident of those frames (default
            ``DEFAULT_TOP`` when ``frames`` is not given, else every selected frame).

    Raises:
        UnreadableFileError: an input is not an image or video, is missing or cannot be decoded.
        ConfigError: a bad ``frames`` or ``top``.
    """
    paths = [Path(p) for p in paths]
    _check_inputs(paths)
    try:
        selection = FrameSelection.parse(frames)
    except ValueError as error:
        raise ConfigError(f"--frames: {error}") from None
    if top is not None and top < 1:
        raise ConfigError(f"--top must be at least 1, got {top}")
    if top is None and frames is None:
        top = DEFAULT_TOP
    loaded = checkpoint if isinstance(checkpoint, LoadedCheckpoint) else load_checkpoint(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[ExplainedFrame] = []
    stems: set[str] = set()
    for path in paths:
        stem, n = path.stem, 1
        while stem in stems:  # the same name in two folders
            n += 1
            stem = f"{path.stem}_{n}"
        stems.add(stem)
        if is_video(path):
            chosen: Iterable[tuple[int, np.ndarray, float]] = _video_frames(path, loaded, selection)
            if top is not None:
                chosen = most_confident(loaded, chosen, top)
        else:  # the whole image, or each of its tiles (preprocessing.tile)
            preparer = FramePreparer(loaded.preprocessing, still=True)
            parts = preparer.still(read_image(path, loaded.preprocessing.channel))
            chosen = [(None if len(parts) == 1 else k, *part) for k, part in enumerate(parts)]
            if top is not None and len(parts) > 1:
                chosen = most_confident(loaded, chosen, top)
        count = 0
        unit = "frame" if is_video(path) else "tile"
        for index, frame, quality in chosen:
            name = stem if index is None else f"{stem}_{unit[0]}{index:04d}"
            label = path.name if index is None else f"{path.name} {unit} {index}"
            probs, files = explain_frame(loaded, frame, out, name, title_prefix=f"{label}: ")
            results.append(ExplainedFrame(path, index, float(quality), probs, loaded.classes[_predicted(probs)],
                                          files))
            count += 1
        if count == 0:
            raise UnreadableFileError(f"{path}: no frames decoded for --frames {selection}")
    _write_index(results, loaded.classes, out / "explain.csv")
    return results


def _write_index(results: list[ExplainedFrame], classes: list[str], path: Path) -> None:
    binary = len(classes) == 2
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        probability = ["probability"] if binary else [f"probability_{c}" for c in classes]
        writer.writerow(["input", "frame", "quality", *probability, "predicted", "files"])
        for r in results:
            values = [r.probabilities[1]] if binary else list(r.probabilities)
            writer.writerow([str(r.input), "" if r.frame is None else r.frame, f"{r.quality:.4f}",
                             *(f"{v:.4f}" for v in values), r.predicted, ";".join(f.name for f in r.files)])


# --------------------------------------------------------------------------------------------------
# Gallery for the evaluation report
# --------------------------------------------------------------------------------------------------


def _groups(y_true: np.ndarray, y_score: np.ndarray, threshold: float | None
            ) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(group name, frame positions most confident first, class index to explain per frame)."""
    if y_score.ndim == 1:  # binary: the four cells of the confusion matrix
        called = y_score >= threshold
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
            subtitle = f"Grad-CAM of {checkpoint.classes[int(target)]} at {GRAD_CAM_LAYER}"
            path = save_overlay(np.asarray(frames[i]), cam, title,
                                out / f"{name.replace(' ', '-')}_{rank}_n{i}.png", subtitle)
            chosen.append((name, path))
    return chosen
