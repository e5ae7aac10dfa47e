"""Every file mucosa reads carries a format version; a newer or unknown one is refused with the version found
and the versions known (checkpoints, encoders, ONNX metadata; the atlas and the store test their own)."""

import pytest
import torch

from mucosa.atomic import write_torch
from mucosa.formats import FormatError, check_version
from mucosa.inference.onnx import ExportError, OnnxPredictor
from mucosa.models.checkpoint import CheckpointFileError, check_encoder, initialise_from, load_checkpoint
from mucosa.models.networks import ModelConfig, create_model


def test_check_version_names_what_it_found_and_what_it_knows():
    assert check_version("f", "atlas", 2, (1, 2)) == 2
    with pytest.raises(FormatError, match=r"^f: atlas format version 3, which this mucosa does not know \(it knows "
                                          r"1, 2\); upgrade mucosa to read it$"):
        check_version("f", "atlas", 3, (1, 2))
    with pytest.raises(FormatError, match=r"version 0, which this mucosa does not know \(it knows 1, 2\)$"):
        check_version("f", "atlas", 0, (1, 2))  # older than any known: no advice to upgrade
    for damaged in ("1", None, 1.0, True):
        with pytest.raises(FormatError, match="damaged atlas format version"):
            check_version("f", "atlas", damaged, (1,))


@pytest.mark.parametrize(("fmt", "version", "found"), [("mucosa-checkpoint", 99, "99"),
                                                         ("mucosa-checkpoint-7", 1, "7"),
                                                         ("mucosa-checkpoint", "2", "damaged")])
def test_a_checkpoint_of_an_unknown_version_is_refused(tmp_path, fmt, version, found):
    info = {"format": fmt, "format_version": version, "classes": ["control", "active"], "model": {"size": 32}}
    write_torch({"state_dict": {}, "mucosa": info}, tmp_path / "c.ckpt")
    with pytest.raises(CheckpointFileError, match=f"c.ckpt: .*checkpoint format version {found}|damaged checkpoint"):
        load_checkpoint(tmp_path / "c.ckpt")


@pytest.mark.parametrize("fmt", ["mucosa-encoder-99", "mucosa-encoder"])
def test_an_encoder_of_an_unknown_format_is_refused_not_loaded(tmp_path, fmt):
    model = create_model(ModelConfig(kind="cnn", size=32))
    info = {"format": fmt, "format_version": 5, "model": {"kind": "cnn", "size": 32, "in_channels": 1}}
    weights = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    write_torch({"state_dict": weights, "mucosa": info}, tmp_path / "encoder.ckpt")
    found = "99" if fmt.endswith("99") else "5"
    for read in (lambda: initialise_from(model, tmp_path / "encoder.ckpt"),
                 lambda: check_encoder(tmp_path / "encoder.ckpt", model.config),
                 lambda: load_checkpoint(tmp_path / "encoder.ckpt")):
        with pytest.raises(CheckpointFileError, match=f"encoder format version {found}, which this mucosa does not "
                                                      r"know \(it knows 1\)"):
            read()


def test_onnx_metadata_of_an_unknown_version_is_refused(tmp_path):
    import onnx

    path = tmp_path / "m.onnx"
    torch.onnx.export(torch.nn.Linear(2, 1), (torch.zeros(1, 2),), str(path), dynamo=False)
    for fmt, version, found in (("mucosa-onnx", "99", "99"), ("mucosa-onnx-4", "1", "4"), ("mucosa-onnx", "x", "")):
        model = onnx.load(path)
        for key, value in (("format", fmt), ("format_version", version)):
            entry = model.metadata_props.add()
            entry.key, entry.value = key, value
        onnx.save(model, tmp_path / "v.onnx")
        with pytest.raises(ExportError, match=f"v.onnx: .*ONNX metadata format version {found}"):
            OnnxPredictor(tmp_path / "v.onnx")
