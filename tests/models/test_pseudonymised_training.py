"""``mucosa train --pseudonymise``: no file of the run and no line shown names a patient or a source path, and
the run still resumes, and evaluate still tells the patients who trained the model, given the same key."""

import contextlib
import io
import shutil
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import torch
import yaml

from mucosa.cli import main
from mucosa.data.cache import FrameCache
from mucosa.data.manifest import load_manifest, write_manifest
from mucosa.data.synth import synthesize_cohort
from mucosa.errors import MucosaWarning
from mucosa.evaluation.evaluate import evaluate
from mucosa.models.checkpoint import load_checkpoint
from tiny_configs import TINY

pytestmark = pytest.mark.slow  # a model is trained once for the module

PATIENT = "Roe_Richard_1980"  # a patient id, planted in every row of one patient
FOLDER = "Doe_John_1970"      # a folder of the source path, above every image and the manifest
KEY = "the key kept by the study"
PLANTED = (PATIENT.encode(), FOLDER.encode())


@dataclass
class Run:
    folder: Path
    manifest: Path
    cache: Path
    shown: str  # what the command printed


def mucosa(*argv) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Run:
    root = tmp_path_factory.mktemp("pseudonymised")
    synthetic = load_manifest(synthesize_cohort(root / FOLDER / "cohort", patients=8, per_patient=6, size=40, seed=2))
    records = [replace(r, patient=PATIENT if r.patient == "P01" else r.patient) for r in synthetic.records]
    manifest = write_manifest(records, root / FOLDER / "manifest.csv")
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({**TINY, "split": {"mode": "within-patient", "test": 0.3, "val": 0.3,
                                                        "seed": 1}}))
    code, shown = mucosa("train", "--manifest", manifest, "--config", config, "--out", root / "run", "--cache",
                         root / "cache", "--pseudonymise", "--pseudonym-key", KEY)
    assert code == 0, shown
    return Run(root / "run", manifest, root / "cache", shown)


def planted_in(folder: Path) -> list[str]:
    """Every file of ``folder`` (checkpoints, ONNX files and the atlas included) that holds a planted name."""
    return [str(p) for p in folder.rglob("*") if p.is_file() and any(name in p.read_bytes() for name in PLANTED)]


def test_no_file_of_the_run_and_no_line_shown_names_a_patient_or_a_path(run):
    files = {p.relative_to(run.folder).as_posix() for p in run.folder.rglob("*") if p.is_file()}
    assert {"split.csv", "run.json", "config.yaml", "metrics.csv", "best.ckpt", "last.ckpt", "best.onnx",
            "atlas/atlas.json"} <= files, files
    assert planted_in(run.folder) == []
    assert PATIENT not in run.shown and FOLDER not in run.shown
    assert "leakage: 8 patient(s) on more than one side (ID-" in run.shown  # the split report, in pseudonyms
    split = load_manifest(run.folder / "split.csv", check_files=False)
    assert all(r.patient.startswith("ID-") and r.path.name.startswith("ID-") for r in split.records)
    card = load_checkpoint(run.folder / "best.ckpt").info
    assert card["split"]["patients"]["train"] and all(p.startswith("ID-") for p in card["split"]["patients"]["train"])
    assert KEY not in (run.folder / "run.json").read_text() and card["split"]["pseudonym_key_check"].startswith("ID-")
    assert card["atlas"]["frames"] > 0  # the atlas was made from the real frames, and names them by pseudonyms
    assert (run.folder / "atlas" / "frames.csv").read_text().count("ID-") >= card["atlas"]["frames"]


def test_evaluate_with_the_key_tells_the_patients_who_trained_the_model(run, tmp_path):
    with pytest.warns(MucosaWarning, match=r"8 evaluated patient\(s\) were used to train this model") as caught:
        evaluate(run.folder / "best.ckpt", run.manifest, tmp_path / "ev", split="all", n_boot=5, gallery_size=0,
                 pseudonymise=True, pseudonym_key=KEY, cache=FrameCache(run.cache))
    assert not any(PATIENT in str(w.message) for w in caught)
    assert planted_in(tmp_path / "ev") == []


def test_evaluate_without_the_key_says_it_cannot_tell(run, tmp_path):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = evaluate(run.folder / "best.ckpt", run.manifest, split="auto", n_boot=5, gallery_size=0,
                          cache=FrameCache(run.cache))
    said = [str(w.message) for w in caught]
    assert any("cannot tell which evaluated patients trained it" in s for s in said), said
    assert "unknown" in result.metrics["evaluated"]  # never "none of these patients were used in training"


def test_a_pseudonymised_run_resumes_with_its_manifest_and_key(run, tmp_path):
    folder = shutil.copytree(run.folder, tmp_path / "run")
    config = folder / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1", "epochs: 2"))
    code, shown = mucosa("train", "--resume", folder, "--cache", run.cache)
    assert code == 2 and "--pseudonym-key" in shown, shown
    code, shown = mucosa("train", "--resume", folder, "--manifest", run.manifest, "--cache", run.cache,
                         "--pseudonymise", "--pseudonym-key", "another key")
    assert code == 2 and "not the key this run was trained with" in shown, shown
    code, shown = mucosa("train", "--resume", folder, "--manifest", run.manifest, "--cache", run.cache,
                         "--pseudonymise", "--pseudonym-key", KEY)
    assert code == 0, shown
    assert torch.load(folder / "last.ckpt", weights_only=True, map_location="cpu")["epoch"] == 1
    assert planted_in(folder) == [] and PATIENT not in shown and FOLDER not in shown


def test_train_pseudonymise_needs_a_key(run, tmp_path):
    code, shown = mucosa("train", "--manifest", run.manifest, "--out", tmp_path / "new", "--pseudonymise")
    assert code == 2 and "needs --pseudonym-key" in shown and not (tmp_path / "new").exists()
