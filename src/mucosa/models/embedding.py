"""The frame embedding of every mucosa model: what the network "sees" in a frame, as a unit-length vector.

The embedding is the global average of the model's final feature map (``forward_features``) over its spatial
positions, L2-normalised: (B, D) with D the feature map's channels (128 for the paper's two networks, the
backbone's ``num_features`` for a timm kind). Frames that look alike to the model have embeddings with a
high cosine similarity (their dot product), which is what the atlas searches. It uses the trained weights as
they are: nothing is added to a checkpoint.

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
        pooled_norm: None, or a module applied to the pooled features before normalising: the affine map
            of a batch norm that ``inference.pytorch.fold_batchnorm`` moved out of the feature map.
    """

    embedding_size: int

    def __init__(self) -> None:
        super().__init__()
        self.pooled_norm: nn.Module | None = None  # not a layer of the model: checkpoints are unchanged

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_in, S, S) -> logits (B, num_outputs)."""
        return self.forward_head(self.forward_features(x))

    def embedding_of(self, features: torch.Tensor) -> torch.Tensor:
        """The L2-normalised embedding (B, D) of a feature map from :meth:`forward_features`."""
        pooled = global_pool(features, self.embedding_size)
        return F.normalize(pooled if self.pooled_norm is None else self.pooled_norm(pooled), dim=1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_in, S, S) -> frame embeddings (B, D), each of unit length."""
        return self.embedding_of(self.forward_features(x))

    def forward_and_embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images -> (logits (B, num_outputs), embeddings (B, D)) from one pass through the network."""
        features = self.forward_features(x)
        return self.forward_head(features), self.embedding_of(features)
