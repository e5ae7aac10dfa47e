"""Running a trained model on prepared frames: one code path for evaluate, predict and the report."""

from __future__ import annotations

import numpy as np
import torch

from mucosa.data.table import FrameTable
from mucosa.models.checkpoint import LoadedCheckpoint


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """(B, 1) logits → (B,) positive-class probability; (B, K) → (B, K) softmax."""
    return torch.sigmoid(logits[:, 0]) if logits.shape[1] == 1 else logits.softmax(-1)


@torch.inference_mode()
def predict_frames(model: torch.nn.Module, frames: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Probabilities for uint8 frames (N, S, S): (N,) for a binary model, (N, K) otherwise."""
    model.eval()
    out = []
    for start in range(0, len(frames), batch_size):
        batch = torch.from_numpy(np.ascontiguousarray(frames[start:start + batch_size], dtype=np.float32) / 255.0)
        x = batch[:, None].contiguous(memory_format=torch.channels_last)  # (B, 1, S, S)
        out.append(probabilities(model(x)).float().numpy())
    if out:
        return np.concatenate(out)
    classes = getattr(model, "num_outputs", 1)
    return np.zeros((0,) if classes == 1 else (0, classes), np.float32)


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
    identity in evaluation, so the copy computes the same function with two fewer passes over memory.
    """
    import copy

    folded = copy.deepcopy(model).eval()
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

    def __init__(self, checkpoint: LoadedCheckpoint, batch_size: int = 16, threads: int | None = None) -> None:
        if threads:
            torch.set_num_threads(threads)  # process-wide, as PyTorch has one intra-op pool
        self.checkpoint = checkpoint
        self.classes = checkpoint.classes
        self.preprocessing = checkpoint.preprocessing
        self.batch_size = batch_size
        self.model = fold_batchnorm(checkpoint.model).to(memory_format=torch.channels_last)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """uint8 frames (N, S, S) → (N,) positive probability, or (N, K)."""
        return predict_frames(self.model, frames, self.batch_size)
