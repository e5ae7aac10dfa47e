"""Self-supervised pretraining (mucosa pretrain) and fine-tuning from its encoder (train --init-from)."""

import csv
import json
import math

import pytest
import torch
import torch.nn.functional as F

from mucosa.cli import main
from mucosa.data.cache import FrameCache
from mucosa.data.synth import synthesize_cohort
from mucosa.errors import ConfigError
from mucosa.models.checkpoint import CheckpointFileError, initialise_from, load_checkpoint, read_checkpoint_file
from mucosa.models.config import config_from_dict
from mucosa.models.networks import ModelConfig, create_model
from mucosa.models.pretraining import Contrastive, encoder_keys, nt_xent, pretrain
from mucosa.models.tracking import epoch_metrics
from mucosa.models.training import train

TINY = {"model": {"kind": "cnn", "size": 32}, "preprocessing": {"quality_threshold": 0.0},
        "split": {"mode": "patient", "test": 0.25, "val": 0.0},
        "training": {"epochs": 1, "batch_size": 8, "threads": 1}}
METHOD = {"temperature": 0.2, "projection_dim": 16, "projection_hidden": 32}


def rows_of(manifest):
    with open(manifest, newline="") as handle:
        return list(csv.DictReader(handle))


def tiny(**model):
    return config_from_dict({**TINY, "model": {**TINY["model"], **model}})


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return synthesize_cohort(tmp_path_factory.mktemp("cohort"), patients=6, per_patient=3, size=40, seed=4)


@pytest.fixture(scope="module")
def unlabelled(cohort):
    """The cohort's files without labels or patients: a manifest with only a path column."""
    paths = [row["path"] for row in rows_of(cohort)]
    out = cohort.with_name("unlabelled.csv")
    out.write_text("path\n" + "".join(f"{p}\n" for p in paths))
    return out


