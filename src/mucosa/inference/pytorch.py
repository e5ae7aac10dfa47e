"""Running a trained model on prepared frames, on any device: one code path for evaluate, predict, stream
and the Python API.

Example:
    >>> import numpy as np
    >>> from mucosa.inference.pytorch import predict_and_embed_frames, predict_frames, resolve_device
    >>> from mucosa.models.networks import ModelConfig, create_model
    >>> model = create_model(ModelConfig(kind="cnn", size=40))
    >>> predict_frames(model, np.zeros((3, 40, 40), np.uint8)).shape
    (3,)
    >>> [a.shape for a in predict_and_embed_frames(model, np.zeros((3, 40, 40), np.uint8))]  # and embeddings
    [(3,), (3, 128)]
    >>> resolve_device("cpu")
    device(type='cpu')
"""

from __future__ import annotations

import numpy as np
import torch

from mucosa.data.frame_table import FrameTable
from mucosa.errors import ConfigError
from mucosa.models.checkpoint import LoadedCheckpoint
from mucosa.models.networks import embedding_size


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` (the first CUDA GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N``.

    Raises:
        ConfigError: an unknown name, or a CUDA device that this machine does not have.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        chosen = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device {device!r} must be auto, cpu, cuda or cuda:N") from None
    if chosen.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r} must be auto, cpu, cuda or cuda:N")
    if chosen.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (chosen.index or 0) >= count:
            raise ConfigError(f"device {device!r}: this machine has {count} CUDA device(s)"
                              + ("" if count else " (PyTorch sees no GPU); use --device cpu or auto"))
    return chosen


def model_device(model: torch.nn.Module) -> torch.device:
    """The device a model's weights are on."""
    return next(model.parameters()).device


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1) logits → (B,) positive-class probability; (B, K) → (B, K) softmax."""
    return torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else logits.softmax(-1)


def _inputs(frames: np.ndarray, batch_size: int, device: torch.device):
    """uint8 frames (N, S, S) → model inputs (B, 1, S, S) in [0, 1], channels-last on ``device``, batch by batch."""
    for start in range(0, len(frames), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(frames[start:start + batch_size], dtype=np.float32) / 255.0)
        yield batch[:, None].to(device).contiguous(memory_format=torch.channels_last)


def _no_probabilities(model: torch.nn.Module) -> np.ndarray:
    classes = getattr(model, "num_outputs", 1)
    return np.zeros((0,) if classes == 1 else (0, classes), np.float32)


@torch.inference_mode()
def predict_frames(model: torch.nn.Module, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities for uint8 frames (N, S, S): (N,) for a binary model, (N, K) otherwise."""
    model.eval()
    out = [probabilities(model(x)).float().cpu().numpy() for x in _inputs(frames, batch_size, model_device(model))]
    return np.concatenate(out) if out else _no_probabilities(model)


@torch.inference_mode()
def predict_and_embed_frames(model: torch.nn.Module, frames: np.ndarray, batch_size: int = 64
                             ) -> tuple[np.ndarray, np.ndarray]:
    """:func:`predict_frames`'s probabilities and the frame embeddings (N, D) float32, unit length
    (``model.embed``), from one forward pass per batch."""
    model.eval()
    probs, embeddings = [], []
    for x in _inputs(frames, batch_size, model_device(model)):
        logits, embedding = model.forward_and_embed(x)
        probs.append(probabilities(logits).float().cpu().numpy())
        embeddings.append(embedding.float().cpu().numpy())
    if not probs:
        return _no_probabilities(model), np.zeros((0, embedding_size(model)), np.float32)
    return np.concatenate(probs), np.concatenate(embeddings)


def predict_table(checkpoint: LoadedCheckpoint, table: FrameTable, batch_size: int = 64) -> np.ndarray:
    """Probabilities for every kept frame of a FrameTable, in table order."""
    model = checkpoint.model.to(memory_format=torch.channels_last)
    chunks = []
    for start in range(0, len(table), 1024):  # read frames from the cache a chunk at a time
        stop = min(start + 1024, len(table))
        frames = np.stack([table.frame(i) for i in range(start, stop)])
        chunks.append(predict_frames(model, frames, batch_size))
    return np.concatenate(chunks) if chunks else predict_frames(model, np.zeros((0, 1, 1), np.uint8))


# --------------------------------------------------------------------------------------------------
# Deployment: an inference-only copy of the model, and one predictor interface for PyTorch and ONNX
# --------------------------------------------------------------------------------------------------


def _bn_affine(bn: torch.nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation-mode batch norm as ``y = a * x + b`` per channel; returns (a, b)."""
    a = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return a, bn.bias - a * bn.running_mean


@torch.no_grad()
def fold_batchnorm(model: torch.nn.Module) -> torch.nn.Module:
    """An evaluation-mode copy of a mucosa model with both batch norms folded into the layer after them.

    BN1 (after Pool1) is folded into Conv3: with "valid" padding every input pixel of Conv3 is a scaled and
    shifted pixel, so ``conv3(a * x + b) == conv3'(x)`` exactly. BN2 (after Pool2) is folded into FC1, whose
    input features are the feature map's pixels in channels-last order (channel fastest). Dropout is the
    identity in evaluation, so the copy computes the same function with two fewer passes over memory. The frame
    embedding pools the map before BN2 (``models.embedding``), which folding does not change.
    """
    import copy

    folded = copy.deepcopy(model).eval()
    if not all(isinstance(getattr(folded, name, None), torch.nn.BatchNorm2d) for name in ("bn1", "bn2")):
        return folded  # a timm backbone: its batch norms are left as they are (ONNX Runtime fuses them itself)
    a, b = _bn_affine(folded.bn1)
    weight = folded.conv3.weight  # (64, 32, 3, 3)
    folded.conv3.bias += (weight * b[None, :, None, None]).sum((1, 2, 3))
    weight.mul_(a[None, :, None, None])
    a, b = _bn_affine(folded.bn2)
    weight = folded.fc1.weight  # (128, features), features = (..., C) with C = 128 fastest
    repeats = weight.shape[1] // a.numel()
    folded.fc1.bias += weight @ b.repeat(repeats)
    weight.mul_(a.repeat(repeats)[None])
    folded.bn1, folded.bn2 = torch.nn.Identity(), torch.nn.Identity()
    return folded


class TorchPredictor:
    """Probabilities from a checkpoint's model with mucosa's fastest PyTorch settings.

    Batch norms folded (:func:`fold_batchnorm`), channels-last memory, ``inference_mode``; the results equal
    :func:`predict_table`'s (and so ``evaluate``'s) up to float rounding.
    """

    runtime = "torch"

    def __init__(self, checkpoint: LoadedCheckpoint, batch_size: int = 16, threads: int | None = None,
                 device: str | torch.device = "auto") -> None:
        if threads:
            torch.set_num_threads(threads)  # process-wide, as PyTorch has one intra-op pool
        self.device = resolve_device(device)
        self.checkpoint = checkpoint
        self.classes = checkpoint.classes
        self.preprocessing = checkpoint.preprocessing
        self.batch_size = batch_size
        self.model = fold_batchnorm(checkpoint.model).to(self.device, memory_format=torch.channels_last)
        self.embedding_size = embedding_size(self.model)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames (N, S, S) → (N,) positive probability, or (N, K)."""
        return predict_frames(self.model, frames, self.batch_size)

    def predict_and_embed(self, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 frames (N, S, S) → (the probabilities of ``__call__``, frame embeddings (N, D) float32), from one
        forward pass per batch."""
        return predict_and_embed_frames(self.model, frames, self.batch_size)
