"""The paper's two classifiers: the CNN-LSTM (Table I, Fig. 2) and the CNN it is compared with (Table III).

Layer map (Table I column -> attribute; shapes for the paper's 300x300 grayscale input, batch B):

    input                                   x        (B, 1, 300, 300)
    Conv1    3x3,  32 ch, ReLU              conv1    (B, 32, 298, 298)
    Conv2    3x3,  32 ch, ReLU              conv2    (B, 32, 296, 296)
    Pool1    2x2 max                        pool1    (B, 32, 148, 148)
             batch norm 1                   bn1
             dropout 1 (conv_dropout)       drop1
    Conv3    3x3,  64 ch, ReLU              conv3    (B, 64, 146, 146)
    Conv4    3x3, 128 ch, ReLU              conv4    (B, 128, 144, 144)
    Pool2    2x2 max                        pool2    (B, 128, 72, 72)   <- forward_features
             batch norm 2                   bn2
             dropout 2 (conv_dropout)       drop2
    CNN-LSTM head:
             rows -> sequence               rows     (B, 72, 72*128)    72 steps of W*C features
    FC1      Dense 128 per row, ReLU        fc1      (B, 72, 128)       Keras TimeDistributed(Dense)
             dropout 3 (dense_dropout)      drop3
    LSTM     100 units, last hidden state   lstm     (B, 100)
    FC2      Dense 50, ReLU                 fc2      (B, 50)
             dropout 4 (dense_dropout)      drop4
    FC3      Dense num_outputs (logits)     fc3      (B, 1)
    CNN head (no LSTM):
             flatten                        flatten  (B, 72*72*128)
    FC1      Dense 128, ReLU                fc1      (B, 128)           ~85M weights at 300x300
             dropout 3, FC2 + dropout 4, FC3 exactly as above

Choices where the paper is silent or ambiguous (it says "Keras defaults" nowhere, but was written in Keras,
so Keras defaults are taken whenever nothing else is stated):

- Padding is "valid" (Keras' Conv2D default), so every 3x3 conv trims 2 pixels and pooling floors odd sides
  (300 -> 298 -> 296 -> 148 -> 146 -> 144 -> 72). Table I gives no padding; "same" padding would not change
  the layer list, only the sizes, and nothing in the paper hints at it.
- Order inside each block: Conv -> ReLU -> Conv -> ReLU -> MaxPool -> BatchNorm -> Dropout. This gives the
  counted "4 convolutional, 2 max-pooling, 2 batch normalization and 4 dropout layers" with the two remaining
  dropouts after FC1 and FC2 (Fig. 2 is not legible enough to say more).
- Dropout rates 0.25 after the conv blocks and 0.5 after dense layers (the classic Keras example values);
  the paper gives none, so both are config fields.
- ReLU after every conv and dense layer except the last. The conv/dense modules apply the ReLU themselves
  (:class:`Conv2dReLU`, :class:`LinearReLU`, like Keras' ``activation="relu"``), so a forward hook on
  ``conv4`` sees the activated map, as Keras' ``layer.output`` would (feature maps, Grad-CAM).
- "Each row of the feature matrix is a basic unit while the number of rows is the length of a sequence":
  the H' rows of the final (H', W', C) feature map become H' time steps of W'*C features, flattened in
  Keras' channels-last order (C fastest), and FC1 (128 channels, before the LSTM in Table I) is applied to
  each step. The LSTM returns its last hidden state (Keras ``return_sequences=False``).
- The last layer outputs logits; the sigmoid (one output for two classes) or softmax (``num_classes > 2``)
  is applied by the loss and at prediction, not inside the model.
- BatchNorm uses Keras' eps=1e-3. Its running statistics update with ``bn_momentum`` (PyTorch convention):
  0.1 by default, because Keras' 0.99 (``bn_momentum=0.01``, set in configs/paper.yaml) leaves the running
  statistics near their initial values after the few hundred steps of a short run, and evaluation-mode
  outputs are then wrong; over the paper's 200 epochs of 318 steps either converges.
- Input: ``input_norm="image"`` (default) standardises each image to zero mean and unit variance inside
  the model, so predictions do not depend on the laser power and detector gain of an examination (and
  export, predict and stream get it for free); ``"none"`` feeds the [0, 1] pixels as the paper's Keras
  pipeline presumably did (configs/paper.yaml).
- Initialisation: ``init="keras"`` (default) reproduces Keras' defaults: glorot_uniform kernels, zero
  biases, orthogonal LSTM recurrent kernel and forget-gate bias 1 (``unit_forget_bias``); ``init="torch"``
  keeps PyTorch's defaults (kaiming-uniform).
- Parameter counts differ from a Keras summary in two places: PyTorch's LSTM has two bias vectors
  (4*100 extra parameters) and Keras also counts BatchNorm's moving mean/variance (buffers here).

Memory format: the forward works with ``channels_last`` models and inputs. The row-sequence and flatten
steps permute to (B, H, W, C) before reshaping, which is a free view for channels_last tensors and the same
element order Keras uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError
from torch import nn

from mucosa.errors import ConfigError
from mucosa.models.backbones import TIMM, TIMM_MIN_SIZE, TimmNet
from mucosa.models.embedding import FrameModel
from mucosa.settings import Bool, Float, Int, Settings

KINDS = ("cnn-lstm", "cnn")  # and timm:NAME, the timm backbones of mucosa.models.backbones
INITS = ("keras", "torch")


def check_kind(kind: str) -> str:
    """``kind`` when it names a model: cnn-lstm, cnn, or timm:NAME (a timm backbone, e.g. timm:resnet18).

    Raises:
        ConfigError: any other name, e.g. ``resnet``.
    """
    name = kind.removeprefix(TIMM)
    if kind in KINDS or (kind.startswith(TIMM) and name and all(c.isalnum() or c in "_.-" for c in name)):
        return kind
    raise ConfigError(f"expected one of cnn-lstm, cnn, timm:NAME (a timm backbone, e.g. timm:resnet18), got "
                      f"{repr(kind)[:80]}")


class ModelConfig(Settings):
    """Hyper-parameters of both models (checked on creation; ``to_dict()`` gives plain values)."""

    SECTION: ClassVar[str] = "model"

    kind: str = "cnn-lstm"  # cnn-lstm, cnn, or timm:NAME (a timm backbone, e.g. timm:resnet18)
    size: Int = 300  # input height = width
    num_classes: Int = Field(2, ge=2)  # 2 -> one logit (sigmoid); >2 -> num_classes logits (softmax)
    conv_dropout: Float = Field(0.25, ge=0.0, lt=1.0)
    dense_dropout: Float = Field(0.5, ge=0.0, lt=1.0)
    lstm_units: Int = Field(100, ge=1)
    in_channels: Int = Field(1, ge=1)  # grayscale CLE frames
    init: Literal[INITS] = "keras"  # "keras" (glorot_uniform etc.) or "torch" (PyTorch defaults)
    bn_momentum: Float = Field(0.1, ge=0.0, le=1.0)  # PyTorch convention; Keras' 0.99 is 0.01 (paper.yaml)
    input_norm: Literal["image", "none"] = "image"  # "image": standardise each image; "none": as given
    pretrained: Bool = False  # timm kinds: start from ImageNet weights (downloaded by timm)

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        try:
            return check_kind(kind)
        except ConfigError as error:
            raise PydanticCustomError("mucosa", "{problem}", {"problem": str(error)}) from None

    @field_validator("size")
    @classmethod
    def _large_enough(cls, size: int, info: ValidationInfo) -> int:
        minimum = TIMM_MIN_SIZE if str(info.data.get("kind", "")).startswith(TIMM) else min_input_size()
        if size < minimum:
            raise PydanticCustomError("mucosa", "input size {size}x{size} is too small for the network: the minimum "
                                      "is {minimum}x{minimum}", {"size": size, "minimum": minimum})
        return size

    @property
    def num_outputs(self) -> int:
        """Width of the last layer: 1 for a binary (sigmoid) head, ``num_classes`` otherwise."""
        return 1 if self.num_classes == 2 else self.num_classes


class Conv2dReLU(nn.Conv2d):
    """3x3 "valid" convolution followed by ReLU (Keras ``Conv2D(activation="relu")``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x), inplace=True)


