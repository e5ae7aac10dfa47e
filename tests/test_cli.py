"""The ``mucosa`` command ends every run with one line and a documented exit status, never a traceback."""

import csv
import os
import resource
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mucosa import cli
from mucosa.cli import main
from tiny_configs import tiny_config

QUICK = tiny_config()


@pytest.fixture(scope="module")
def tiny(train_tiny):
    return train_tiny("cli", QUICK, patients=9, per_patient=3, seed=3)


@pytest.fixture(scope="module")
def places(tiny, tmp_path_factory, cheap_tokens_module):
    """Inputs good and bad, output places that cannot work, and earlier outputs (a result folder, an atlas, a
    case store with a user, its backup), for the sweep."""
    from media import write_video

    root = tmp_path_factory.mktemp("places")
    (root / "folder").mkdir()
    (root / "file.txt").write_text("a file")
    (root / "garbage.bin").write_bytes(os.urandom(256))
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"cut")
    (root / "empty.csv").write_text("")
    (root / "bad.csv").write_text("path,label\nnowhere.png,active\n")
    (root / "weights.ckpt").write_bytes(b"\0" * 64)
    (root / "not-a-video.mpg").write_bytes(b"\0" * 1024)
    write_video(root / "clip.avi", n=12)
    _atlas_of_other_weights(root / "other-atlas")
    _atlas_of_other_weights(root / "damaged-atlas").joinpath("atlas.json").write_text("{not json")
    image = next((tiny.cohort / "images").rglob("*.png"))
    earlier = root / "earlier"
    earlier.mkdir()
    (earlier / "predictions.csv").write_text("path,probability\nearlier.png,0.5\n")
    shutil.copyfile(tiny.best, root / "model.ckpt")  # building an atlas records it in the model's card
    for argv in (["atlas", "build", "--checkpoint", root / "model.ckpt", "--manifest", tiny.run / "split.csv",
                  "--out", root / "atlas", "--cache", tiny.cache.root],
                 ["store", "upgrade", "--store", root / "store"],
                 ["users", "add", "dr r", "--role", "reviewer", "--store", root / "store"],
                 ["store", "backup", root / "backup", "--store", root / "store"]):
        assert main([str(a) for a in argv]) == 0, argv
    return {"ckpt": str(tiny.best), "manifest": str(tiny.run / "split.csv"), "image": str(image),
            "cohort": str(tiny.cohort), "run": str(tiny.run), **{k: str(root / v) for k, v in {
                "root": ".", "folder": "folder", "file": "file.txt", "garbage": "garbage.bin",
                "broken": "broken.png", "empty": "empty.csv", "badcsv": "bad.csv", "badckpt": "weights.ckpt",
                "fakevideo": "not-a-video.mpg", "video": "clip.avi", "new": "new-out", "otheratlas": "other-atlas",
                "damagedatlas": "damaged-atlas", "noatlas": "no-atlas-here", "earlier": "earlier",
                "atlas": "atlas", "store": "store", "backup": "backup", "cache": tiny.cache.root}.items()}}


@pytest.fixture(scope="module")
def cheap_tokens_module():
    """Users' tokens hashed cheaply for the module's store (as ``cheap_tokens`` does for one test)."""
    from mucosa.store import tokens

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tokens, "COST", (2**10, 8, 1))
        yield


def contents(places: dict) -> dict[str, str]:
    """The SHA-256 of every file of the earlier outputs and inputs (the places, the run, the cohort, the
    cache), by path: a refused command must leave each as it was, and add nothing."""
    import hashlib

    folders = {Path(places[k]) for k in ("root", "run", "cohort", "cache")}
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for folder in folders for p in folder.rglob("*")
            if p.is_file()}


