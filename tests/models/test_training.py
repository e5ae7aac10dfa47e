import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from mucosa.atomic import write_torch
from mucosa.data.cache import FrameCache
from mucosa.data.manifest import load_manifest
from mucosa.data.synth import synthesize_cohort
from mucosa.errors import ConfigError
from mucosa.models.checkpoint import initialise_from, load_checkpoint
from mucosa.models.config import config_from_dict, load_config
from mucosa.models.networks import ModelConfig, create_model
from mucosa.models.tracking import epoch_metrics
from mucosa.models.training import (
    FrameClassifierModule,
    make_loaders,
    plan_run,
    train,
)
from tiny_configs import TINY_NO_AUGMENTATION, tiny_config

QUICK = tiny_config(TINY_NO_AUGMENTATION)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("cohort")
    return synthesize_cohort(out, patients=8, per_patient=6, size=40, seed=3)


@pytest.fixture
def cache(tmp_path):
    return FrameCache(tmp_path / "cache")


def quick(**changes):
    data = json.loads(json.dumps(QUICK))
    for section, values in changes.items():
        data.setdefault(section, {}).update(values)
    return config_from_dict(data)


def mucosa(*args, **kwargs):
    env = {**os.environ, "MUCOSA_CACHE": str(kwargs.pop("cache"))}
    return subprocess.Popen([sys.executable, "-m", "mucosa", *map(str, args)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kwargs)


def mean_loss(module, loader):
    module.eval()
    with torch.no_grad():
        losses = [module.loss(module(x), y).item() * len(y) for x, y, _ in loader]
    return sum(losses) / len(loader.dataset)


@pytest.mark.slow
def test_one_epoch_lowers_the_loss_and_checkpoint_round_trips(cohort, cache, tmp_path):
    config = quick(training={"epochs": 3, "lr": 3e-3})
    plan = plan_run(cohort, config, tmp_path / "run", cache)
    train_loader, _ = make_loaders(plan)
    L.seed_everything(0)
    module = FrameClassifierModule(config, plan.cohort.classes, [1, 1], {"format": "test"})
    before = mean_loss(module, train_loader)
    from mucosa.models.trainer import AtomicCheckpointIO

    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        plugins=[AtomicCheckpointIO()], enable_model_summary=False)
    module.train()
    trainer.fit(module, train_loader)
    after = mean_loss(module, train_loader)
    assert after < before - 0.005, (before, after)

    # round trip through a self-describing checkpoint rebuilds the same network
    from mucosa.models.checkpoint import describe

    module.description = describe(config.model, plan.cohort.classes, config.preprocessing, config.to_dict(), {})
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    loaded = load_checkpoint(tmp_path / "m.ckpt")
    x = torch.rand(4, 1, 32, 32).contiguous(memory_format=torch.channels_last)
    module.eval()
    with torch.no_grad():  # same weights, same memory format: bit-identical outputs
        assert torch.equal(loaded.model.to(memory_format=torch.channels_last)(x), module.model(x))
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(),
                                                 module.model.state_dict().values()))
    assert loaded.classes == ["control", "active"] and loaded.preprocessing.size == 32


def test_train_writes_a_self_describing_run(cohort, cache, tmp_path):
    best = train(cohort, quick(), tmp_path / "run", cache=cache)
    run = tmp_path / "run"
    assert best == run / "best.ckpt" and best.is_file() and (run / "last.ckpt").is_file()
    assert load_config(run / "config.yaml").model.size == 32
    [epoch] = epoch_metrics(run)  # Lightning's CSV logger: one epoch, training and validation metrics
    assert epoch["epoch"] == 0 and not (run / "epochs.csv").exists()
    assert all(np.isfinite(epoch[k]) for k in ("train_loss", "val_loss", "val_auc", "val_acc", "epoch_seconds"))
    assert 0 <= epoch["val_auc"] <= 1 and 0 <= epoch["val_acc"] <= 1
    loaded = load_checkpoint(best)
    split = loaded.info["split"]
    assert split["mode"] == "patient" and split["seed"] == 0
    assert not set(split["patients"]["train"]) & set(split["patients"]["test"])
    assert loaded.info["config"]["training"]["batch_size"] == 8
    assert loaded.info["preprocessing"]["quality_threshold"] == 0.0
    written = load_manifest(run / "split.csv")
    assert {r.patient for r in written.records if r.split == "train"} == set(split["patients"]["train"])
    with pytest.raises(ConfigError, match="already holds a run"):
        train(cohort, quick(), run, cache=cache)