@pytest.fixture(scope="module")
def encoder(unlabelled, tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrain") / "P"
    cache = FrameCache(out.parent / "cache")
    return pretrain(unlabelled, tiny(), out, cache, projection_dim=16, progress=False)


def reference_nt_xent(z1, z2, t):
    """NT-Xent written out pair by pair (Chen et al. 2020, eq. 1)."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n, total = len(z1), 0.0
    for i in range(2 * n):
        j = (i + n) % (2 * n)
        others = [k for k in range(2 * n) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / sum(math.exp(float(z[i] @ z[k]) / t) for k in others))
    return total / (2 * n)


def test_nt_xent_matches_its_definition_and_rewards_agreeing_views():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    assert float(nt_xent(z1, z2, 0.5)) == pytest.approx(reference_nt_xent(z1, z2, 0.5), rel=1e-5)
    assert float(nt_xent(z1, z1 + 0.01 * z2, 0.5)) < float(nt_xent(z1, z2, 0.5))


def test_encoder_is_the_part_before_the_head():
    for kind in ("cnn", "cnn-lstm"):
        model = create_model(ModelConfig(kind=kind, size=32))
        keys, width = encoder_keys(model)
        layers = {k.split(".")[0] for k in keys}
        assert layers == {"conv1", "conv2", "bn1", "conv3", "conv4", "bn2"} and width == 128
        assert "bn2.running_mean" in keys  # batch-norm statistics travel with the encoder


@pytest.mark.slow
def test_loss_is_finite_and_falls_on_a_fixed_batch():
    torch.manual_seed(0)
    module = Contrastive(tiny(), METHOD, {})
    x = torch.rand(8, 1, 32, 32)
    views = (x, (x + 0.05 * torch.randn_like(x)).clamp(0, 1))
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = nt_xent(module.embed(views[0]), module.embed(views[1]), METHOD["temperature"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0]


@pytest.mark.slow
def test_pretrain_reads_no_labels_and_describes_what_it_saw(encoder, unlabelled, cohort):
    data = read_checkpoint_file(encoder)
    info = data["mucosa"]
    assert info["format"] == "mucosa-encoder" and info["model"]["kind"] == "cnn" and info["model"]["size"] == 32
    assert info["frames"]["frames"] == 18 and info["frames"]["files"] == 18 and info["frames"]["labels_read"] is False
    assert len(info["frames"]["manifest_sha256"]) == 64 and info["method"]["name"] == "simclr"
    assert {k.split(".")[1] for k in data["state_dict"]} == {"conv1", "conv2", "bn1", "conv3", "conv4", "bn2"}
    described = json.dumps(info) + " ".join(data["state_dict"])
    assert not any(row["patient"] in described for row in rows_of(cohort))  # never a patient id
    rows = epoch_metrics(encoder.parent)
    assert len(rows) == 1 and math.isfinite(rows[0]["train_loss"])
    with pytest.raises(CheckpointFileError, match="pretrained encoder"):
        load_checkpoint(encoder)  # not a classifier


def test_labels_in_the_manifest_are_ignored(cohort, tmp_path):
    rows = rows_of(cohort)
    odd = tmp_path / "odd.csv"
    odd.write_text("path,label,patient\n" + "".join(f"{cohort.parent / r['path']},{'' if i % 2 else 'x' * i},p\n"
                                                  for i, r in enumerate(rows[:4])))
    out = pretrain(odd, tiny(), tmp_path / "P", FrameCache(tmp_path / "cache"), projection_dim=8, progress=False)
    assert read_checkpoint_file(out)["mucosa"]["frames"]["frames"] == 4


def test_parts_keep_only_the_named_split_rows(cohort, tmp_path):
    rows = rows_of(cohort)
    split = tmp_path / "split.csv"
    split.write_text("path,split\n" + "".join(f"{cohort.parent / r['path']},{'test' if i < 5 else 'train'}\n"
                                              for i, r in enumerate(rows)))
    out = pretrain(split, tiny(), tmp_path / "P", FrameCache(tmp_path / "cache"), parts=["train"],
                   projection_dim=8, progress=False)
    assert read_checkpoint_file(out)["mucosa"]["frames"]["frames"] == len(rows) - 5
    with pytest.raises(ConfigError, match="no row has split val"):
        pretrain(split, tiny(), tmp_path / "Q", FrameCache(tmp_path / "cache"), parts=["val"])


@pytest.mark.slow
def test_cli_pretrain_resume_and_refusals(unlabelled, tmp_path, capsys):
    out = tmp_path / "P"
    common = ["--cache", str(tmp_path / "cache"), "--threads", "1"]
    args = ["pretrain", "--manifest", str(unlabelled), "--out", str(out), "--model", "cnn", "--size", "32",
            "--epochs", "1", "--batch-size", "8", "--set", "preprocessing.quality_threshold=0", *common]
    assert main(args) == 0
    assert "encoder.ckpt" in capsys.readouterr().out
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    config = out / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1", "epochs: 2"))
    assert main(["pretrain", "--resume", str(out), *common[:2]]) == 0
    assert [row["epoch"] for row in epoch_metrics(out)] == [0, 1]
    assert read_checkpoint_file(out / "encoder.ckpt")["mucosa"]["method"]["epochs_done"] == 2
    assert main(["pretrain", "--resume", str(out), "--epochs", "3"]) == 2
    assert "would not apply" in capsys.readouterr().err


@pytest.mark.slow
def test_ctrl_c_mid_pretraining_is_exit_130_and_the_run_resumes(unlabelled, tmp_path, capsys, monkeypatch):
    import signal

    out, calls = tmp_path / "P", {"n": 0}
    step = Contrastive.training_step

    def interrupted_in_the_second_epoch(self, batch, index):
        calls["n"] += 1
        if self.current_epoch == 1:
            raise KeyboardInterrupt
        return step(self, batch, index)

    monkeypatch.setattr(Contrastive, "training_step", interrupted_in_the_second_epoch)
    common = ["--cache", str(tmp_path / "cache"), "--threads", "1"]
    handler = signal.getsignal(signal.SIGINT)
    assert main(["pretrain", "--manifest", str(unlabelled), "--out", str(out), "--model", "cnn", "--size", "32",
                 "--epochs", "2", "--batch-size", "8", "--set", "preprocessing.quality_threshold=0", *common]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) == handler  # Lightning's SIG_IGN is undone
    assert (out / "last.ckpt").is_file() and not (out / "encoder.ckpt").exists()
    monkeypatch.setattr(Contrastive, "training_step", step)
    assert main(["pretrain", "--resume", str(out), *common[:2]]) == 0
    assert [row["epoch"] for row in epoch_metrics(out)] == [0, 1]
    assert read_checkpoint_file(out / "encoder.ckpt")["mucosa"]["method"]["epochs_done"] == 2


@pytest.mark.slow
def test_resume_refuses_a_last_ckpt_of_other_settings_in_one_line(encoder, tmp_path, capsys):
    import shutil

    cases = {"size": lambda run: (run / "config.yaml").write_text(
                 (run / "config.yaml").read_text().replace("size: 32", "size: 40")),
             "method": lambda run: (run / "pretrain.json").write_text(
                 (run / "pretrain.json").read_text().replace('"temperature": 0.2', '"temperature": 0.0')),
             "classifier": lambda run: torch.save({"state_dict": {}, "epoch": 0, "mucosa": {"format": "mucosa"}},
                                                  run / "last.ckpt")}
    for name, damage in cases.items():
        run = tmp_path / name
        shutil.copytree(encoder.parent, run)
        damage(run)
        assert main(["pretrain", "--resume", str(run), "--cache", str(tmp_path / "cache")]) == 2, name
        err = capsys.readouterr().err
        assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "last.ckpt" in err, err


@pytest.mark.slow
def test_init_from_starts_from_the_encoder_weights(encoder):
    model = create_model(ModelConfig(kind="cnn", size=32))
    head_before = model.fc3.weight.clone()
    record = initialise_from(model, encoder)
    source = read_checkpoint_file(encoder)["state_dict"]
    state = model.state_dict()
    assert all(torch.equal(state[k.removeprefix("model.")], v) for k, v in source.items())
    assert torch.equal(model.fc3.weight, head_before) and "fc3" in record["fresh"]
    assert record["encoder"] is True and record["feature_share"] == 1.0 and "conv1" in record["transferred"]


@pytest.mark.slow
def test_train_init_from_encoder_and_mismatch_refused(encoder, cohort, tmp_path):
    cache = FrameCache(tmp_path / "cache")
    best = train(cohort, tiny(), tmp_path / "run", init_from=encoder, cache=cache, progress=False)
    assert best.is_file()
    for changes, named in (({"kind": "cnn-lstm"}, "cnn-lstm at 32x32"), ({"size": 40}, "cnn at 40x40")):
        with pytest.raises(ConfigError, match=f"pretrained for cnn at 32x32.*this run trains {named}"):
            train(cohort, tiny(**changes), tmp_path / "other", init_from=encoder, cache=cache)
