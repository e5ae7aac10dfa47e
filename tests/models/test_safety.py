"""Training safety: divergence stops training, damaged checkpoints are refused, validation must judge,
resumed runs keep their best score and log each epoch once, experiment loggers."""

import csv
import functools
import json
import shutil
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mucosa.atomic import WriteError
from mucosa.cli import main
from mucosa.data.cache import FrameCache
from mucosa.data.manifest import load_manifest
from mucosa.data.synth import synthesize_cohort
from mucosa.errors import ConfigError, ManifestError
from mucosa.models import trainer
from mucosa.models.checkpoint import CheckpointFileError, initialise_from, load_checkpoint
from mucosa.models.config import load_config
from mucosa.models.tracking import RunCheckpoint, epoch_metrics, keep_epochs
from mucosa.models.trainer import TrainingDivergedError
from mucosa.models.training import FrameClassifierModule, resume, train
from tiny_configs import TINY_NO_AUGMENTATION, run_config

quick = functools.partial(run_config, TINY_NO_AUGMENTATION)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return synthesize_cohort(tmp_path_factory.mktemp("cohort"), patients=8, per_patient=6, size=40, seed=3)


@pytest.fixture(scope="module")
def trained(cohort, tmp_path_factory):
    """A finished one-epoch run (do not modify it: copy its files)."""
    root = tmp_path_factory.mktemp("trained")
    train(cohort, quick(), root / "run", cache=FrameCache(root / "cache"))
    return root / "run"


@pytest.fixture
def cache(tmp_path):
    return FrameCache(tmp_path / "cache")


def tampered(source: Path, target: Path, change) -> Path:
    data = torch.load(source, weights_only=True)
    change(data)
    torch.save(data, target)
    return target


# --- divergence ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_diverging_run_stops_with_a_clear_error_and_no_checkpoint(cohort, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", "--manifest", str(cohort), "--size", "32", "--quality", "0", "--epochs", "2",
                 "--lr", "1e12", "--batch-size", "8", "--threads", "1", "--out", str(run)])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert "training stopped at epoch 1" in err and "the model diverged (training.lr = 1e+12" in err
    assert "best checkpoint" not in out and "Traceback" not in err
    assert not list(run.glob("*.ckpt"))  # nothing that predict or evaluate could use


@pytest.mark.slow
def test_non_finite_weights_stop_training_before_the_epoch_is_saved(trained):
    config = load_config(trained / "config.yaml")
    module = FrameClassifierModule(config, ["control", "active"], [1, 1], {})
    module.on_train_epoch_end()  # finite weights: nothing happens
    with torch.no_grad():
        module.model.fc3.weight[0, 0] = float("inf")
    with pytest.raises(TrainingDivergedError, match="weights of fc3.weight hold NaN or infinite values"):
        module.on_train_epoch_end()


def test_an_undefined_validation_score_never_chooses_a_checkpoint(tmp_path):
    callback = RunCheckpoint(dirpath=tmp_path, filename="best", monitor="val_auc", mode="max")
    trainer = types.SimpleNamespace(current_epoch=0)
    assert not callback.check_monitor_top_k(trainer, torch.tensor(float("nan")))
    assert not callback.check_monitor_top_k(trainer, torch.tensor(float("inf")))
    assert callback.check_monitor_top_k(trainer, torch.tensor(0.5))  # nothing chosen yet: a finite score is


