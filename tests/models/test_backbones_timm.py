"""timm backbones with the real ``timm`` (the ``timm`` extra): skipped where timm cannot be imported, as beside
torch 2.13 on the development machine (its torchvision fails). Run them in an environment with matching torch
and torchvision, e.g. ``pip install torch==2.14.1 torchvision==0.29.1 timm`` (docs/results.md, "Modern
backbones")."""

import numpy as np
import pytest
import torch

from mucosa.data.cache import FrameCache
from mucosa.data.synth import synthesize_cohort
from mucosa.models.checkpoint import load_checkpoint
from mucosa.models.config import config_from_dict
from mucosa.models.networks import ModelConfig, create_model, embedding_size
from mucosa.models.training import train

try:
    import timm  # noqa: F401
except Exception as error:  # ImportError, or torchvision's RuntimeError beside a mismatched torch
    pytest.skip(f"real timm cannot be imported here ({str(error).splitlines()[0][:120]})", allow_module_level=True)

NAMES = ("resnet18", "efficientnet_b0", "convnext_atto")  # three families: residual, inverted bottleneck, ConvNeXt


@pytest.mark.parametrize("name", NAMES)
def test_real_backbone_interface_gradcam_and_encoder(name):
    from mucosa.inference.saliency import grad_cam
    from mucosa.models.pretraining import encoder_keys

    model = create_model(ModelConfig(kind=f"timm:{name}", size=64)).eval()
    x = torch.rand(3, 1, 64, 64)  # one input channel
    with torch.no_grad():
        features = model.forward_features(x)  # (3, C, h, w)
        logits = model.forward_head(features)
        assert features.ndim == 4 and logits.shape == (3, 1)
        assert torch.allclose(logits, model(x), atol=1e-5)
        embedding = model.embed(x)  # the pooled feature map, unit length
        assert embedding.shape == (3, features.shape[1]) == (3, embedding_size(model))
        assert torch.allclose(embedding.norm(dim=1), torch.ones(3), atol=1e-5)
    cam = grad_cam(model, (np.random.default_rng(0).random((64, 64)) * 255).astype(np.uint8))
    assert cam.shape == (64, 64) and cam.min() >= 0 and cam.max() <= 1 and cam.max() > 0
    keys, width = encoder_keys(model)
    assert width == features.shape[1] and keys and not any("classifier" in k or k.startswith("body.fc") or
                                                           k.startswith("body.head.fc") for k in keys)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18"])
def test_real_backbone_trains_exports_and_streams(name, tmp_path):
    from media import write_video
    from mucosa.inference.onnx import export
    from mucosa.inference.stream import run

    manifest = synthesize_cohort(tmp_path / "cohort", patients=4, per_patient=3, size=40, seed=2)
    config = config_from_dict({"model": {"kind": f"timm:{name}", "size": 32},
                               "preprocessing": {"quality_threshold": 0.0}, "split": {"mode": "none", "val": 0.0},
                               "training": {"epochs": 1, "batch_size": 4, "threads": 1}})
    best = train(manifest, config, tmp_path / "run", cache=FrameCache(tmp_path / "cache"), progress=False)
    assert load_checkpoint(best).model_config.kind == f"timm:{name}"
    onnx_path = tmp_path / "model.onnx"
    assert export(best, onnx_path) is not None  # raises when ONNX and PyTorch disagree
    video = tmp_path / "clip.avi"
    write_video(video, n=6, size=(48, 48))
    for checkpoint in (best, onnx_path):
        assert run(checkpoint, video, window=2, gradcam=True, threads=1, status=None) is not None
