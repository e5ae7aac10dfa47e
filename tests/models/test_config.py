"""Typed config: every value checked when read, one line per problem with its key path, --set, --print-config."""

import time
from pathlib import Path

import pytest
import yaml

from mucosa.cli import main
from mucosa.data.preparation import Preprocessing
from mucosa.errors import ConfigError
from mucosa.models.config import RunConfig, apply_settings, config_from_dict, load_config, parse_setting


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text(text)
    return path


def problems(error: pytest.ExceptionInfo) -> list[str]:
    return str(error.value).splitlines()


def test_yaml_number_forms_are_numbers(tmp_path):
    config = load_config(write(tmp_path, "training: {lr: 1e-3, epochs: 1e1, weight_decay: 5E-4}\n"
                                         "augmentation: {rotate: 15}\n"))
    assert config.training.lr == pytest.approx(0.001) and isinstance(config.training.lr, float)
    assert config.training.epochs == 10 and isinstance(config.training.epochs, int)
    assert config.training.weight_decay == pytest.approx(5e-4)
    assert config.augmentation.rotate == 15.0 and isinstance(config.augmentation.rotate, float)
    # a quoted number in a file or from Python is read as the number it spells
    assert config_from_dict({"training": {"lr": "3e-4"}}).training.lr == pytest.approx(3e-4)


def test_flip_no_is_refused_with_its_key_path(tmp_path):
    path = write(tmp_path, 'augmentation: {flip: "no"}\n')
    with pytest.raises(ConfigError) as error:
        load_config(path)
    assert problems(error) == [f"{path}: augmentation.flip: expected true or false, got 'no'"]


def test_every_problem_is_one_line_naming_its_key(tmp_path):
    path = write(tmp_path, "training: {epochs: -1, lr: fast, threads: -2, workers: -1, batch_size: 2.5}\n"
                           "model: {kind: resnet, size: 8}\nsplit: {val: 1.5}\npreprocessing: {channel: pink}\n")
    with pytest.raises(ConfigError) as error:
        load_config(path)
    lines = problems(error)
    assert all(line.startswith(f"{path}: ") for line in lines)
    found = {line.split(": ")[1]: line.split(": ", 2)[2] for line in lines}
    assert found == {"training.epochs": "must be at least 1", "training.lr": "expected a number, got 'fast'",
                     "training.threads": "must be at least 0", "training.workers": "must be at least 0",
                     "training.batch_size": "expected a whole number, got 2.5",
                     "model.kind": "expected one of cnn-lstm, cnn, timm:NAME (a timm backbone, e.g. timm:resnet18), "
                                   "got 'resnet'",
                     "model.size": "input size 8x8 is too small for the network: the minimum is 16x16",
                     "split.val": "must be less than 1.0",
                     "preprocessing.channel": "expected one of auto, luminance, red, green, blue, got 'pink'"}


@pytest.mark.parametrize("value, message", [(0, "training.epochs: must be at least 1"),
                                            (True, "training.epochs: expected a whole number, got True"),
                                            (".nan", "training.lr: expected a finite number, got nan")])
def test_values_that_trained_forever_or_reported_success_are_refused(tmp_path, value, message):
    key = "lr" if message.startswith("training.lr") else "epochs"
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, f"training: {{{key}: {value}}}\n"))


def test_unknown_keys_name_the_closest_valid_one(tmp_path):
    with pytest.raises(ConfigError) as error:
        load_config(write(tmp_path, "training: {lrr: 0.1}\naugmentaton: {}\nmodel: {zzzz: 1}\n"))
    lines = problems(error)
    assert f"{tmp_path / 'c.yaml'}: training.lrr: unknown setting; did you mean 'lr'?" in lines
    assert f"{tmp_path / 'c.yaml'}: augmentaton: unknown section; did you mean 'augmentation'?" in lines
    assert any(line.endswith("model.zzzz: unknown setting; known: kind, size, num_classes, conv_dropout, "
                             "dense_dropout, lstm_units, in_channels, init, bn_momentum, input_norm, pretrained")
               for line in lines)


def test_not_a_mapping_and_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match="c.yaml: training: expected a mapping of settings, got list"):
        load_config(write(tmp_path, "training: [1, 2]\n"))
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML"):
        load_config(write(tmp_path, "training: {lr: [\n"))


BOMB = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{n}: &{n} [{', '.join([f'*{m}'] * 9)}]\n" for m, n in zip("abcdefgh", "bcdefghi"))


def test_yaml_aliases_and_deep_nesting_are_refused_before_they_expand(tmp_path):
    """A 0.3 KB alias bomb expands to 9**9 strings; it must be refused at once, in a file and in --set."""
    tic = time.perf_counter()
    with pytest.raises(ConfigError, match="c.yaml: not valid YAML .aliases .*name. are not allowed"):
        load_config(write(tmp_path, BOMB + "training: {lr: 1e-3}\n"))
    with pytest.raises(ConfigError, match="--set .*aliases .*name. are not allowed"):
        parse_setting("training.lr=[&a [1, 2], *a]")
    with pytest.raises(ConfigError, match="nested deeper than"):
        parse_setting("training.lr=" + "[" * 5000 + "]" * 5000)
    assert time.perf_counter() - tic < 2
    assert load_config(write(tmp_path, "training: &t {lr: 1e-3}\n")).training.lr == pytest.approx(1e-3)  # no alias


