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