class LinearReLU(nn.Linear):
    """Dense layer followed by ReLU (Keras ``Dense(activation="relu")``); works on (..., features)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(super().forward(x), inplace=True)


class _MaskedScale(torch.autograd.Function):
    """``x * keep * scale`` with the boolean mask saved (1 byte per element) for the backward pass."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, keep: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return (x * keep).mul_(scale)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return (grad * keep).mul_(ctx.scale), None, None


class FastDropout(nn.Dropout):
    """``nn.Dropout`` whose training mask is drawn faster on CPU (about 3x for the conv-block dropouts).

    PyTorch's CPU ``bernoulli_`` draws one Mersenne-Twister number per element on one thread (its vectorised
    MKL path is taken only on Intel CPUs), which made dropout ~10% of a 300x300 training step on AMD. Here the
    mask comes from NumPy's PCG64 as 16-bit uniforms, seeded from the torch generator (so ``torch.manual_seed``
    / ``seed_everything`` still make runs repeatable), and is laid out like ``x`` (channels_last stays free).
    The drop probability is ``p`` rounded to a multiple of 1/65536 (exact for 0.25 and 0.5) and kept values
    are scaled by 1 / (1 - that probability), so the layer stays unbiased. Other devices, ``inplace=True`` and
    inputs neither contiguous nor channels_last use ``nn.Dropout`` itself; evaluation mode is the identity as usual.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.inplace or x.device.type != "cpu":
            return super().forward(x)
        drop = round(self.p * 65536)  # dropped share of the 65536 16-bit values
        dense = x.is_contiguous() or (x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last))
        if not 0 < drop < 65536 or not dense:
            return super().forward(x)
        seed = int(torch.randint(0, 2**62, ()))
        bits = np.random.Generator(np.random.PCG64(seed)).integers(0, 65536, x.numel(), dtype=np.uint16)
        # Viewed as int16 the values stay uniform (over -32768..32767): exactly 65536 - drop are >= drop - 32768.
        keep = torch.from_numpy(bits.view(np.int16)).as_strided(x.shape, x.stride()) >= drop - 32768
        return _MaskedScale.apply(x, keep, 65536 / (65536 - drop))


class RowSequence(nn.Module):
    """Feature map (B, C, H, W) -> sequence of its rows (B, H, W*C), channels fastest as in Keras."""

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f.permute(0, 2, 3, 1).flatten(2)  # a view when f is channels_last


class FlattenHWC(nn.Module):
    """Feature map (B, C, H, W) -> (B, H*W*C) in Keras' channels-last ``Flatten`` order."""

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f.permute(0, 2, 3, 1).flatten(1)  # a view when f is channels_last