def _atlas_of_other_weights(folder):
    """An atlas (20 frames) of a model with the tiny model's classes and embedding size but other weights."""
    import numpy as np

    from mucosa.inference.atlas import Atlas, AtlasModel, FrameRecords

    vectors = np.random.default_rng(0).normal(size=(20, 128)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    records = FrameRecords.of([f"c{i}" for i in range(20)], ["p"] * 20, ["control"] * 20, [0] * 20, ["x.png"] * 20)
    return Atlas(AtlasModel("b" * 64, ("control", "active"), 128), vectors, records,
                 np.zeros((20, 4, 4), np.uint8)).save(folder)


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "error:" in line]


# Each is refused before any work: exit 2, one error line, no traceback, nothing written.
BAD = [
    # options out of range
    "predict --checkpoint {ckpt} {image} --out {new} --threshold 2",
    "predict --checkpoint {ckpt} {image} --out {new} --threshold -1",
    "predict --checkpoint {ckpt} {image} --out {new} --threshold nan",
    "predict --checkpoint {ckpt} {image} --out {new} --threshold 5",
    "predict --checkpoint {ckpt} {image} --out {new} --threads -2",
    "predict --checkpoint {ckpt} {image} --out {new} --threads 0",
    "predict --checkpoint {ckpt} {image} --out {new} --device cuda:7",
    "predict --checkpoint {ckpt} {image} --out {new} --device tpu",
    "stream {video} --checkpoint {ckpt} --device cuda:7",
    "evaluate --checkpoint {ckpt} --manifest {manifest} --out {new} --device gpu0",
    "explain --checkpoint {ckpt} {image} --out {new} --device cuda:7",
    "stream {video} --checkpoint {ckpt} --window 0",
    "stream {video} --checkpoint {ckpt} --threshold inf",
    "evaluate --checkpoint {ckpt} --manifest {manifest} --out {new} --threshold 2",
    "evaluate --checkpoint {ckpt} --manifest {manifest} --out {new} --threshold nan",
    "evaluate --checkpoint {ckpt} --manifest {manifest} --out {new} --threshold sensitivity=1.5",
    "evaluate --checkpoint {ckpt} --manifest {manifest} --out {new} --threshold youdn",
    "evaluate --checkpoint {ckpt} --manifest {manifest} --out {new} --gallery -1",
    "evaluate --checkpoint {ckpt} --manifest {manifest} --out {new} --bootstrap 0",
    "evaluate --checkpoint {ckpt} --manifest {manifest} --out {new} --seed -1",
    "compare {root} --out {new} --bootstrap -5",
    "explain --checkpoint {ckpt} {image} --out {new} --top 0",
    "train --manifest {manifest} --out {new} --workers -1",
    "train --manifest {manifest} --out {new} --threads -2",
    "train --manifest {manifest} --out {new} --epochs -1",
    "train --manifest {manifest} --out {new} --lr nan",
    "train --manifest {manifest} --out {new} --devices 0",
    "split {manifest} -o {new} --seed -1",
    "split {manifest} -o {new} --val nan",
    "split {manifest} -o {new} --k 1",
    "prepare {manifest} --cache {new} --quality 2",
    "synth {new} --patients 1",
    "model-summary --size -1",
    "model-summary --model resnet",
    "train --manifest {manifest} --out {new} --model timm:",
    "train --manifest {manifest} --out {new} --split random",
    "train --manifest {manifest} --out {new} --logger wandb",
    "pretrain --manifest {manifest} --out {new} --batch-size 1",
    "pretrain --manifest {manifest} --out {new} --set training.batch_size=1",
    "store upgrade {file}",
    "store upgrade --store mysql://u@h/db",
    "store backup {new} --store {folder}",
    "store restore {folder} --store {new}",
    "store restore {file} --store {new}",
    "store export --reviewed -o {new}/m.csv --store {folder}",
    "store export -o {new}/m.csv --store {folder}",
    "users add x --role boss --store {new}",
    "users list --store {new}",
    "users disable nobody --store {new}",
    "audit --store {new}",
    "audit --store {folder} --since 2025-13-01",
    "pretrain --manifest {manifest} --out {new} --parts ,",
    "pretrain --manifest {manifest} --out {new} --parts trian",
    "train --manifest {manifest} --out {new} --init-from {garbage}",
    "train --manifest {manifest} --out {new} --init-from {folder}",
    "train --resume {folder} --allow-partial-init",
    "evaluate --checkpoint {ckpt} --manifest {manifest} --out {new} --aggregate median",
    "predict --checkpoint {ckpt} {image} --out {new} --strategy fsdp",
    "serve --checkpoint {ckpt} --port 70000",
    "serve --checkpoint {ckpt} --queue 0",
    "serve --checkpoint {ckpt} --threshold 2",
    "serve --checkpoint {ckpt} --max-upload-mb -1",
    "serve --checkpoint {ckpt} --window 0",
    "serve --checkpoint {ckpt} --parallel 0",
    "serve --checkpoint {ckpt} --set serve.port=-1",
    "serve --checkpoint {ckpt} --set serve.queue=4",
    "serve --checkpoint {ckpt} --data-root {file}",
    "serve --checkpoint {ckpt} --config {file}",
    # output places that cannot work
    "predict --checkpoint {ckpt} {image} --out {file}",
    "predict --checkpoint {ckpt} {image} --out {file}/sub",
    "predict --checkpoint {ckpt} {image} --out {new} --cache {file}",
    "stream {video} --checkpoint {ckpt} --timeline {folder}",
    "stream {video} --checkpoint {ckpt} --annotate {folder}",
    "stream {video} --checkpoint {ckpt} --timeline {video}",
    "evaluate --checkpoint {ckpt} --manifest {manifest} --out {file}",
    "compare {root} --out {file}",
    "explain --checkpoint {ckpt} {image} --out {file}",
    "export --checkpoint {ckpt} --out {folder}",
    "export --checkpoint {ckpt} --out {ckpt}",
    "train --manifest {manifest} --out {file}",
    "train --resume {file}",
    "synth {file}",
    "split {manifest} -o {folder}",
    "index {cohort}/images -o {folder}",
    "index {manifest} -o {manifest}",
    "prepare {manifest} --cache {file}",
    "demo --out {file} --quick",
    # inputs that are not what they should be
    "predict --checkpoint {badckpt} {image} --out {new}",
    "predict --checkpoint {garbage} {image} --out {new}",
    "predict --checkpoint {folder} {image} --out {new}",
    "predict --checkpoint {ckpt} {file} --out {new}",
    "predict --checkpoint {ckpt} {folder} --out {new}",
    "predict --checkpoint {ckpt} {empty} --out {new}",
    "predict --checkpoint {ckpt} {broken} --out {new}",
    "stream {fakevideo} --checkpoint {ckpt}",
    "stream {image} --checkpoint {ckpt}",
    "stream {folder} --checkpoint {ckpt}",
    "explain --checkpoint {ckpt} {broken} --out {new}",
    "explain --checkpoint {ckpt} {file} --out {new}",
    "explain --checkpoint {ckpt} {video} --out {new} --frames 9-2",
    "evaluate --checkpoint {ckpt} --manifest {empty} --out {new}",
    "evaluate --checkpoint {ckpt} --manifest {badcsv} --out {new}",
    "compare {folder} --out {new}",
    "compare {garbage} --out {new}",
    "export --checkpoint {garbage}",
    "export --checkpoint {ckpt} --int8 --out {new}",
    "check {empty}",
    "check {folder}",
    "split {badcsv} -o {new}",
    "index {folder} -o {new}",
    "train --manifest {empty} --out {new}",
    "train --resume {folder}",
    "prepare {badcsv} --cache {new}",
    "texture --manifest {manifest} --fuse {folder} --out {new}",
    "texture --manifest {manifest} --fuse {file} --out {new}",
    "texture --manifest {badcsv} --out {new}",
    "texture --manifest {empty} --out {new}",
    "texture --manifest {folder} --out {new}",
    "texture --manifest {manifest} --out {file}",
    "texture --manifest {manifest} --out {new} --bootstrap 0",
    "texture --manifest {manifest} --out {new} --channel purple",
    # the atlas: missing, damaged, of another model, bad options
    "predict --checkpoint {ckpt} {image} --out {new} --atlas {noatlas}",
    "predict --checkpoint {ckpt} {image} --out {new} --atlas {damagedatlas}",
    "predict --checkpoint {ckpt} {image} --out {new} --atlas {otheratlas}",
    "predict --checkpoint {ckpt} {image} --out {new} --atlas {otheratlas} --no-atlas",
    "stream {video} --checkpoint {ckpt} --atlas {otheratlas}",
    "stream {video} --checkpoint {ckpt} --atlas {file}",
    "atlas search {noatlas} {image} --checkpoint {ckpt}",
    "atlas search {damagedatlas} {image} --checkpoint {ckpt}",
    "atlas search {otheratlas} {image} --checkpoint {ckpt}",
    "atlas search {otheratlas} {image}",
    "atlas search {otheratlas} {image} --checkpoint {ckpt} -k 0",
    "atlas search {otheratlas} {image} --checkpoint {ckpt} --out {file}",
    "atlas search {otheratlas} {file} --checkpoint {ckpt}",
    "atlas search {otheratlas}",
    "atlas add {otheratlas} --manifest {manifest} --checkpoint {ckpt}",
    "atlas add {otheratlas} --manifest {manifest}",
    "atlas add {noatlas} --manifest {manifest} --checkpoint {ckpt}",
    "atlas add {file} --manifest {manifest} --checkpoint {ckpt}",
    "atlas build --checkpoint {ckpt} --manifest {manifest} --out {file}",
    "atlas build --checkpoint {ckpt} --manifest {empty} --out {new}",
    "atlas build --checkpoint {ckpt} --manifest {badcsv} --out {new}",
    "atlas build --checkpoint {ckpt} --manifest {manifest} --out {new} --parts trian",
    "atlas build --checkpoint {ckpt} --manifest {manifest} --out {new} --parts ,",
    "atlas build --checkpoint {badckpt} --manifest {manifest} --out {new}",
    "atlas build --checkpoint {folder} --manifest {manifest} --out {new}",
    "atlas build --checkpoint {ckpt} --manifest {manifest}",
    "atlas",
    # earlier outputs that a refused command must leave as they were
    "predict --checkpoint {ckpt} {image} --out {earlier} --threshold 2",
    "predict --checkpoint {badckpt} {image} --out {earlier}",
    "evaluate --checkpoint {ckpt} --manifest {badcsv} --out {earlier}",
    "explain --checkpoint {ckpt} {broken} --out {earlier}",
    "train --manifest {manifest} --out {run}",
    "train --resume {run} --epochs 3",
    "train --resume {run} --manifest {manifest}",
    "train --resume {run} --manifest {manifest} --pseudonymise --pseudonym-key k --cache {cache}",
    "train --manifest {manifest} --out {new} --pseudonymise",
    "atlas build --checkpoint {ckpt} --manifest {badcsv} --out {atlas}",
    "atlas build --checkpoint {badckpt} --manifest {manifest} --out {atlas}",
    "atlas add {atlas} --manifest {manifest} --checkpoint {ckpt} --cache {cache}",
    "atlas add {atlas} --manifest {badcsv} --checkpoint {ckpt}",
    "atlas add {atlas} --manifest {manifest} --checkpoint {badckpt}",
    "atlas add {atlas} --manifest {manifest} --checkpoint {ckpt} --parts trian",
    "atlas search {atlas} {broken} --checkpoint {ckpt} --out {earlier}",
    "atlas search {atlas} {image} --checkpoint {ckpt} --out {earlier} -k 0",
    "atlas search {atlas} {image} --checkpoint {badckpt} --out {earlier}",
    "store upgrade --store {atlas}",
    "store backup {new} --store {atlas}",
    "store restore {backup} --store {store}",
    "store restore {atlas} --store {new}",
    "store export -o {earlier}/predictions.csv --store {store}",
    "store export --reviewed -o {earlier} --store {store}",
    "users add dr_r --role boss --store {store}",
    "users disable nobody --store {store}",
    "users enable nobody --store {store}",
    "users token nobody --store {store}",
    "audit --store {store} --since 2025-13-01",
    "audit --store {atlas}",
    "store export --reviewed -o {store}/store.sqlite3 --store {store}",
    "store export --reviewed -o {store}/media/manifest.csv --store {store}",
    "audit --store {store} --classes foo",
    "audit --store {store} --classes ,",
    "audit --store {store} --classes active,active",
    "serve --checkpoint {badckpt} --store {run}",
    "serve --checkpoint {badckpt} --store {store} --token x",
]


