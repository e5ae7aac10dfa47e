"""The Lightning machinery shared by training and pretraining: the resume checks and the divergence stop."""

import pytest
import torch

from mucosa.atomic import write_torch
from mucosa.errors import ConfigError
from mucosa.models.checkpoint import CheckpointFileError
from mucosa.models.config import config_from_dict
from mucosa.models.trainer import (
    RunModule,
    TrainingDivergedError,
    check_resumable_folder,
    resumable_checkpoint,
)


def tiny():
    return config_from_dict({"model": {"kind": "cnn", "size": 32}, "training": {"lr": 0.5}})


def test_a_resume_names_the_files_its_run_folder_lacks(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    with pytest.raises(ConfigError, match=r"nothing to resume \(needs config.yaml and last.ckpt from a run that"):
        check_resumable_folder(tmp_path, ["config.yaml", "last.ckpt"])
    with pytest.raises(ConfigError, match=r"needs config.yaml, pretrain.json and last.ckpt from a pretraining run"):
        check_resumable_folder(tmp_path, ["config.yaml", "pretrain.json", "last.ckpt"], "pretraining run")
    (tmp_path / "last.ckpt").write_bytes(b"")
    check_resumable_folder(tmp_path, ["config.yaml", "last.ckpt"])  # both there: no error


@pytest.mark.parametrize("epoch", [None, -1, True, "3"])
def test_a_checkpoint_not_written_at_an_epoch_end_is_not_resumed(tmp_path, epoch):
    write_torch({"state_dict": {"w": torch.ones(2)}, "epoch": epoch}, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointFileError, match="not a checkpoint written at the end of an epoch"):
        resumable_checkpoint(tmp_path / "last.ckpt")


def test_a_resumable_checkpoint_gives_its_state_and_epoch_and_refuses_diverged_weights(tmp_path):
    write_torch({"state_dict": {"w": torch.ones(2)}, "epoch": 4, "extra": 1}, tmp_path / "last.ckpt")
    state, epoch = resumable_checkpoint(tmp_path / "last.ckpt")
    assert epoch == 4 and state["extra"] == 1
    write_torch({"state_dict": {"w": torch.tensor([1.0, float("nan")])}, "epoch": 4}, tmp_path / "nan.ckpt")
    with pytest.raises(CheckpointFileError, match="NaN or infinite values"):
        resumable_checkpoint(tmp_path / "nan.ckpt")


def test_a_loss_that_is_not_finite_stops_the_run_naming_what_diverged():
    class Pretraining(RunModule):
        activity = "pretraining"

    module = Pretraining(tiny(), {}, pretrained=False)
    module.check_loss(torch.tensor(0.7), "loss", 0)  # finite: nothing happens
    with pytest.raises(TrainingDivergedError, match=r"^pretraining stopped at epoch 1, batch 3: the loss is nan: the "
                                                    r"model diverged \(training.lr = 0.5; try a lower one\)"):
        module.check_loss(torch.tensor(float("nan")), "loss", 2)
    with pytest.raises(TrainingDivergedError, match=r"^training stopped at epoch 1: the weights"):
        RunModule(tiny(), {}, pretrained=False).stop_if(True, "the weights of fc hold NaN or infinite values")


def test_every_checkpoint_carries_the_model_card():
    module = RunModule(tiny(), {"format": "card"}, pretrained=False)
    checkpoint = {}
    module.on_save_checkpoint(checkpoint)
    assert checkpoint == {"mucosa": {"format": "card"}}