class LastHiddenLSTM(nn.LSTM):
    """Single-layer batch-first LSTM returning the last hidden state (B, hidden_size)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        _, (h, _) = super().forward(x)  # h: (num_layers, B, hidden)
        return h[-1]


def feature_size(size: int) -> int:
    """Side of the conv stack's output map for a ``size`` x ``size`` input (0 when too small)."""
    s = size - 2 - 2  # conv1, conv2 ("valid" 3x3)
    s = s // 2  # pool1
    s = s - 2 - 2  # conv3, conv4
    s = s // 2  # pool2
    return max(s, 0)


def min_input_size(config: ModelConfig | None = None) -> int:
    """Smallest input side the network accepts (the architecture is the same for both kinds)."""
    size = 1
    while feature_size(size) < 1:
        size += 1
    return size


def _check_config(config: ModelConfig, kind: str) -> None:
    if config.kind != kind:
        raise ConfigError(f"model config has kind {config.kind!r} but a {kind!r} model was built")
    minimum = min_input_size(config)
    if config.size < minimum:
        raise ConfigError(
            f"input size {config.size}x{config.size} is too small for the {kind} model: "
            f"the minimum is {minimum}x{minimum}"
        )
    if config.num_classes < 2:
        raise ConfigError(f"num_classes must be at least 2, got {config.num_classes}")
    for name in ("conv_dropout", "dense_dropout"):
        p = getattr(config, name)
        if not 0.0 <= p < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {p}")
    if config.lstm_units < 1 or config.in_channels < 1:
        raise ConfigError(
            f"lstm_units and in_channels must be positive, got {config.lstm_units} and {config.in_channels}"
        )
    if config.init not in INITS:
        raise ConfigError(f"unknown init {config.init!r}; expected one of {', '.join(INITS)}")
    if config.input_norm not in ("image", "none"):
        raise ConfigError(f"unknown input_norm {config.input_norm!r}; expected 'image' or 'none'")