# --- damaged checkpoints --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_checkpoint_with_nan_weights_is_refused(trained, cohort, cache, tmp_path, capsys):
    def poison(data):
        data["state_dict"]["model.conv1.weight"].fill_(float("nan"))

    bad = tampered(trained / "best.ckpt", tmp_path / "nan.ckpt", poison)
    with pytest.raises(CheckpointFileError, match=r"nan.ckpt: the weights hold NaN or infinite values \(conv1.weight"):
        load_checkpoint(bad)
    with pytest.raises(CheckpointFileError, match="NaN or infinite"):
        initialise_from(load_checkpoint(trained / "best.ckpt").model, bad)
    with pytest.raises(CheckpointFileError, match="nan.ckpt: the weights hold NaN"):  # --init-from, before any work
        train(cohort, quick(), tmp_path / "run", init_from=bad, cache=cache)
    assert cache.misses == 0 and not (tmp_path / "run").exists()
    image = tmp_path / "frame.png"
    Image.fromarray((np.random.default_rng(0).random((40, 40)) * 255).astype(np.uint8)).save(image)
    code = main(["predict", "--checkpoint", str(bad), str(image), "--out", str(tmp_path / "pred")])
    err = capsys.readouterr().err
    assert code == 2 and "cannot give verdicts" in err and not (tmp_path / "pred" / "predictions.csv").exists()


