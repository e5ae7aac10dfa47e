"""Tests for the CNN-LSTM and CNN models: shapes, parameter counts, interface, errors, memory format."""

import pytest
import torch

from mucosa.errors import ConfigError
from mucosa.models.networks import (
    CNN,
    CNNLSTM,
    ModelConfig,
    create_model,
    min_input_size,
    summarize,
)


def conv(k: int, cin: int, cout: int) -> int:
    return k * k * cin * cout + cout


def dense(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def lstm(n_in: int, hidden: int) -> int:
    # four gates, each with input and recurrent weights and PyTorch's two bias vectors
    return 4 * (hidden * (n_in + hidden) + 2 * hidden)


def map_side(size: int) -> int:
    """Final feature-map side by hand: two valid 3x3 convs, 2x2 pool, twice."""
    return ((size - 4) // 2 - 4) // 2


def expected_params(kind: str, size: int, num_outputs: int = 1, lstm_units: int = 100) -> int:
    side = map_side(size)
    convs = conv(3, 1, 32) + conv(3, 32, 32) + conv(3, 32, 64) + conv(3, 64, 128)
    bns = 2 * 32 + 2 * 128  # gamma and beta; running stats are buffers
    if kind == "cnn-lstm":
        head = dense(side * 128, 128) + lstm(128, lstm_units) + dense(lstm_units, 50)
    else:
        head = dense(side * side * 128, 128) + dense(128, 50)
    return convs + bns + head + dense(50, num_outputs)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def cnn_300() -> CNN:
    torch.manual_seed(0)
    return create_model(ModelConfig(kind="cnn", size=300)).eval()


@pytest.mark.parametrize("kind", ["cnn-lstm", "cnn"])
def test_output_shape_and_params_at_64(kind: str) -> None:
    model = create_model(ModelConfig(kind=kind, size=64)).eval()
    with torch.no_grad():
        out = model(torch.rand(3, 1, 64, 64))
    assert out.shape == (3, 1)
    assert n_params(model) == expected_params(kind, 64)


@pytest.mark.slow
def test_cnn_lstm_at_paper_size() -> None:
    model = create_model(ModelConfig(kind="cnn-lstm", size=300)).eval()
    assert isinstance(model, CNNLSTM)
    with torch.no_grad():
        f = model.forward_features(torch.rand(1, 1, 300, 300))
        out = model.forward_head(f)
    assert f.shape == (1, 128, 72, 72)  # 300 -> 298 -> 296 -> 148 -> 146 -> 144 -> 72
    assert out.shape == (1, 1)
    assert n_params(model) == expected_params("cnn-lstm", 300)


@pytest.mark.slow
def test_cnn_at_paper_size(cnn_300: CNN) -> None:
    assert isinstance(cnn_300, CNN)
    with torch.no_grad():
        out = cnn_300(torch.rand(1, 1, 300, 300))
    assert out.shape == (1, 1)
    assert n_params(cnn_300) == expected_params("cnn", 300)
    assert cnn_300.fc1.weight.numel() == 72 * 72 * 128 * 128  # faithful Flatten -> Dense(128)


@pytest.mark.parametrize("kind", ["cnn-lstm", "cnn"])
def test_forward_equals_head_of_features(kind: str) -> None:
    torch.manual_seed(1)
    model = create_model(ModelConfig(kind=kind, size=40)).eval()
    x = torch.rand(2, 1, 40, 40)
    with torch.no_grad():
        f = model.forward_features(x)
        assert f.shape == (2, 128, map_side(40), map_side(40))
        assert torch.equal(model(x), model.forward_head(f))
        assert model.forward_head(f, pre_logits=True).shape == (2, 50)


@pytest.mark.parametrize("kind", ["cnn-lstm", "cnn"])
def test_three_class_head(kind: str) -> None:
    config = ModelConfig(kind=kind, size=32, num_classes=3)
    assert config.num_outputs == 3
    model = create_model(config).eval()
    with torch.no_grad():
        out = model(torch.rand(4, 1, 32, 32))
    assert out.shape == (4, 3)
    assert n_params(model) == expected_params(kind, 32, num_outputs=3)


def test_binary_head_has_one_output_and_config_is_plain() -> None:
    config = ModelConfig(num_classes=2, lstm_units=20, size=48)
    assert config.num_outputs == 1
    assert config.to_dict()["lstm_units"] == 20
    model = create_model(config)
    assert n_params(model) == expected_params("cnn-lstm", 48, lstm_units=20)


@pytest.mark.parametrize("kind", ["cnn-lstm", "cnn"])
def test_feature_layers_names_and_shapes(kind: str) -> None:
    model = create_model(ModelConfig(kind=kind, size=64)).eval()
    layers = model.feature_layers()
    assert [name for name, _ in layers] == ["conv1", "conv2", "pool1", "conv3", "conv4", "pool2"]
    assert all(module is getattr(model, name) for name, module in layers)
    shapes = {}
    handles = [
        module.register_forward_hook(lambda m, i, o, name=name: shapes.__setitem__(name, tuple(o.shape)))
        for name, module in layers
    ]
    with torch.no_grad():
        model(torch.rand(1, 1, 64, 64))
    for handle in handles:
        handle.remove()
    assert shapes == {
        "conv1": (1, 32, 62, 62),
        "conv2": (1, 32, 60, 60),
        "pool1": (1, 32, 30, 30),
        "conv3": (1, 64, 28, 28),
        "conv4": (1, 128, 26, 26),
        "pool2": (1, 128, 13, 13),
    }


@pytest.mark.parametrize("kind", ["cnn-lstm", "cnn"])
def test_layer_counts_match_the_paper(kind: str) -> None:
    """4 convolutional, 2 max-pooling, 2 batch normalization and 4 dropout layers (Model implementation)."""
    model = create_model(ModelConfig(kind=kind, size=32))
    nn = torch.nn
    types = (nn.Conv2d, nn.MaxPool2d, nn.BatchNorm2d, nn.Dropout, nn.LSTM)
    counts = [sum(isinstance(m, t) for m in model.modules()) for t in types]
    assert counts == [4, 2, 2, 4, 1 if kind == "cnn-lstm" else 0]


def test_conv_outputs_are_activated() -> None:
    model = create_model(ModelConfig(size=32)).eval()
    seen = []
    model.conv4.register_forward_hook(lambda m, i, o: seen.append(o))
    with torch.no_grad():
        model(torch.randn(2, 1, 32, 32))
    assert seen[0].min() >= 0  # ReLU applied inside the layer, like Keras activation="relu"
    assert seen[0].max() > 0


def test_too_small_input_names_size_and_minimum() -> None:
    minimum = min_input_size(ModelConfig())
    # smallest S with ((S-4)//2 - 4)//2 >= 1: (S-4)//2 >= 6, so S >= 16
    assert minimum == 16
    create_model(ModelConfig(size=minimum))  # accepted
    for kind in ("cnn-lstm", "cnn"):
        with pytest.raises(ConfigError, match=r"15x15.*minimum is 16x16"):
            create_model(ModelConfig(kind=kind, size=minimum - 1))


def test_unknown_kind_and_bad_values() -> None:
    with pytest.raises(ConfigError, match="'resnet'"):
        create_model(ModelConfig(kind="resnet"))
    with pytest.raises(ConfigError, match="num_classes"):
        create_model(ModelConfig(num_classes=1, size=32))
    with pytest.raises(ConfigError, match="dense_dropout"):
        create_model(ModelConfig(dense_dropout=1.0, size=32))
    with pytest.raises(ConfigError, match="init"):
        create_model(ModelConfig(init="he", size=32))
    with pytest.raises(ConfigError, match="kind 'cnn'"):
        CNNLSTM(ModelConfig(kind="cnn", size=32))


def test_wrong_input_shape_is_a_config_error() -> None:
    model = create_model(ModelConfig(size=32))
    with pytest.raises(ConfigError, match=r"\(B, 1, 32, 32\).*\(2, 1, 40, 40\)"):
        model(torch.rand(2, 1, 40, 40))
    with pytest.raises(ConfigError, match="uint8"):
        model(torch.zeros(2, 1, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize("kind", ["cnn-lstm", "cnn"])
def test_summarize_lists_every_layer_and_total(kind: str) -> None:
    model = create_model(ModelConfig(kind=kind, size=64))
    model.train()
    text = summarize(model, 64)
    assert model.training  # mode restored
    names = [line.split()[0] for line in text.splitlines()]
    leaves = [name for name, m in model.named_modules() if name and not list(m.children())]
    assert len(leaves) == (17 if kind == "cnn-lstm" else 16)
    assert set(leaves) <= set(names)
    assert f"Total params: {n_params(model):,}" in text
    assert "(1, 128, 13, 13)" in text
    fc1_line = next(line for line in text.splitlines() if line.startswith("fc1 "))
    assert fc1_line.split()[-1] == f"{model.fc1.weight.numel() + model.fc1.bias.numel():,}"


@pytest.mark.parametrize("kind", ["cnn-lstm", "cnn"])
def test_gradients_reach_conv1(kind: str) -> None:
    torch.manual_seed(2)
    model = create_model(ModelConfig(kind=kind, size=32, conv_dropout=0.0, dense_dropout=0.0))
    model.train()
    loss = torch.nn.functional.binary_cross_entropy_with_logits(
        model(torch.rand(4, 1, 32, 32)).squeeze(1), torch.tensor([0.0, 1.0, 0.0, 1.0])
    )
    loss.backward()
    grad = model.conv1.weight.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["cnn-lstm", "cnn"])
def test_channels_last_matches_contiguous(kind: str) -> None:
    torch.manual_seed(3)
    model = create_model(ModelConfig(kind=kind, size=48)).eval()
    # non-trivial batch-norm statistics, so a layout mix-up in the head would show
    with torch.no_grad():
        model.bn2.running_mean.uniform_(0.0, 0.5)
        model.bn2.running_var.uniform_(0.5, 2.0)
    x = torch.rand(2, 1, 48, 48)
    with torch.no_grad():
        ref = model(x)
        f_ref = model.forward_features(x)
        model_cl = model.to(memory_format=torch.channels_last)
        x_cl = x.contiguous(memory_format=torch.channels_last)
        f_cl = model_cl.forward_features(x_cl)
        out = model_cl(x_cl)
    assert f_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(f_cl, f_ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_row_sequence_is_channels_fastest() -> None:
    """Row h of the sequence holds f[:, :, h, :] flattened as (W, C) with C fastest, like Keras' Reshape."""
    model = create_model(ModelConfig(size=32))
    f = torch.arange(2 * 128 * 2 * 3, dtype=torch.float32).reshape(2, 128, 2, 3)  # (B, C, H, W)
    seq = model.rows(f)
    assert seq.shape == (2, 2, 3 * 128)
    assert torch.equal(seq[1, 1, :128], f[1, :, 1, 0])
    assert torch.equal(seq[1, 1, 128:256], f[1, :, 1, 1])
    f_cl = f.contiguous(memory_format=torch.channels_last)
    assert model.rows(f_cl).data_ptr() == f_cl.data_ptr()  # a view, no copy


def test_init_options() -> None:
    keras = create_model(ModelConfig(size=32, init="keras"))
    h = keras.config.lstm_units
    assert torch.count_nonzero(keras.conv1.bias) == 0 and torch.count_nonzero(keras.fc1.bias) == 0
    assert torch.equal(keras.lstm.bias_ih_l0[h : 2 * h], torch.ones(h))  # forget gate
    assert torch.count_nonzero(keras.lstm.bias_hh_l0) == 0
    w_hh = keras.lstm.weight_hh_l0  # (4h, h), orthonormal columns
    torch.testing.assert_close(w_hh.T @ w_hh, torch.eye(h), atol=1e-4, rtol=0)
    torch_init = create_model(ModelConfig(size=32, init="torch"))
    assert torch.count_nonzero(torch_init.conv1.bias) > 0  # PyTorch's default uniform bias


def test_fast_dropout_keeps_rate_scale_seed_and_eval_identity():
    from mucosa.models.networks import FastDropout

    layer = FastDropout(0.25)
    x = torch.ones(8, 16, 32, 32, requires_grad=True)
    torch.manual_seed(0)
    y = layer(x)
    kept = y != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    assert torch.allclose(y[kept], torch.full_like(y[kept], 4 / 3))  # unbiased: kept values x 1/(1-p)
    y.sum().backward()
    assert torch.equal(x.grad, (y != 0).float() * (4 / 3))
    torch.manual_seed(0)
    assert torch.equal(layer(x.detach()), y.detach())  # repeatable under torch.manual_seed
    layer.eval()
    assert torch.equal(layer(x.detach()), x.detach())