def test_saved_config_reads_back_equal(tmp_path):
    config = config_from_dict({"model": {"kind": "cnn", "size": 48}, "preprocessing": {"crop": [0, 0, 40, 40]},
                               "training": {"lr": 3e-5, "devices": "auto", "logger": "mlflow"},
                               "augmentation": {"flip": False}})
    assert load_config(config.save(tmp_path / "saved.yaml")) == config
    assert config.preprocessing.size == 48 and config.preprocessing.crop == (0, 0, 40, 40)


def test_preprocessing_stays_frozen_hashable_and_checked():
    prep = Preprocessing(size=32, crop=[1, 2, 30, 31])
    same = Preprocessing(size=32, crop=(1, 2, 30, 31))
    assert prep == same and len({prep, same}) == 1
    # the cache key (which names cached frames on disk) keeps its keys and plain values
    assert Preprocessing().cache_key() == {"size": 300, "crop": "auto", "channel": "auto", "fov_frames": 32, "tile": 0}
    assert prep.to_dict()["crop"] == [1, 2, 30, 31]
    assert prep.replace(tile=16).tile == 16 and prep.tile == 0
    with pytest.raises(ConfigError, match="preprocessing.tile: must be 0"):
        prep.replace(tile=4)
    with pytest.raises(ConfigError, match="preprocessing.size: cannot be changed"):
        prep.size = 64
    with pytest.raises(ConfigError, match=r"preprocessing.crop: expected auto, disc, none or a box .*\[5, 5, 2, 9\]"):
        Preprocessing(crop=[5, 5, 2, 9])


def test_parse_setting_reads_the_value_as_yaml():
    assert parse_setting("training.lr=3e-4") == ("training.lr", pytest.approx(3e-4))
    assert parse_setting("preprocessing.crop=[0, 0, 9, 9]") == ("preprocessing.crop", [0, 0, 9, 9])
    assert parse_setting("augmentation.flip=false") == ("augmentation.flip", False)
    assert parse_setting("training.devices=auto") == ("training.devices", "auto")
    for bad in ("training.lr", "lr=3", "training.lr.x=1", ".lr=1"):
        with pytest.raises(ConfigError, match="expected SECTION.KEY=VALUE"):
            parse_setting(bad)


def test_every_field_can_be_set_and_is_checked():
    """Each setting is reached by --set: a valid value is taken, a mapping is refused naming that key."""
    defaults = RunConfig().to_dict()
    for section, values in defaults.items():
        for name, value in values.items():
            key = f"{section}.{name}"
            assert apply_settings(RunConfig(), {key: value}).to_dict()[section][name] == value
            with pytest.raises(ConfigError) as error:
                apply_settings(RunConfig(), {key: {"a": 1}}, labels={key: f"--set {key}"})
            assert problems(error)[0].startswith(f"command line: --set {key}: "), problems(error)


def run_cli(capsys, *args) -> tuple[int, str, str]:
    code = main(["train", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_print_config_resolves_file_flags_and_set(tmp_path, capsys):
    path = write(tmp_path, "model: {size: 64}\ntraining: {epochs: 8, lr: 1e-3}\n")
    code, out, _ = run_cli(capsys, "--config", path, "--epochs", "3", "--set", "training.lr=3e-4", "--set",
                           "augmentation.flip=false", "--set", "preprocessing.crop=[0, 0, 20, 20]", "--logger",
                           "mlflow", "--print-config")
    assert code == 0
    printed = yaml.safe_load(out)
    assert printed["model"]["size"] == 64 and printed["training"]["epochs"] == 3
    assert printed["training"]["lr"] == pytest.approx(3e-4) and printed["augmentation"]["flip"] is False
    assert printed["preprocessing"]["crop"] == [0, 0, 20, 20] and printed["training"]["logger"] == "mlflow"
    assert config_from_dict(printed) == apply_settings(load_config(path), {
        "training.epochs": 3, "training.lr": 3e-4, "augmentation.flip": False,
        "preprocessing.crop": [0, 0, 20, 20], "training.logger": "mlflow"})


@pytest.mark.parametrize("args, message", [
    (["--threads", "-2"], "--threads|must be at least 0"),
    (["--workers", "-1"], "--workers|must be at least 0"),
    (["--epochs", "0"], "--epochs|must be at least 1"),
    (["--set", "training.lrr=1"], "--set training.lrr: unknown setting; did you mean 'lr'?"),
    (["--set", "augmentation.flip=no thanks"], "--set augmentation.flip: expected true or false, got 'no thanks'"),
    (["--set", "lr=1"], "expected SECTION.KEY=VALUE"),
])
def test_bad_command_line_values_exit_2_before_any_work(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code, _, err = run_cli(capsys, "--manifest", tmp_path / "missing.csv", "--out", out, *args)
    assert code == 2 and all(part in err for part in message.split("|")) and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize("args, named", [
    (["--init-from", "encoder.ckpt"], "--init-from"),
    (["--manifest", "other.csv"], "--manifest"),
    (["--classes", "control,active"], "--classes"),
])
def test_resume_refuses_inputs_it_would_ignore(tmp_path, capsys, args, named):
    code, _, err = run_cli(capsys, "--resume", tmp_path / "run", *args)
    assert code == 2 and f"{named} would not apply" in err and len(err.strip().splitlines()) == 1


def test_resume_refuses_settings_it_would_not_apply(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--resume", tmp_path / "run", "--lr", "0.1", "--set", "training.epochs=9")
    assert code == 2 and "--lr, --set training.epochs would not apply" in err
    (tmp_path / "run").mkdir()
    RunConfig().save(tmp_path / "run" / "config.yaml")
    code, out, _ = run_cli(capsys, "--resume", tmp_path / "run", "--print-config")
    assert code == 0 and config_from_dict(yaml.safe_load(out)) == RunConfig()
