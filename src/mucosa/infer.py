"""Running a trained model on prepared frames: one code path for evaluate, predict and the report."""

from __future__ import annotations

import numpy as np
import torch

from mucosa.checkpoint import LoadedCheckpoint
from mucosa.data import FrameTable


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
