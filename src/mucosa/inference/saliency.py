"""What the network looks at, as arrays: the paper's Fig. 3 feature maps and Grad-CAM heat maps.

- :func:`feature_maps` returns the output of every conv and pooling layer (Conv1..Pool2) for one frame, as
  the paper's "Visual analysis" shows them.
- :func:`grad_cam` is Grad-CAM (Selvaraju et al. 2017) of the predicted class, or of ``target``, at
  ``conv4``: the last convolutional layer carries the most class-specific features of the network at twice
  the resolution of ``pool2`` (after it come only max-pooling, batch norm and dropout, which add no new
  features), which is the layer Grad-CAM prescribes. For the single-logit binary head the score of the
  positive class is the logit ``z`` and that of the negative class is ``-z`` (``sigmoid(-z) = 1 - p``), so
  a frame called negative is explained by the evidence *against* inflammation.

Grad-CAM is computed here in a few lines rather than with ``monai.visualize.GradCAM``: MONAI's
``ModelWithHooks`` registers forward and full-backward hooks on the model that are never removed (each
call on a checkpoint's model would leave two more), it accumulates ``.grad`` on every parameter, its default
post-processing maps the maximum to 0 (it inverts the map), and the single-logit head needs a wrapper for
the negated logit anyway. Here a temporary forward hook captures ``conv4``'s output and
``torch.autograd.grad`` differentiates the class score with respect to it alone; the map is the same as
MONAI's (tests check it).

The heat map is brought back to the input with the layer's true geometry (its "valid" convolutions and
poolings put the centre of map cell ``i`` at input pixel ``offset + stride * i``, 6.5 + 2i for conv4),
not by stretching the smaller map over the whole frame. The figures are drawn by
``mucosa.evaluation.explain``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from mucosa.errors import ConfigError

__all__ = ["GRAD_CAM_LAYER", "cam_layer", "feature_maps", "grad_cam", "layer_geometry", "upsample"]

GRAD_CAM_LAYER = "conv4"


def cam_layer(model: nn.Module) -> str:
    """The model's Grad-CAM layer: ``conv4`` for the paper's networks, ``features`` for timm backbones."""
    return getattr(model, "grad_cam_layer", GRAD_CAM_LAYER)


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


def upsample(cam: np.ndarray, size: int, offset: float, stride: float) -> np.ndarray:
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


def grad_cam(model: nn.Module, image: np.ndarray, target: int | None = None, layer: str | None = None,
             field: np.ndarray | None = None) -> np.ndarray:
    """Grad-CAM of the predicted class (or class index ``target``), upsampled to the input.

    Args:
        model: a mucosa model; a binary one's classes are 0 (negative, score ``-logit``) and 1 (positive).
        image: preprocessed frame (S, S): uint8, or float in [0, 1] as the model gets it.
        target: class index to explain; ``None`` explains the predicted class (p >= 0.5 for binary).
        layer: feature layer (default :func:`cam_layer`: ``conv4``, see the module docstring).
        field: bool (S, S), the part of the frame inside the field of view (``data.fov.field_mask``): the
            heat outside it is set to 0 before scaling, so black corners outside a circular field never
            show heat, nor set the scale of the heat on the tissue.

    Returns:
        float32 (S, S) in [0, 1], scaled by its maximum (all zeros when nothing supports the class).
    """
    layer = layer or cam_layer(model)
    size = model.config.size
    if field is not None and np.shape(field) != (size, size):
        raise ConfigError(f"the field-of-view mask must be {size}x{size}, got shape {np.shape(field)}")
    cam = _cam(model, image, target, layer)
    if hasattr(model, "cam_geometry"):  # timm backbones: "same" padding, stride from the map's side
        offset, stride = model.cam_geometry(layer, cam.shape[0])
    else:
        offset, stride = layer_geometry(model, layer)
    up = upsample(cam, size, offset, stride)
    if field is not None:
        up = np.where(field, up, 0.0)
    peak = float(up.max())
    return (up / peak if peak > 0 else np.zeros_like(up)).astype(np.float32)