def test_bad_inputs_fail_before_any_work(cohort, cache, tmp_path):
    with pytest.raises(ConfigError, match="minimum is 16x16"):
        train(cohort, quick(model={"size": 12}), tmp_path / "a", cache=cache)
    rows = load_manifest(cohort).records
    lines = ["path,label,patient,split"] + [f"{r.path},{r.label},{r.patient},test" for r in rows]
    (tmp_path / "all-test.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="the train part of the split is empty"):
        train(tmp_path / "all-test.csv", quick(split={"mode": "manifest", "val": 0}), tmp_path / "b", cache=cache)
    lines = ["path,label,patient,split"] + [
        f"{r.path},{r.label},{r.patient},{'train' if r.label == 'active' else 'test'}" for r in rows]
    (tmp_path / "one-class.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match="class\\(es\\) control have no images in the training part"):
        train(tmp_path / "one-class.csv", quick(split={"mode": "manifest", "val": 0}), tmp_path / "c", cache=cache)
    assert not any((tmp_path / name).exists() for name in "abc")
    assert cache.misses == 0  # nothing was decoded


def test_a_label_typo_stops_training_unless_the_classes_are_named(cohort, cache, tmp_path, capsys):
    from mucosa.cli import main
    from mucosa.errors import MucosaWarning

    rows = load_manifest(cohort).records
    typo = next(i for i, r in enumerate(rows) if r.label == "active")
    lines = ["path,label,patient"] + [f"{r.path},{'activ' if i == typo else r.label},{r.patient}"
                                      for i, r in enumerate(rows)]
    (tmp_path / "typo.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match=r"class 'activ' has 1 of 48 rows \(very few rows; it resembles 'active'\)"):
        plan_run(tmp_path / "typo.csv", quick(), tmp_path / "run", cache)
    assert cache.misses == 0  # refused before any frame was prepared
    assert main(["train", "--manifest", str(tmp_path / "typo.csv"), "--out", str(tmp_path / "cli"),
                 "--cache", str(tmp_path / "cache")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "cli").exists()
    with pytest.warns(MucosaWarning, match=r"1 row\(s\) whose label is not in --classes are left out"):
        plan = plan_run(tmp_path / "typo.csv", quick(), tmp_path / "run", cache, classes=["control", "active"])
    assert plan.cohort.classes == ["control", "active"] and plan.config.model.num_classes == 2
    assert "activ" not in {r.label for r in plan.cohort.records} and len(plan.cohort.records) == 47


def test_config_errors_name_the_file_and_key(tmp_path):
    (tmp_path / "c.yaml").write_text("training:\n  epoks: 3\n")
    with pytest.raises(ConfigError, match=r"c.yaml: training.epoks: unknown setting; did you mean 'epochs'\?"):
        load_config(tmp_path / "c.yaml")
    (tmp_path / "d.yaml").write_text("modle: {}\n")
    with pytest.raises(ConfigError, match="d.yaml: modle: unknown section; did you mean 'model'"):
        load_config(tmp_path / "d.yaml")
    for name in ("paper", "cpu-quick"):
        config = load_config(Path(__file__).parents[2] / "configs" / f"{name}.yaml")
        assert config.preprocessing.size == config.model.size
    assert load_config(Path(__file__).parents[2] / "configs" / "paper.yaml").training.epochs == 200


def test_init_from_reinitialises_mismatched_head(cohort, cache, tmp_path, caplog):
    best = train(cohort, quick(), tmp_path / "run", cache=cache)
    caplog.set_level("INFO", logger="mucosa")
    three = create_model(ModelConfig(size=32, num_classes=3))
    record = initialise_from(three, best)
    assert record["fresh"] == ["fc3"] and record["encoder"] is False and record["feature_share"] == 1.0
    source = load_checkpoint(best).model
    assert torch.equal(three.conv1.weight, source.conv1.weight)
    assert "; fc3 start fresh" in caplog.text


def test_init_from_that_transfers_nothing_or_too_little_is_refused(cohort, cache, tmp_path):
    """A fine-tune from a checkpoint none of whose layers fit used to re-initialise everything, train from
    scratch, exit 0 and be recorded as fine-tuned; a partial fit needs --allow-partial-init."""
    model = create_model(ModelConfig(size=32))
    foreign = tmp_path / "foreign.ckpt"
    write_torch({"state_dict": {"model.stem.weight": torch.ones(3, 3)}}, foreign)
    with pytest.raises(ConfigError, match=r"foreign.ckpt: none of its weights fit this model \(CNNLSTM at 32x32; "
                                          r"expected e.g. conv1.weight"):
        train(cohort, quick(), tmp_path / "none", init_from=foreign, cache=cache)
    assert cache.misses == 0 and not (tmp_path / "none").exists()  # refused before any work
    partial = tmp_path / "partial.ckpt"
    write_torch({"state_dict": {f"model.{k}": v for k, v in model.state_dict().items() if k.startswith("conv1.")}},
                partial)
    with pytest.raises(ConfigError, match=r"partial.ckpt: only 25% of this model's feature-layer weights fit "
                                          r"\(layers conv1\).*--allow-partial-init"):
        train(cohort, quick(), tmp_path / "part", init_from=partial, cache=cache)
    best = train(cohort, quick(), tmp_path / "part", init_from=partial, cache=cache, allow_partial_init=True)
    record = load_checkpoint(best).info["init_from"]  # the run's card records what was transferred
    assert record["transferred"] == ["conv1"] and "conv2" in record["fresh"] and "lstm" in record["fresh"]
    assert record["feature_share"] == 0.25 and record["source"] == str(partial) and record["encoder"] is False


def test_atomic_save_never_leaves_a_torn_file(tmp_path, monkeypatch):
    target = tmp_path / "last.ckpt"
    write_torch({"state_dict": {"w": torch.ones(3)}}, target)

    def explode(obj, handle, *args, **kwargs):
        handle.write(b"partial bytes")
        raise KeyboardInterrupt  # like a kill in the middle of writing

    monkeypatch.setattr(torch, "save", explode)
    with pytest.raises(KeyboardInterrupt):
        write_torch({"state_dict": {"w": torch.zeros(3)}}, target)
    monkeypatch.undo()
    assert torch.equal(torch.load(target, weights_only=True)["state_dict"]["w"], torch.ones(3))
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]


def _epochs_logged(run: Path) -> list[int]:
    """Epochs (from 0) with a training-loss row in metrics.csv, as often as they appear."""
    path = run / "metrics.csv"
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle) if row.get("train_loss")]


@pytest.mark.slow
def test_resume_after_sigkill_mid_epoch(tmp_path):
    cohort = synthesize_cohort(tmp_path / "c", patients=8, per_patient=30, size=48, seed=1)
    run, cache = tmp_path / "run", tmp_path / "cache"
    args = ["train", "--manifest", cohort, "--size", "48", "--epochs", "4", "--batch-size", "4", "--quality", "0",
            "--threads", "1", "--out", run]
    process = mucosa(*args, cache=cache)
    deadline = time.time() + 240
    while not _epochs_logged(run) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, process.stdout.read()
    time.sleep(0.5)  # into the second epoch
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = torch.load(run / "last.ckpt", weights_only=True)["epoch"] + 1
    assert 1 <= done_before < 4
    resumed = mucosa("train", "--resume", run, cache=cache)
    output, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, output
    assert f"resuming {run} after epoch {done_before} of 4" in output
    assert torch.load(run / "last.ckpt", weights_only=True)["epoch"] == 3
    assert _epochs_logged(run) == [0, 1, 2, 3]  # each epoch once, in order
    assert not [p for p in run.iterdir() if p.suffix == ".tmp"]
    best = load_checkpoint(run / "best.ckpt")  # exported again after the resumed run, from its final weights
    assert best.info["deployment"]["weights_sha256"] == best.weights_sha256 and (run / "best.onnx").is_file()


@pytest.mark.slow
def test_ddp_two_cpu_processes_see_disjoint_data(tmp_path):
    cohort = synthesize_cohort(tmp_path / "c", patients=4, per_patient=6, size=32, seed=2)  # 24 frames: even
    run = tmp_path / "run"
    process = mucosa("train", "--manifest", cohort, "--size", "32", "--epochs", "1", "--batch-size", "4",
                     "--split", "none", "--val", "0", "--quality", "0", "--accelerator", "cpu", "--devices", "2",
                     "--strategy", "ddp", "--threads", "1", "--record-samples", "--out", run, cache=tmp_path / "cache")
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output
    seen = [json.loads((run / f"samples-rank{r}.json").read_text()) for r in (0, 1)]
    assert len(seen[0]) == len(seen[1]) == 12
    assert not set(seen[0]) & set(seen[1]) and set(seen[0]) | set(seen[1]) == set(range(24))
    checkpoints = sorted(p.name for p in run.glob("*.ckpt"))
    assert checkpoints == ["best.ckpt", "last.ckpt"]
    assert np.isfinite(epoch_metrics(run)[0]["train_loss"])


def test_several_nodes_without_a_launcher_are_refused_before_training(monkeypatch):
    import os

    from mucosa.models.config import config_from_dict
    from mucosa.models.trainer import check_hardware_settings

    for key in [k for k in os.environ if k.startswith(("SLURM_", "TORCHELASTIC_")) or k in (
            "NODE_RANK", "MASTER_ADDR", "WORLD_SIZE", "LOCAL_RANK", "GROUP_RANK")]:
        monkeypatch.delenv(key)
    config = config_from_dict({"training": {"accelerator": "cpu", "devices": 1, "num_nodes": 2}})
    with pytest.raises(ConfigError, match="num_nodes 2: no SLURM job or torchrun"):
        check_hardware_settings(config)  # rank 0 would otherwise wait for a node that never comes
    monkeypatch.setenv("NODE_RANK", "0")
    check_hardware_settings(config)


@pytest.mark.slow
@pytest.mark.parametrize("monitor", ["val_auc", "val_loss"])
def test_best_checkpoint_is_the_epoch_the_monitor_chooses(cohort, cache, tmp_path, monitor):
    """training.monitor: best.ckpt holds the epoch of the highest validation AUC, or of the lowest validation
    loss (a saturated model can rank well and still call everything one class: the loss sees it)."""
    best = train(cohort, quick(training={"epochs": 4, "lr": 3e-3, "monitor": monitor}), tmp_path / "run",
                 cache=cache)
    epochs = epoch_metrics(tmp_path / "run")
    values = [e[monitor] for e in epochs]
    chosen = int(np.argmax(values) if monitor == "val_auc" else np.argmin(values))
    saved = torch.load(best, weights_only=True, map_location="cpu")
    assert saved["epoch"] == chosen
    [state] = [s for s in saved["callbacks"].values() if isinstance(s, dict) and s.get("monitor")]
    assert state["monitor"] == monitor and float(state["best_model_score"]) == pytest.approx(values[chosen])


def test_resume_refuses_a_monitor_edited_after_training(cohort, cache, tmp_path):
    """Lightning would silently drop the best score and the patience of another monitor: refused, one line."""
    from mucosa.models.training import resume

    train(cohort, quick(training={"epochs": 1, "early_stopping": 2}), tmp_path / "run", cache=cache)
    config = tmp_path / "run" / "config.yaml"
    config.write_text(config.read_text().replace("monitor: val_auc", "monitor: val_loss"))
    with pytest.raises(ConfigError, match="training.monitor val_auc, but config.yaml now says val_loss"):
        resume(tmp_path / "run", cache)


@pytest.mark.parametrize(("old", "new", "setting"), [("size: 32", "size: 48", "model.size"),
                                                     ("quality_threshold: 0.0", "quality_threshold: 0.2",
                                                      "preprocessing.quality_threshold")])
def test_resume_names_the_setting_edited_that_cannot_change(cohort, cache, tmp_path, old, new, setting):
    """It used to end in exit 70, "internal error", although mucosa's own message says to edit config.yaml."""
    from mucosa.models.training import resume

    train(cohort, quick(training={"epochs": 1}), tmp_path / "run", cache=cache)
    config = tmp_path / "run" / "config.yaml"
    assert old in config.read_text()
    config.write_text(config.read_text().replace(old, new))
    with pytest.raises(ConfigError, match=f"config.yaml: {setting} is .* but the run was trained with .*restore it"):
        resume(tmp_path / "run", cache)


@pytest.mark.slow
def test_resume_keeps_the_class_order_the_run_was_trained_with(cohort, cache, tmp_path):
    """A run trained with --classes active,control (control the positive class) continues with that order, not
    the manifest's default (control, active): the resumed epochs learn and name the classes as the first did."""
    from mucosa.models.training import resume

    run = tmp_path / "run"
    train(cohort, quick(), run, cache=cache, classes=["active", "control"])
    config = run / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1", "epochs: 2"))
    best = resume(run, cache)
    assert load_checkpoint(best).classes == ["active", "control"]
    last = torch.load(run / "last.ckpt", weights_only=True, map_location="cpu")
    assert last["epoch"] == 1 and last["mucosa"]["classes"] == ["active", "control"]


def test_train_writes_an_atlas_beside_best_ckpt_and_the_card_records_it(atlas_run):
    import hashlib

    from mucosa.inference.atlas import load

    atlas = load(atlas_run.run / "atlas", load_checkpoint(atlas_run.best).weights_sha256)
    rows = load_manifest(atlas_run.run / "split.csv").records
    assert len(atlas) == sum(r.split in ("train", "val") for r in rows)  # one image a row, each passes the gate
    assert {*atlas.records.patients.tolist()} == {r.patient for r in rows if r.split in ("train", "val")}
    val = {r.patient for r in rows if r.split == "val"}
    assert atlas.calibration.frames == 16 * len(val) and atlas.calibration.patients == len(val)
    assert atlas.origin["checkpoint"] == "best.ckpt" and atlas.origin["manifests"][0]["parts"] == ["train", "val"]
    card = load_checkpoint(atlas_run.best).info["atlas"]
    assert card["folder"] == "atlas" and card["frames"] == len(atlas)
    written = (atlas_run.run / "atlas" / "atlas.json").read_bytes()
    assert card["atlas_json_sha256"] == hashlib.sha256(written).hexdigest()
    assert (card["threshold"], card["k"], card["quantile"], card["case_quantile"]) == (
        atlas.calibration.threshold, 10, 0.975, 0.95)


def test_train_no_atlas_writes_none(cohort, tmp_path):
    from mucosa.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(QUICK))  # JSON is YAML
    assert main(["train", "--manifest", str(cohort), "--config", str(config), "--out", str(tmp_path / "run"),
                 "--cache", str(tmp_path / "cache"), "--no-onnx", "--no-atlas"]) == 0
    assert (tmp_path / "run" / "best.ckpt").is_file() and not (tmp_path / "run" / "atlas").exists()
    assert "atlas" not in load_checkpoint(tmp_path / "run" / "best.ckpt").info