@pytest.mark.parametrize("template", BAD)
def test_bad_input_is_refused_with_one_line_and_no_traceback(places, template, capsys):
    argv = template.format(**places).split()
    before = contents(places)
    code = main(argv)
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "Traceback" not in text
    assert code == 2, text
    assert len(error_lines(captured.err)) == 1, captured.err
    assert not Path(places["new"]).exists()  # refused before writing anything
    assert contents(places) == before  # and every earlier output left as it was


# Binary junk where a CSV belongs: one line and a failing status, whatever the reader makes of it (the
# manifest reader is to refuse it with exit 2; until it does, this is reported as an internal error, 70).
JUNK = [
    "evaluate --checkpoint {ckpt} --manifest {garbage} --out {new}",
    "check {garbage}",
    "index {garbage} -o {new}",
    "split {garbage} -o {new}",
    "train --manifest {garbage} --out {new}",
]


@pytest.mark.parametrize("template", JUNK)
def test_junk_input_ends_in_one_line_and_no_traceback(places, template, capsys):
    before = contents(places)
    code = main(template.format(**places).split())
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert code in (2, 70) and len(error_lines(captured.err)) == 1, captured.err
    assert not Path(places["new"]).exists()
    assert contents(places) == before


def test_exit_codes_of_the_command_itself(capsys):
    assert main(["--version"]) == 0
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["predict"]) == 2  # a required option missing
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize("raised, code, line", [
    (ZeroDivisionError("division by zero"), 70,
     "error: internal error: ZeroDivisionError: division by zero (please report this; rerun with --debug for the "
     "traceback)"),
    (KeyboardInterrupt(), 130, "interrupted"),
    (PermissionError(13, "Permission denied", "/data/exam.mpg"), 74, "error: /data/exam.mpg: Permission denied"),
    (OSError(28, "No space left on device", "/runs/a/metrics.json"), 74,
     "error: cannot write /runs/a/metrics.json: No space left on device"),
    (RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598"), 74,
     "error: cannot write a file: the disk is probably full, or a file-size limit was reached (torch: [enforce "
     "fail at inline_container.cc:672] . unexpected pos 704 vs 598)"),
    (MemoryError(), 74, "error: out of memory (try a smaller --batch-size, fewer --workers, or a smaller input)"),
])
def test_every_exception_is_one_line_and_an_exit_status(monkeypatch, capsys, raised, code, line):
    def fails(args):
        raise raised

    monkeypatch.setattr(cli.data, "cmd_check", fails)
    assert main(["check", "m.csv"]) == code
    captured = capsys.readouterr()
    assert captured.err.splitlines() == [line]
    assert "Traceback" not in captured.out


