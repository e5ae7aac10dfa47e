"""timm backbones (model kinds timm:NAME) against a small fake ``timm`` module (tests/fake_timm.py, the ``timm``
fixture): real timm is not imported here (it needs torchvision matching torch), so these check the adapter's
contract, not timm itself."""

import sys

import numpy as np
import pytest
import torch

from mucosa.cli import main
from mucosa.data.cache import FrameCache
from mucosa.data.synth import synthesize_cohort
from mucosa.errors import ConfigError, MucosaError
from mucosa.models import backbones
from mucosa.models.checkpoint import load_checkpoint
from mucosa.models.config import config_from_dict
from mucosa.models.networks import ModelConfig, create_model
from mucosa.models.training import train


def test_missing_timm_is_one_clear_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "timm", None)  # as when timm is not installed
    with pytest.raises(MucosaError, match=r"need timm, which is not installed: pip install 'mucosa\[timm\]'"):
        create_model(ModelConfig(kind="timm:resnet18", size=64))


def test_timm_failing_on_torchvision_names_the_cause(monkeypatch):
    def broken(name):
        raise RuntimeError("operator torchvision::nms does not exist")

    monkeypatch.setattr(backbones.importlib, "import_module", broken)
    with pytest.raises(MucosaError) as error:
        create_model(ModelConfig(kind="timm:resnet18", size=64))
    message = str(error.value)
    assert "torchvision::nms" in message and "matching versions" in message and "\n" not in message


def test_the_real_import_fails_clearly_or_works():
    try:
        import timm  # noqa: F401
    except Exception:
        with pytest.raises(MucosaError, match="timm"):
            backbones.import_timm()
    else:
        assert backbones.import_timm() is sys.modules["timm"]


def test_cli_asks_for_a_timm_kind_without_timm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)
    assert main(["model-summary", "--model", "timm:resnet18", "--size", "64"]) == 2
    err = capsys.readouterr().err
    assert "pip install 'mucosa[timm]'" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_kind_and_size_are_checked():
    with pytest.raises(ConfigError, match="expected one of cnn-lstm, cnn, timm:NAME"):
        ModelConfig(kind="timm:")
    with pytest.raises(ConfigError, match="expected one of cnn-lstm, cnn, timm:NAME"):
        ModelConfig(kind="resnet18")
    with pytest.raises(ConfigError, match="too small"):
        ModelConfig(kind="timm:resnet18", size=16)
    assert ModelConfig(kind="cnn", size=16).size == 16


def test_adapter_interface(timm):
    model = create_model(ModelConfig(kind="timm:fakenet", size=32))
    assert timm.calls[-1] == ("fakenet", False, 1, 1)  # one input channel, one logit for two classes
    x = torch.rand(3, 1, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (3, 8, 8, 8)
    assert model(x).shape == (3, 1)
    assert model.forward_head(features, pre_logits=True).shape == (3, 8)
    with pytest.raises(ConfigError, match="expects a float input"):
        model(torch.rand(3, 1, 40, 40))
    # input_norm "image" standardises each image before the backbone, as for the paper's networks
    plain = create_model(ModelConfig(kind="timm:fakenet", size=32, input_norm="none"))
    plain.load_state_dict(model.state_dict())
    model.eval(), plain.eval()
    mean, std = x.mean(dim=(1, 2, 3), keepdim=True), x.std(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(model(x), plain((x - mean) / (std + 1e-3)), atol=1e-5)


def test_unknown_name_and_unreachable_weights_are_clear(timm):
    with pytest.raises(ConfigError, match="timm has no model 'nosuchnet'"):
        create_model(ModelConfig(kind="timm:nosuchnet", size=32))
    with pytest.raises(MucosaError) as error:
        create_model(ModelConfig(kind="timm:fakenet", size=32, pretrained=True))
    message = str(error.value)
    assert "model.pretrained" in message and "couldn't connect" in message and "\n" not in message


@pytest.mark.slow
def test_train_checkpoint_export_predict_gradcam_and_stream(timm, tmp_path):
    from media import write_video
    from mucosa.inference.onnx import export
    from mucosa.inference.saliency import grad_cam
    from mucosa.inference.stream import run

    manifest = synthesize_cohort(tmp_path / "cohort", patients=4, per_patient=3, size=40, seed=2)
    config = config_from_dict({"model": {"kind": "timm:fakenet", "size": 32, "pretrained": True},
                               "preprocessing": {"quality_threshold": 0.0},
                               "split": {"mode": "none", "val": 0.0},
                               "training": {"epochs": 1, "batch_size": 4, "threads": 1}})
    with pytest.raises(MucosaError, match="model.pretrained"):  # nothing downloads: the fake refuses
        train(manifest, config, tmp_path / "fail", cache=FrameCache(tmp_path / "cache"))
    config = config_from_dict({**config.to_dict(), "model": {"kind": "timm:fakenet", "size": 32}})
    best = train(manifest, config, tmp_path / "run", cache=FrameCache(tmp_path / "cache"), progress=False)
    loaded = load_checkpoint(best)  # rebuilt without pretrained weights (the fake would refuse them)
    assert loaded.model_config.kind == "timm:fakenet" and timm.calls[-1][1] is False
    frame = (np.random.default_rng(0).random((32, 32)) * 255).astype(np.uint8)
    cam = grad_cam(loaded.model, frame)
    assert cam.shape == (32, 32) and cam.min() >= 0 and cam.max() <= 1
    onnx_path = tmp_path / "model.onnx"
    report = export(best, onnx_path)  # raises ExportError when ONNX and PyTorch disagree
    assert onnx_path.is_file() and report is not None
    video = tmp_path / "clip.avi"
    write_video(video, n=6, size=(48, 48))
    for checkpoint in (best, onnx_path):
        summary = run(checkpoint, video, window=2, annotate=tmp_path / f"{checkpoint.suffix[1:]}.mp4",
                      gradcam=True, threads=1, status=None)
        assert summary is not None


@pytest.mark.slow
def test_pretrain_and_fine_tune_a_backbone(timm, tmp_path):
    from mucosa.models.checkpoint import initialise_from
    from mucosa.models.pretraining import encoder_keys, pretrain

    model = create_model(ModelConfig(kind="timm:fakenet", size=32))
    keys, width = encoder_keys(model)
    assert {k.rsplit(".", 1)[0] for k in keys} == {"body.conv", "body.bn"} and width == 8  # not the head (fc)
    manifest = synthesize_cohort(tmp_path / "cohort", patients=2, per_patient=4, size=40, seed=5)
    config = config_from_dict({"model": {"kind": "timm:fakenet", "size": 32},
                               "preprocessing": {"quality_threshold": 0.0},
                               "training": {"epochs": 1, "batch_size": 4, "threads": 1}})
    encoder = pretrain(manifest, config, tmp_path / "P", FrameCache(tmp_path / "cache"), projection_dim=8,
                       progress=False)
    initialise_from(model, encoder)
    state = model.state_dict()
    for key, value in torch.load(encoder, weights_only=True)["state_dict"].items():
        assert torch.equal(state[key.removeprefix("model.")], value)
