"""Reading checkpoint files: one clear line for anything that is not one."""

import pytest

from mucosa.models.checkpoint import CheckpointFileError, read_checkpoint_file


def test_a_folder_is_named_as_a_folder_not_as_missing(tmp_path):
    (tmp_path / "pretrained").mkdir()
    with pytest.raises(CheckpointFileError, match="a folder, not a checkpoint file") as caught:
        read_checkpoint_file(tmp_path / "pretrained")
    assert "not found" not in str(caught.value) and "pretrained" in str(caught.value)
    with pytest.raises(CheckpointFileError, match="checkpoint not found"):
        read_checkpoint_file(tmp_path / "none.ckpt")


def test_a_model_that_cannot_be_built_here_names_the_checkpoint(tmp_path, monkeypatch):
    from mucosa.atomic import write_torch
    from mucosa.models import backbones
    from mucosa.models.checkpoint import FORMAT, FORMAT_VERSION, load_checkpoint

    def no_timm():
        raise backbones.BackboneError("model kinds timm:NAME need timm, which is not installed")

    monkeypatch.setattr(backbones, "import_timm", no_timm)  # as where timm (or torchvision) does not import
    info = {"format": FORMAT, "format_version": FORMAT_VERSION, "classes": ["control", "active"],
            "model": {"kind": "timm:resnet18", "size": 32}, "preprocessing": {"size": 32}}
    write_torch({"state_dict": {}, "mucosa": info}, tmp_path / "timm.ckpt")
    with pytest.raises(CheckpointFileError, match="timm.ckpt: its timm:resnet18 model cannot be built here: .*timm"):
        load_checkpoint(tmp_path / "timm.ckpt")
