"""The frame embedding of every mucosa model: what the network "sees" in a frame, as a unit-length vector.

The embedding is the global average of the model's final feature map over its spatial positions (or
tokens), L2-normalised: (B, D) with D the feature map's channels (128 for the paper's two networks, the
backbone's ``num_features`` for a timm kind). For the paper's networks it is the map before their last batch
norm (Pool2's output: :meth:`FrameModel.features_and_source`): that batch norm rescales each channel for the
head, and on the real pCLE folds it made foreign inputs look familiar (``benchmarks/atlas_real.py``: white
noise, patterns and photographs were flagged unfamiliar 67-75%, 26% of the time with it, 100% without).
Frames that look alike to the model have embeddings with a high cosine similarity (their dot product), which
is what the atlas searches. It uses the trained weights as they are: nothing is added to a checkpoint.

:class:`FrameModel` is the base of every model kind (``networks.CNNLSTM``, ``networks.CNN``,
``backbones.TimmNet``), so all of them have the same :meth:`~FrameModel.embed` and
:meth:`~FrameModel.forward_and_embed` (logits and embedding from one pass, as the predictors and the ONNX
export use it).

Example:
    >>> import torch
    >>> from mucosa.models.networks import ModelConfig, create_model
    >>> model = create_model(ModelConfig(kind="cnn", size=40)).eval()
    >>> with torch.no_grad():
    ...     embedding = model.embed(torch.rand(3, 1, 40, 40))
    >>> tuple(embedding.shape), round(float(embedding[0].norm()), 4)
    ((3, 128), 1.0)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["FrameModel", "global_pool"]


def global_pool(features: torch.Tensor, channels: int) -> torch.Tensor:
    """The mean of a feature map over its spatial positions (or tokens): (B, channels).

    ``features`` is (B, C, H, W) as the paper's networks and most timm backbones give it, (B, H, W, C) or
    (B, tokens, C) as some timm backbones (Swin, ViT) give it, or already pooled (B, C).
    """
    if features.ndim == 2:
        return features
    channels_last = features.shape[1] != channels and features.shape[-1] == channels
    dims = tuple(range(1, features.ndim - 1)) if channels_last else tuple(range(2, features.ndim))
    return features.mean(dim=dims)


class FrameModel(nn.Module):
    """Base of every mucosa model: ``forward_features``, ``forward_head`` and the frame embedding.

    Attributes:
        embedding_size: D, the width of the embedding (set by the subclass).
    """

    embedding_size: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def features_and_source(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (the feature map the head reads, the map the embedding pools): the same map unless a
        model says otherwise (the paper's networks: the map before their last batch norm)."""
        features = self.forward_features(x)
        return features, features

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_in, S, S) -> logits (B, num_outputs)."""
        return self.forward_head(self.forward_features(x))

    def embedding_of(self, source: torch.Tensor) -> torch.Tensor:
        """The L2-normalised embedding (B, D) of the map :meth:`features_and_source` gives for it."""
        return F.normalize(global_pool(source, self.embedding_size), dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_in, S, S) -> frame embeddings (B, D), each of unit length."""
        return self.embedding_of(self.features_and_source(x)[1])

    def forward_and_embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (logits (B, num_outputs), embeddings (B, D)) from one pass through the network."""
        features, source = self.features_and_source(x)
        return self.forward_head(features), self.embedding_of(source)