def test_debug_shows_the_traceback_of_an_internal_error(monkeypatch, capsys):
    def fails(args):
        raise ZeroDivisionError("division by zero")

    monkeypatch.setattr(cli.data, "cmd_check", fails)
    assert main(["--debug", "check", "m.csv"]) == 70
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError" in err and "rerun with --debug" not in err
    assert main(["check", "m.csv", "--debug"]) == 70  # after the command too
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("MUCOSA_DEBUG", "1")
    assert main(["check", "m.csv"]) == 70
    assert "Traceback" in capsys.readouterr().err


def test_synth_refuses_to_overwrite_a_cohort(tmp_path, capsys):
    out = tmp_path / "cohort"
    args = ["synth", str(out), "--patients", "2", "--per-patient", "1", "--size", "32"]
    assert main(args) == 0
    manifest = (out / "manifest.csv").read_bytes()
    (out / "manifest.csv").write_bytes(manifest + b"# my edits\n")
    assert main([*args, "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert error_lines(err) == [f"error: {out} already holds a cohort ({out / 'manifest.csv'}); choose another "
                                "folder, or overwrite it with --force"]
    assert (out / "manifest.csv").read_bytes() == manifest + b"# my edits\n"
    assert main([*args, "--force"]) == 0
    assert (out / "manifest.csv").read_bytes() == manifest


@pytest.mark.slow
def test_explain_replaces_an_earlier_result_whole(tiny, places, tmp_path, capsys):
    out = tmp_path / "x"
    images = sorted((tiny.cohort / "images").rglob("*.png"))[:2]
    assert main(["explain", "--checkpoint", str(tiny.best), *map(str, images), "--out", str(out)]) == 0
    first = {p.name for p in out.iterdir()}
    (out / "mine.txt").write_text("the user's")
    assert main(["explain", "--checkpoint", str(tiny.best), str(images[1]), places["broken"], "--out", str(out)]) == 2
    assert {p.name for p in out.iterdir()} == first | {"mine.txt"}  # a failed run changes nothing
    assert main(["explain", "--checkpoint", str(tiny.best), str(images[1]), "--out", str(out)]) == 0
    names = {p.name for p in out.iterdir()}
    assert not [n for n in names if n.startswith(images[0].stem)]  # the earlier run's figures are gone
    assert [n for n in names if n.startswith(images[1].stem)] and "mine.txt" in names
    with open(out / "explain.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["input"] for r in rows] == [str(images[1])]
    assert all((out / f).is_file() for r in rows for f in r["files"].split(";"))
    assert not [n for n in names if n.startswith(".")]


@pytest.mark.slow
def test_a_failed_checkpoint_write_is_one_line(tiny, tmp_path, monkeypatch, capsys):
    import torch

    def full_disk(*args, **kwargs):  # what torch says when the disk fills under it
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", full_disk)
    config = tmp_path / "quick.yaml"
    config.write_text(yaml.safe_dump(QUICK))
    code = main(["train", "--manifest", str(tiny.cohort / "manifest.csv"), "--config", str(config),
                 "--out", str(tmp_path / "run"), "--cache", str(tmp_path / "cache")])
    err = capsys.readouterr().err
    assert code == 74 and "Traceback" not in err
    (line,) = error_lines(err)
    assert line.startswith("error: cannot write")
    assert not list((tmp_path / "run").glob("*.ckpt"))


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(resource, "RLIMIT_FSIZE"), reason="no file-size limit on this system")
def test_the_file_size_limit_ends_in_one_line_not_a_killed_process(tiny, tmp_path):
    out = tmp_path / "model.onnx"

    def limit() -> None:  # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))

    done = subprocess.run([sys.executable, "-m", "mucosa", "export", "--checkpoint", str(tiny.best), "--out", str(out)],
                          capture_output=True, text=True, timeout=300, preexec_fn=limit,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 74, done.stderr
    assert "Traceback" not in done.stderr
    assert error_lines(done.stderr) == [f"error: cannot write {out}: File too large (the file-size limit, see "
                                        "`ulimit -f`)"]
    assert list(tmp_path.iterdir()) == []  # neither the model nor a temporary file


@pytest.mark.parametrize("command", [["predict", "x.png"], ["stream", "x.mp4"], ["evaluate", "--manifest", "m.csv",
                                                                                    "--out", "o"], ["explain", "x.png",
                                                                                                    "--out", "o"]])
def test_the_runtime_is_auto_unless_asked(command):
    parser = cli.build_parser()
    assert parser.parse_args([*command, "--checkpoint", "c.ckpt"]).runtime == "auto"
    for runtime in ("torch", "onnx"):
        assert parser.parse_args([*command, "--checkpoint", "c.ckpt", "--runtime", runtime]).runtime == runtime


@pytest.mark.slow
def test_explain_says_which_runtime_scores_and_that_grad_cam_runs_pytorch(tiny, tmp_path, capsys):
    image = next((tiny.cohort / "images").rglob("*.png"))
    assert main(["explain", str(image), "--checkpoint", str(tiny.best), "--out", str(tmp_path / "x"),
                 "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "runtime: onnxruntime fp32 on cpu (auto; exported in memory)" in lines
    assert "feature maps and Grad-CAM: pytorch fp32 on cpu (they need gradients)" in lines


def test_the_shortcut_flags_set_real_settings_and_each_command_keeps_its_batch_rule(capsys):
    from mucosa.cli.options import SHORTCUTS
    from mucosa.models.config import RunConfig

    defaults = RunConfig().to_dict()
    assert [s.key for s in SHORTCUTS.values() if s.key.partition(".")[2] not in defaults[s.key.partition(".")[0]]] \
        == []
    parser = cli.build_parser()
    assert parser.parse_args(["train", "--batch-size", "1"]).batch_size == 1  # a classifier trains on one frame
    assert main(["pretrain", "--batch-size", "1"]) == 2  # a contrastive batch compares its frames: at least 2
    assert error_lines(capsys.readouterr().err) == ["mucosa pretrain: error: argument --batch-size: 1 must be at "
                                                    "least 2"]
    assert main(["pretrain", "--resume", "P", "--set", "training.batch_size=1"]) == 2  # the same rule for --set
    assert capsys.readouterr().err.splitlines() == ["error: --set training.batch_size: 1 must be at least 2"]


def test_train_devices_takes_every_value_its_help_offers():
    parser = cli.build_parser()
    for text, value in (("-1", -1), ("0,1", "0,1"), ("auto", "auto"), ("2", 2)):
        assert parser.parse_args(["train", "--devices", text]).devices == value
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--devices", "0"])


def test_the_pseudonym_key_can_come_from_the_environment(monkeypatch):
    monkeypatch.setenv("MUCOSA_PSEUDONYM_KEY", "k-from-env")
    for command in (["train"], ["evaluate", "--checkpoint", "c", "--manifest", "m", "--out", "o"],
                    ["texture", "--manifest", "m", "--out", "o"], ["compare", "r", "--out", "o"]):
        assert cli.build_parser().parse_args([*command, "--pseudonymise"]).pseudonym_key == "k-from-env"
    assert cli.build_parser().parse_args(["train", "--pseudonym-key", "given"]).pseudonym_key == "given"
    monkeypatch.delenv("MUCOSA_PSEUDONYM_KEY")
    assert cli.build_parser().parse_args(["train", "--pseudonymise"]).pseudonym_key is None


def test_the_parser_is_built_without_the_deep_learning_libraries():
    """``mucosa --help`` and the commands that need no model start at once: no PyTorch, Lightning, scikit-learn."""
    code = ("import sys; from mucosa.cli import build_parser; build_parser().parse_args(['check', 'm.csv']); "
            "print(sorted({'torch', 'lightning', 'sklearn', 'onnxruntime'} & set(sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