def _keras_init(model: nn.Module) -> None:
    """Keras defaults: glorot_uniform kernels, zero biases, orthogonal recurrent kernel, forget bias 1."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(module.weight)  # fan_in/out include the kernel area, as in Keras
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.LSTM):
            h = module.hidden_size
            for name, param in module.named_parameters():
                if name.startswith("weight_ih"):
                    nn.init.xavier_uniform_(param)  # (4h, in): fans in and 4h, like Keras' (in, 4h)
                elif name.startswith("weight_hh"):
                    nn.init.orthogonal_(param)
                elif name.startswith("bias_ih"):
                    nn.init.zeros_(param)
                    with torch.no_grad():
                        param[h : 2 * h].fill_(1.0)  # gate order i, f, g, o
                elif name.startswith("bias_hh"):
                    nn.init.zeros_(param)


class _ConvNet(FrameModel):
    """The shared convolutional stack (Conv1..Pool2 + BN + dropout), the timm-like interface and the frame
    embedding (:class:`~mucosa.models.embedding.FrameModel`: the pooled feature map, 128 values)."""

    kind = ""
    embedding_size = 128  # the channels of the final feature map

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        _check_config(config, self.kind)
        self.config = config
        self.num_outputs = config.num_outputs
        self.feature_side = feature_size(config.size)  # H' = W' of the final map
        self.feature_channels = self.embedding_size
        c = config.in_channels
        self.conv1 = Conv2dReLU(c, 32, 3)
        self.conv2 = Conv2dReLU(32, 32, 3)
        self.pool1 = nn.MaxPool2d(2)
        self.bn1 = nn.BatchNorm2d(32, eps=1e-3, momentum=config.bn_momentum)  # Keras eps
        self.drop1 = FastDropout(config.conv_dropout)
        self.conv3 = Conv2dReLU(32, 64, 3)
        self.conv4 = Conv2dReLU(64, 128, 3)
        self.pool2 = nn.MaxPool2d(2)
        self.bn2 = nn.BatchNorm2d(128, eps=1e-3, momentum=config.bn_momentum)
        self.drop2 = FastDropout(config.conv_dropout)

    def _finish_init(self) -> None:
        if self.config.init == "keras":
            _keras_init(self)

    def feature_layers(self) -> list[tuple[str, nn.Module]]:
        """Every conv and pooling layer in forward order, as (attribute name, module)."""
        names = ("conv1", "conv2", "pool1", "conv3", "conv4", "pool2")
        return [(name, getattr(self, name)) for name in names]

    def _check_input(self, x: torch.Tensor) -> None:
        c, s = self.config.in_channels, self.config.size
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s) or not x.is_floating_point():
            raise ConfigError(
                f"the {self.kind} model expects a float input of shape (B, {c}, {s}, {s}), "
                f"got {x.dtype} {tuple(x.shape)}"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C_in, S, S) -> feature map (B, 128, H', W') after the second dropout."""
        return self.features_and_source(x)[0]

    def features_and_source(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (B, C_in, S, S) -> (feature map (B, 128, H', W') after the second dropout, the head's input;
        Pool2's output before BN2, which the frame embedding pools: see ``models.embedding``)."""
        self._check_input(x)
        if self.config.input_norm == "image":  # laser power and detector gain vary between patients
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            std = x.std(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) / (std + 1e-3)
        x = self.conv1(x)  # (B, 32, S-2, S-2)
        x = self.conv2(x)  # (B, 32, S-4, S-4)
        x = self.pool1(x)  # (B, 32, (S-4)//2, ...)
        x = self.drop1(self.bn1(x))
        x = self.conv3(x)  # (B, 64, ., .)
        x = self.conv4(x)  # (B, 128, ., .)
        x = self.pool2(x)  # (B, 128, H', W')
        return self.drop2(self.bn2(x)), x


class CNNLSTM(_ConvNet):
    """The paper's CNN-LSTM: conv stack, rows as a sequence, Dense 128 per row, LSTM, Dense 50, logits."""

    kind = "cnn-lstm"

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config if config is not None else ModelConfig(kind="cnn-lstm"))
        cfg = self.config
        self.rows = RowSequence()
        self.fc1 = LinearReLU(self.feature_side * self.feature_channels, 128)
        self.drop3 = FastDropout(cfg.dense_dropout)
        self.lstm = LastHiddenLSTM(128, cfg.lstm_units, batch_first=True)
        self.fc2 = LinearReLU(cfg.lstm_units, 50)
        self.drop4 = FastDropout(cfg.dense_dropout)
        self.fc3 = nn.Linear(50, cfg.num_outputs)
        self._finish_init()

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map (B, 128, H', W') -> logits (B, num_outputs), or (B, 50) with ``pre_logits``."""
        seq = self.rows(f)  # (B, H', W'*128)
        seq = self.drop3(self.fc1(seq))  # (B, H', 128)
        h = self.lstm(seq)  # (B, lstm_units)
        h = self.drop4(self.fc2(h))  # (B, 50)
        return h if pre_logits else self.fc3(h)  # (B, num_outputs)


class CNN(_ConvNet):
    """The comparison CNN: the same conv stack, flattened, Dense 128, Dense 50, logits."""

    kind = "cnn"

    def __init__(self, config: ModelConfig | None = None) -> None:
        super().__init__(config if config is not None else ModelConfig(kind="cnn"))
        cfg = self.config
        self.flatten = FlattenHWC()
        self.fc1 = LinearReLU(self.feature_side**2 * self.feature_channels, 128)
        self.drop3 = FastDropout(cfg.dense_dropout)
        self.fc2 = LinearReLU(128, 50)
        self.drop4 = FastDropout(cfg.dense_dropout)
        self.fc3 = nn.Linear(50, cfg.num_outputs)
        self._finish_init()

    def forward_head(self, f: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Feature map (B, 128, H', W') -> logits (B, num_outputs), or (B, 50) with ``pre_logits``."""
        h = self.flatten(f)  # (B, H'*W'*128)
        h = self.drop3(self.fc1(h))  # (B, 128)
        h = self.drop4(self.fc2(h))  # (B, 50)
        return h if pre_logits else self.fc3(h)  # (B, num_outputs)


def create_model(config: ModelConfig, pretrained: bool | None = None) -> nn.Module:
    """Build the model named by ``config.kind``; raises ConfigError for an unknown kind or bad sizes.

    Args:
        pretrained: timm kinds: load ImageNet weights (``None``: ``config.pretrained``); a checkpoint being
            loaded passes False, as its own weights replace them.
    """
    if config.kind.startswith(TIMM):
        return TimmNet(config, config.pretrained if pretrained is None else pretrained)
    if config.kind == "cnn-lstm":
        return CNNLSTM(config)
    elif config.kind == "cnn":
        return CNN(config)
    raise ConfigError(f"unknown model kind {config.kind!r}; expected one of {', '.join(KINDS)} or timm:NAME")


def embedding_size(model: nn.Module | ModelConfig) -> int:
    """D, the width of the frame embedding (``model.embed``) of a model, or of the model a config builds
    (a timm backbone is built without ImageNet weights to read it)."""
    if isinstance(model, ModelConfig):
        if model.kind in KINDS:
            return _ConvNet.embedding_size
        model = create_model(model, pretrained=False)
    return int(model.embedding_size)


def summarize(model: nn.Module, size: int | None = None) -> str:
    """Layer table (name, type, output shape, parameters) from one forward pass, then parameter totals.

    Args:
        model: a model from :func:`create_model`.
        size: input side; defaults to ``model.config.size``.
    """
    config: ModelConfig = model.config
    size = config.size if size is None else size
    rows: list[tuple[str, str, str, int]] = []
    names = {module: name for name, module in model.named_modules()}

    def hook_for(module: nn.Module) -> Callable[..., None]:
        def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            n = sum(p.numel() for p in mod.parameters())
            rows.append((names[mod], type(mod).__name__, str(tuple(output.shape)), n))

        return hook

    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(hook_for(m)) for m in leaves]
    param = next(model.parameters())
    x = torch.zeros(1, config.in_channels, size, size, dtype=param.dtype, device=param.device)
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()

    header = ("name", "type", "output shape", "params")
    table = [("input", "-", str(tuple(x.shape)), "0")] + [(a, b, c, f"{d:,}") for a, b, c, d in rows]
    widths = [max(len(r[i]) for r in [header, *table]) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join([*(r[i].ljust(widths[i]) for i in range(3)), r[3].rjust(widths[3])])

    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    lines = [line(header), "-" * len(line(header)), *(line(r) for r in table)]
    lines += [f"Total params: {total:,}", f"Trainable params: {trainable:,}"]
    return "\n".join(lines)