@pytest.mark.slow
def test_resume_refuses_a_last_checkpoint_with_nan_weights(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    tampered(trained / "last.ckpt", run / "last.ckpt",
             lambda data: data["state_dict"]["model.fc3.bias"].fill_(float("inf")))
    with pytest.raises(CheckpointFileError, match="last.ckpt: the weights hold NaN or infinite values"):
        resume(run)


@pytest.mark.slow
@pytest.mark.parametrize("damage, message", [
    (lambda raw: b"", "the checkpoint file is empty"),
    (lambda raw: raw[: len(raw) // 2], "not a readable PyTorch checkpoint (truncated or damaged)"),
    (lambda raw: b"not a checkpoint at all", "not a readable PyTorch checkpoint"),
])
def test_empty_or_truncated_checkpoints_get_one_clear_line(trained, tmp_path, damage, message):
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(damage((trained / "best.ckpt").read_bytes()))
    with pytest.raises(CheckpointFileError) as error:
        load_checkpoint(path)
    assert str(error.value).startswith(f"{path}: ") and message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.slow
@pytest.mark.parametrize("classes", [None, [], ["active"], ["active", "active"], "active,control"])
def test_a_checkpoint_without_classes_is_refused(trained, tmp_path, classes):
    def drop(data):
        if classes is None:
            del data["mucosa"]["classes"]
        else:
            data["mucosa"]["classes"] = classes

    path = tampered(trained / "best.ckpt", tmp_path / "x.ckpt", drop)
    with pytest.raises(CheckpointFileError, match="x.ckpt: the checkpoint does not name its classes"):
        load_checkpoint(path)


@pytest.mark.slow
def test_a_checkpoint_with_invalid_settings_is_refused(trained, tmp_path):
    path = tampered(trained / "best.ckpt", tmp_path / "x.ckpt",
                    lambda data: data["mucosa"]["preprocessing"].update(channel="pink"))
    with pytest.raises(CheckpointFileError, match="x.ckpt: invalid preprocessing settings.*channel"):
        load_checkpoint(path)


# --- a validation part that can judge -------------------------------------------------------------------------

def one_class_validation(cohort: Path, tmp_path: Path, blank_control: bool) -> Path:
    """Train rows of both classes; validation rows of active patients (and, with ``blank_control``, one blank
    control image that the quality gate drops)."""
    records = load_manifest(cohort).records
    val_patient = next(r.patient for r in records if r.label == "active")
    lines = ["path,label,patient,split"]
    for r in records:
        lines.append(f"{r.path},{r.label},{r.patient},{'val' if r.patient == val_patient else 'train'}")
    if blank_control:
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(tmp_path / "blank.png")
        lines.append(f"{tmp_path / 'blank.png'},control,blank-patient,val")
    (tmp_path / "m.csv").write_text("\n".join(lines) + "\n")
    return tmp_path / "m.csv"


def test_a_validation_part_of_one_class_is_refused_before_any_work(cohort, cache, tmp_path):
    manifest = one_class_validation(cohort, tmp_path, blank_control=False)
    with pytest.raises(ConfigError, match=r"the validation part holds images or videos of 1 of the 2 classes "
                                          r"\(control: 0, active: 6\): its ROC AUC, which chooses best.ckpt"):
        train(manifest, quick(split={"mode": "manifest"}), tmp_path / "run", cache=cache)
    assert cache.misses == 0 and not (tmp_path / "run").exists()


def test_a_validation_class_emptied_by_the_quality_gate_is_refused(cohort, cache, tmp_path):
    manifest = one_class_validation(cohort, tmp_path, blank_control=True)
    config = quick(split={"mode": "manifest"}, preprocessing={"quality_threshold": 0.5})
    with pytest.raises(ConfigError, match=r"validation part holds frames \(after the quality gate\) of 1 of the 2 "
                                          r"classes \(control: 0, active: \d+\)"):
        train(manifest, config, tmp_path / "run", cache=cache)
    assert not (tmp_path / "run").exists()


# --- resuming -----------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_moved_run_finds_its_data_whether_moved_alone_or_with_it(tmp_path):
    """split.csv's paths are relative to the run: moved alone they led nowhere (noted and left open twice)."""
    from mucosa.api import evaluate
    from mucosa.data.synth import synthesize_cohort

    home = tmp_path / "home"
    manifest = synthesize_cohort(home / "cohort", patients=8, per_patient=3, size=40, seed=3)
    cache = FrameCache(tmp_path / "cache")
    train(manifest, quick(), home / "runs" / "a", cache=cache)
    assert json.loads((home / "runs" / "a" / "run.json").read_text())["run_folder"] == str(home / "runs" / "a")
    alone = tmp_path / "elsewhere" / "deeper" / "a"  # another depth: every relative path now misses
    shutil.copytree(home / "runs" / "a", alone)
    assert resume(alone, cache) == alone / "best.ckpt"
    result = evaluate(alone / "best.ckpt", alone / "split.csv", n_boot=10, cache_dir=tmp_path / "cache",
                      device="cpu")
    assert len(result.frames) > 0
    together = tmp_path / "moved"  # the run with its data: the relative paths hold
    shutil.copytree(home, together)
    shutil.rmtree(home)
    assert resume(together / "runs" / "a", cache) == together / "runs" / "a" / "best.ckpt"
    with pytest.raises(ManifestError, match=r"split.csv row 2: file not found: \.\./\.\./cohort/"):
        resume(alone, cache)  # moved alone, and its data gone too: the missing file is named


@pytest.mark.slow
def test_resuming_a_copied_run_keeps_its_best_score(cohort, tmp_path):
    # A learning rate far below float32 resolution and frozen batch-norm statistics: every epoch scores the same,
    # so a later epoch must never replace best.ckpt (Lightning forgot the best score of a moved folder).
    config = quick(training={"lr": 1e-12}, model={"bn_momentum": 0.0})
    original = tmp_path / "run"
    train(cohort, config, original, cache=FrameCache(tmp_path / "cache"))
    before = (original / "best.ckpt").read_bytes()
    copy = tmp_path / "copy"  # beside the original: split.csv's relative paths still lead to the images
    shutil.copytree(original, copy)
    config.training.epochs = 3
    config.save(copy / "config.yaml")
    assert resume(copy, FrameCache(tmp_path / "cache")) == copy / "best.ckpt"
    scores = [e["val_auc"] for e in epoch_metrics(copy)]
    assert len(scores) == 3 and len(set(scores)) == 1, scores  # the set-up: no epoch better than the first
    assert torch.load(copy / "best.ckpt", weights_only=True)["epoch"] == 0
    assert torch.load(copy / "last.ckpt", weights_only=True)["epoch"] == 2
    states = torch.load(copy / "last.ckpt", weights_only=True)["callbacks"]
    best_state = next(v for k, v in states.items() if "val_auc" in k)
    assert Path(best_state["best_model_path"]).parent == copy.resolve()
    assert (original / "best.ckpt").read_bytes() == before  # the original run is untouched


def rows_per_epoch(run: Path) -> dict[tuple[int, str], int]:
    """How many rows of metrics.csv hold each epoch's training and validation metrics."""
    counts: dict[tuple[int, str], int] = {}
    with open(run / "metrics.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            for kind in ("train_loss", "val_auc"):
                if row[kind]:
                    key = (int(row["epoch"]), kind)
                    counts[key] = counts.get(key, 0) + 1
    return counts


@pytest.mark.slow
def test_a_failed_checkpoint_write_then_resume_logs_each_epoch_once(cohort, cache, tmp_path, monkeypatch):
    real = trainer.atomic.write_torch

    def disk_full_at_second_epoch(checkpoint, path):
        if checkpoint["epoch"] == 1:
            raise OSError(28, "No space left on device")
        real(checkpoint, path)

    monkeypatch.setattr(trainer.atomic, "write_torch", disk_full_at_second_epoch)
    run = tmp_path / "run"
    with pytest.raises(WriteError, match="cannot write .*No space left on device.*--resume"):
        train(cohort, quick(training={"epochs": 2}), run, cache=cache)
    assert torch.load(run / "last.ckpt", weights_only=True)["epoch"] == 0
    assert {int(r["epoch"]) for r in csv.DictReader((run / "metrics.csv").open())} == {0}  # none of epoch 1
    monkeypatch.undo()
    resume(run, cache)
    assert rows_per_epoch(run) == {(0, "train_loss"): 1, (0, "val_auc"): 1, (1, "train_loss"): 1, (1, "val_auc"): 1}


@pytest.mark.slow
def test_a_full_disk_before_any_epoch_was_saved_leaves_no_metrics_and_advice_that_works(cohort, cache, tmp_path,
                                                                                        monkeypatch):
    """It said "continue with --resume", which then refused, and left metrics.csv for a model never saved."""
    def disk_full(checkpoint, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trainer.atomic, "write_torch", disk_full)
    run = tmp_path / "run"
    with pytest.raises(WriteError, match="No space left on device; no epoch of this run was saved: free space, "
                                         "then start it again") as caught:
        train(cohort, quick(training={"epochs": 2}), run, cache=cache)
    assert "--resume" not in str(caught.value)
    assert not (run / "metrics.csv").exists() and not (run / "last.ckpt").exists()
    monkeypatch.undo()
    assert train(cohort, quick(training={"epochs": 1}), run, cache=cache).is_file()  # the advice works


def test_keep_epochs_drops_later_epochs_atomically(tmp_path):
    path = tmp_path / "metrics.csv"
    path.write_text("epoch,step,val_auc\n0,2,0.5\n1,5,0.6\n2,8,0.7\n")
    keep_epochs(path, 1)
    assert path.read_text() == "epoch,step,val_auc\n0,2,0.5\n1,5,0.6\n"
    keep_epochs(path, -1)
    assert not path.exists()


# --- experiment loggers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("logger, modules", [("tensorboard", ("tensorboard", "tensorboardX")), ("mlflow", ("mlflow",))])
def test_a_logger_whose_extra_is_missing_is_refused_before_any_work(cohort, cache, tmp_path, monkeypatch, logger,
                                                                    modules):
    for module in modules:
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    with pytest.raises(ConfigError, match=rf"training.logger: {logger} needs .* pip install 'mucosa\[{logger}\]'"):
        train(cohort, quick(training={"logger": logger}), tmp_path / "run", cache=cache)
    assert cache.misses == 0 and not (tmp_path / "run").exists()


def test_settings_lightning_cannot_run_are_refused_before_any_work(cohort, cache, tmp_path):
    import importlib.util

    if importlib.util.find_spec("deepspeed") is not None:
        pytest.skip("deepspeed is installed here")
    with pytest.raises(ConfigError, match="strategy deepspeed, precision 32-true: Lightning cannot use them here"):
        train(cohort, quick(training={"strategy": "deepspeed"}), tmp_path / "run", cache=cache)
    assert cache.misses == 0 and not (tmp_path / "run").exists()
