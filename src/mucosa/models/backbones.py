"""Modern backbones from timm (model kinds ``timm:NAME``, e.g. ``timm:resnet18``) behind mucosa's model interface.

:class:`TimmNet` wraps ``timm.create_model(NAME, in_chans=1, num_classes=...)`` so that it behaves like the
paper's two networks (:mod:`mucosa.models.networks`): ``forward_features`` (images -> feature map),
``forward_head(f, pre_logits=...)``, ``embed`` (the frame embedding), ``config``, ``num_outputs``, the per-image
standardisation of ``model.input_norm``, a Grad-CAM layer (``features``: the final feature map, see
:meth:`TimmNet.cam_geometry`) and plain ``state_dict`` checkpoints, so training, checkpoints, ONNX export,
``predict`` and ``stream`` use it unchanged. A checkpoint names the kind, size and channel count, which is all
it takes to rebuild the network without downloading anything (the checkpoint's weights replace ImageNet's).

timm is an optional extra (``pip install 'mucosa[timm]'``), imported only when a timm kind is built. timm
imports torchvision, which fails beside a PyTorch build it was not made for; either failure is one clear
line (:class:`BackboneError`). ``model.pretrained: true`` asks timm for ImageNet weights (from the Hugging
Face hub or its cache); where they cannot be fetched, that is one clear line too.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from mucosa.errors import ConfigError, MucosaError, first_line
from mucosa.models.embedding import FrameModel

TIMM = "timm:"  # model kinds "timm:NAME" are timm backbones, e.g. timm:resnet18
TIMM_MIN_SIZE = 32  # their total stride: smaller inputs leave no feature map
INSTALL_HINT = "pip install 'mucosa[timm]'"


class BackboneError(MucosaError):
    """timm cannot be imported, or the ImageNet weights of a backbone cannot be loaded."""


def import_timm():
    """The ``timm`` module, or a BackboneError naming why it cannot be imported and what to do."""
    try:
        return importlib.import_module("timm")
    except ModuleNotFoundError as error:
        if error.name == "timm":
            raise BackboneError(f"model kinds timm:NAME need timm, which is not installed: {INSTALL_HINT}") from None
        cause = error
    except Exception as error:  # e.g. RuntimeError "operator torchvision::nms does not exist"
        cause = error
    hint = ("install torch and torchvision of matching versions" if "torchvision" in str(cause)
            else f"reinstall it ({INSTALL_HINT})")
    raise BackboneError(f"timm could not be imported ({first_line(cause)}): {hint}") from None


def _build(timm, name: str, config, pretrained: bool) -> nn.Module:
    """``timm.create_model`` with one clear error for an unknown name, a failed build or failed weights."""
    is_model = getattr(timm, "is_model", None)
    if callable(is_model) and not is_model(name):
        raise ConfigError(f"model.kind: timm has no model {name!r} (timm.list_models() lists them)")
    try:
        return timm.create_model(name, pretrained=pretrained, in_chans=config.in_channels,
                                 num_classes=config.num_outputs)
    except Exception as error:
        if "unknown model" in str(error).lower():
            raise ConfigError(f"model.kind: timm has no model {name!r} (timm.list_models() lists them)") from None
        if pretrained:
            raise BackboneError(f"model.pretrained: the ImageNet weights of {name} could not be loaded "
                                f"({first_line(error)}): this machine may not reach the Hugging Face hub; "
                                "fill timm's cache on a connected machine, or set model.pretrained: false") from None
        raise ConfigError(f"model.kind: timm could not build {name!r} ({first_line(error)})") from None


class TimmNet(FrameModel):
    """A timm backbone with mucosa's interface (see the module docstring); ``config`` is a ``ModelConfig``.
    Its frame embedding (``embed``, :mod:`mucosa.models.embedding`) has ``num_features`` values."""

    grad_cam_layer = "features"

    def __init__(self, config, pretrained: bool = False) -> None:
        super().__init__()
        if not config.kind.startswith(TIMM):
            raise ConfigError(f"model config has kind {config.kind!r} but a timm backbone was built")
        self.config, self.kind, self.num_outputs = config, config.kind, config.num_outputs
        self.body = _build(import_timm(), config.kind.removeprefix(TIMM), config, pretrained)
        self.features = nn.Identity()  # the final feature map passes here: the Grad-CAM layer
        self.num_features = self.embedding_size = int(getattr(self.body, "num_features", 0))

    def feature_layers(self) -> list[tuple[str, nn.Module]]:
        """The layers whose outputs ``explain`` shows: the final feature map only."""
        return [("features", self.features)]

    def cam_geometry(self, name: str, side: int) -> tuple[float, float]:
        """``(offset, stride)`` of a feature map of ``side`` cells: timm's "same"-padded stages tile the input, so
        cell ``i`` covers ``stride`` pixels from ``stride * i`` and is centred on ``(stride - 1) / 2`` past that."""
        if name != "features":
            raise ConfigError(f"unknown layer {name!r}; expected features")
        stride = self.config.size / max(side, 1)
        return (stride - 1) / 2, stride

    def _check_input(self, x: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s) or not x.is_floating_point():
            raise ConfigError(f"the {self.kind} model expects a float input of shape (B, {c}, {s}, {s}), "
                              f"got {x.dtype} {tuple(x.shape)}")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_in, S, S) -> the backbone's final feature map (B, num_features, h, w)."""
        self._check_input(x)
        if self.config.input_norm == "image":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / (std + 1e-3)
        return self.features(self.body.forward_features(x))

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map -> logits (B, num_outputs), or the pooled features with ``pre_logits``."""
        return self.body.forward_head(f, pre_logits=pre_logits)
