"""The demo's settings (the whole demo runs in tests/evaluation/test_evaluate.py with --quick)."""

from dataclasses import replace

from mucosa.demo import FULL, RUNS, reusable, run_config
from mucosa.models.config import load_config, override


def test_full_demo_trains_without_augmentation_on_each_split():
    """FULL trains with the affine and flips off (so memory of seen patients shows on the within-patient split),
    one run per model and split, each with its own test share; augment=True keeps the config's augmentation."""
    base = load_config("configs/cpu-quick.yaml")
    for model, split in RUNS:
        config = run_config(base, model, split, FULL)
        assert (config.model.kind, config.split.mode) == (model, split)
        assert config.augmentation.probability == 0 and not config.augmentation.flip
        assert config.training.monitor == "val_loss" and config.training.epochs == FULL.epochs
    kept = run_config(base, "cnn", "patient", replace(FULL, augment=True)).augmentation
    assert kept == base.augmentation and kept.probability > 0 and kept.flip


def test_a_run_is_reused_only_when_finished_with_the_same_settings(tmp_path):
    """A second demo into the same folder keeps a finished run of the same settings; one of another seed or
    version (augmentation on), or one without best.ckpt, is trained again."""
    base = load_config("configs/cpu-quick.yaml")
    config = run_config(base, "cnn", "patient", FULL)
    run = tmp_path / "run"
    assert not reusable(run, config)
    run.mkdir()
    (run / "config.yaml").write_text(config.to_yaml())
    assert not reusable(run, config)  # not finished
    (run / "best.ckpt").write_bytes(b"weights")
    assert reusable(run, config)
    assert not reusable(run, run_config(base, "cnn", "patient", replace(FULL, augment=True)))
    assert not reusable(run, override(config, "training", seed=1))
    (run / "config.yaml").write_text("model: [broken")
    assert not reusable(run, config)
