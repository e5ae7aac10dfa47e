"""The frame embedding of every model kind: unit-length (N, D) rows, one pass with the logits, any layout."""

import pytest
import torch

from mucosa.models.embedding import global_pool
from mucosa.models.networks import ModelConfig, create_model, embedding_size

KINDS = [("cnn-lstm", 128), ("cnn", 128), ("timm:fakenet", 8)]  # fakenet: tests/fake_timm.py, 8 channels


def patterns(n: int, size: int = 40) -> torch.Tensor:
    """``n`` different frames (B, 1, S, S): stripes of growing frequency, alternately across and along."""
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    return torch.stack([torch.sin(6.2832 * (k + 1) * (xx if k % 2 else yy)) * 0.5 + 0.5 for k in range(n)])[:, None]


@pytest.fixture
def build(timm):
    """A model of a kind (timm kinds from the fake timm), in evaluation mode."""
    def make(kind: str, size: int = 40):
        torch.manual_seed(0)
        return create_model(ModelConfig(kind=kind, size=size)).eval()

    return make


@pytest.mark.parametrize("kind, width", KINDS)
def test_each_kind_gives_unit_rows_of_its_feature_width(build, kind, width):
    model = build(kind)
    assert embedding_size(model) == embedding_size(ModelConfig(kind=kind, size=40)) == width
    with torch.no_grad():
        embedding = model.embed(patterns(5))
    assert embedding.shape == (5, width) and embedding.dtype == torch.float32
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(5))
    similarity = embedding @ embedding.T
    assert similarity.triu(1).max() < 0.9999  # different frames are not all mapped to one point


@pytest.mark.parametrize("kind, width", KINDS)
def test_the_embedding_is_the_normalised_mean_of_the_feature_map(build, kind, width):
    model = build(kind)
    x = torch.rand(4, 1, 40, 40)
    with torch.no_grad():
        source = model.features_and_source(x)[1]  # the paper's networks: Pool2's map before BN2
        if kind.startswith("timm:"):
            assert source is model.features_and_source(x)[0] or torch.equal(source, model.forward_features(x))
        else:
            assert not torch.allclose(source, model.forward_features(x))  # not the map the head reads
            captured = []
            hook = model.pool2.register_forward_hook(lambda module, inputs, output: captured.append(output))
            model(x)
            hook.remove()
            torch.testing.assert_close(source, captured[0])
        pooled = source.mean(dim=(2, 3))
        expected = pooled / pooled.norm(dim=1, keepdim=True)
        torch.testing.assert_close(model.embed(x), expected)


@pytest.mark.parametrize("kind, width", KINDS)
def test_same_frame_same_embedding_whatever_its_batch(build, kind, width):
    model = build(kind)
    frame = torch.rand(1, 1, 40, 40)
    with torch.no_grad():
        alone = model.embed(frame)
        among_others = model.embed(torch.cat([torch.rand(3, 1, 40, 40), frame]))[-1:]
        again = model.embed(frame.clone())
    torch.testing.assert_close(among_others, alone, atol=1e-6, rtol=0)
    assert torch.equal(again, alone)


@pytest.mark.parametrize("kind, width", KINDS)
def test_forward_and_embed_is_one_pass_with_the_same_results(build, kind, width):
    model = build(kind)
    x = torch.rand(3, 1, 40, 40)
    with torch.no_grad():
        expected = model(x), model.embed(x)
        original, calls = model.features_and_source, []
        model.features_and_source = lambda images: calls.append(1) or original(images)
        logits, embedding = model.forward_and_embed(x)
    assert len(calls) == 1  # the feature map is computed once for both
    torch.testing.assert_close(logits, expected[0])
    torch.testing.assert_close(embedding, expected[1])


def test_global_pool_finds_the_channels_in_any_layout():
    nchw = torch.rand(2, 6, 3, 4)
    expected = nchw.mean(dim=(2, 3))
    torch.testing.assert_close(global_pool(nchw, 6), expected)
    torch.testing.assert_close(global_pool(nchw.permute(0, 2, 3, 1), 6), expected)  # NHWC (timm's Swin)
    torch.testing.assert_close(global_pool(nchw.flatten(2).transpose(1, 2), 6), expected)  # tokens (ViT)
    torch.testing.assert_close(global_pool(expected, 6), expected)  # already pooled
