"""What evaluate and compare write is safe to open: no CSV injection, no markup injection, nothing identifying
under --pseudonymise, honest intervals, the caller's matplotlib backend kept, outputs replaced as one set."""

import csv
import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from mucosa.cli import main
from mucosa.data.cache import FrameCache
from mucosa.data.manifest import load_manifest, write_manifest
from mucosa.data.synth import synthesize_cohort
from mucosa.evaluation import evaluate as evaluate_module
from mucosa.evaluation.compare import compare, load_evaluation
from mucosa.evaluation.evaluate import evaluate
from mucosa.models.config import config_from_dict
from mucosa.models.training import train
from mucosa.tables import FORMULA_STARTS, original_cell, read_csv, safe_cell
from tiny_configs import TINY

PERSON = "Doe_John_1970"  # the folder that holds the checkpoint, the manifest and the images
NAMES = ["Doe, John 1970-01-01", "Roe_Richard_1980", "Mueller Anna Maria", '=HYPERLINK("http://evil.example","x")',
         "<script>alert('pwned')</script>", "<img src=x onerror=alert(1)>", "+49 170 5550101", "@Smith Jane",
         "-Lee Ann 1990", "Garcia|Maria Lopez"]
REGIONS = {"rectum": "=1+2 rectum", "left colon": "-left colon"}  # region names are free text too
LABELS = {"control": "@control", "active": "active"}  # so are class names: they reach every CSV
NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


@dataclass
class Cohort:
    root: Path        # holds PERSON/
    checkpoint: Path
    manifest: Path
    cache: FrameCache


@pytest.fixture(scope="module")
def named(tmp_path_factory) -> Cohort:
    """A tiny model trained on 10 synthetic patients whose ids are names (some of them formulas or markup),
    everything under a folder named like a patient."""
    root = tmp_path_factory.mktemp("named")
    folder = root / PERSON
    synthetic = load_manifest(synthesize_cohort(folder / "cohort", patients=10, per_patient=4, size=40, seed=3))
    rename = {f"P{i + 1:02d}": name for i, name in enumerate(NAMES)}
    records = [replace(r, patient=rename[r.patient], region=REGIONS.get(r.region, r.region),
                       label=LABELS[r.label]) for r in synthetic.records]
    manifest = write_manifest(records, folder / "manifest.csv")
    cache = FrameCache(root / "cache")
    best = train(manifest, config_from_dict(TINY), folder / "run", cache=cache)
    return Cohort(root, Path(best), manifest, cache)


def raw_cells(path: Path) -> list[str]:
    with open(path, newline="", encoding="utf-8") as handle:
        return [cell for row in csv.reader(handle) for cell in row]


def output_text(folder: Path) -> str:
    """Every text output of a folder (CSV, JSON, HTML, Markdown), embedded images left out."""
    text = "".join(p.read_text(encoding="utf-8") for p in sorted(folder.rglob("*"))
                   if p.suffix in (".csv", ".json", ".html", ".md"))
    return re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "", text)


# ------------------------------------------------------------------------------------------------ CSV cells

@pytest.mark.parametrize("value", ["=1+1", "+1+1", "-1+1", "@SUM(A1)", "\t=1", "\r=1", "'quoted", "'=x",
                                   '=HYPERLINK("http://x")', "-2+3+cmd|' /C calc'!A0"])
def test_safe_cell_neutralises_formulas_and_is_undone_exactly(value):
    written = safe_cell(value)
    assert written.startswith("'") and original_cell(written) == value


@pytest.mark.parametrize("value", ["P01", "rectum", "0.25", "-0.25", "+3", "1e-05", "", "a=b"])
def test_safe_cell_leaves_plain_text_and_numbers_alone(value):
    assert safe_cell(value) == value and original_cell(value) == value
    assert safe_cell(-3) == -3 and safe_cell(0.5) == 0.5


@pytest.mark.slow
def test_no_csv_cell_of_evaluate_starts_like_a_formula(named, tmp_path):
    out = tmp_path / "ev"
    evaluate(named.checkpoint, named.manifest, out, split="all", n_boot=20, cache=named.cache, gallery_size=0)
    injected = {"patients.csv": 0, "predictions.csv": 0, "regions.csv": 0, "files.csv": 0}
    for name in injected:
        for cell in raw_cells(out / name):
            assert not cell.startswith(FORMULA_STARTS) or NUMBER.match(cell), (name, cell)
            injected[name] += cell.startswith("'")
    assert all(injected.values()), injected  # each file held hostile text, neutralised
    patients = {r["patient"] for r in read_csv(out / "patients.csv")}
    assert patients == set(NAMES)  # read back exactly, '|' in an id included
    regions = read_csv(out / "regions.csv")
    regions_in = {(r.patient, r.region) for r in load_manifest(named.manifest).records}
    assert {(r["patient"], r["region"]) for r in regions} == regions_in
    assert {"=1+2 rectum", "-left colon"} <= {region for _, region in regions_in}
    assert {r["label"] for r in read_csv(out / "files.csv")} == {"@control", "active"}
    frames = read_csv(out / "predictions.csv")
    evaluation = load_evaluation(out)  # compare reads the original labels and ids back
    assert list(evaluation.patients) == [r["patient"] for r in frames]
    assert list(evaluation.y_true) == [int(r["label"] == "active") for r in frames]


# ------------------------------------------------------------------------------------------ markup, backend

@pytest.mark.slow
def test_reports_show_injected_markup_as_text(named, tmp_path):
    run = tmp_path / "<img src=y onerror=alert(2)>"  # a run's folder name becomes its name in compare
    evaluate(named.checkpoint, named.manifest, run, split="all", n_boot=20, cache=named.cache, gallery_size=0)
    compare([run], tmp_path / "cmp", n_boot=20)
    for path in (run / "report.md", run / "report.html", tmp_path / "cmp" / "comparison.md",
                 tmp_path / "cmp" / "comparison.html"):
        text = path.read_text(encoding="utf-8")
        assert "<script" not in text and "<img src=" not in text and "onerror=alert" in text, path.name
        assert "&lt;img src=" in text, path.name
    markdown = (run / "report.md").read_text(encoding="utf-8")
    assert "&lt;script&gt;alert('pwned')&lt;/script&gt;" in markdown
    assert "Garcia\\|Maria Lopez" in markdown  # a '|' in an id does not split the table row
    table = markdown.split("## Patients", 1)[1].strip().split("\n\n", 1)[0].splitlines()
    assert len(table) == 2 + len(NAMES)
    assert len({len(re.findall(r"(?<!\\)\|", line)) for line in table}) == 1  # every row has the header's cells


@pytest.mark.slow
def test_a_report_keeps_the_callers_matplotlib_backend(named, tmp_path):
    script = f"""
import sys, matplotlib
matplotlib.use("svg")
from mucosa.data.cache import FrameCache
from mucosa.evaluation.evaluate import evaluate
from mucosa.evaluation.compare import compare
evaluate({str(named.checkpoint)!r}, {str(named.manifest)!r}, {str(tmp_path / "ev")!r}, split="all", n_boot=5,
         cache=FrameCache({str(named.cache.root)!r}), gallery_size=1)
compare([{str(tmp_path / "ev")!r}], {str(tmp_path / "cmp")!r}, n_boot=5)
print(matplotlib.get_backend(), "matplotlib.pyplot" in sys.modules)
"""
    source = str(Path(evaluate_module.__file__).parents[2])  # this checkout's src/
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": source})
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-2:] == ["svg", "False"]
    assert (tmp_path / "ev" / "roc.png").is_file() and (tmp_path / "cmp" / "compare_roc.png").is_file()


# ---------------------------------------------------------------------------------------------- pseudonymise

@pytest.mark.slow
def test_pseudonymise_leaves_no_name_or_path_in_any_output_or_on_the_console(named, tmp_path, capsys):
    capsys.readouterr()  # what training printed is not evaluate's
    out = tmp_path / "ev"
    code = main(["evaluate", "--checkpoint", str(named.checkpoint), "--manifest", str(named.manifest),
                 "--out", str(out), "--split", "all", "--bootstrap", "20", "--gallery", "1",
                 "--cache", str(named.cache.root), "--pseudonymise"])
    console = capsys.readouterr()
    assert code == 0, console.err
    assert "were used to train" in console.err  # the leakage warning still speaks, without the ids
    text = output_text(out) + console.out + console.err
    secrets = [PERSON, str(named.checkpoint), str(named.manifest), *NAMES,
               *(html_form for name in NAMES for html_form in (name.replace("<", "&lt;"),))]
    leaked = [s for s in secrets if s in text]
    assert not leaked, leaked
    assert len(text) > 1000 and "ID-" in text  # the files were read, the pseudonyms are there
    stored = json.loads((out / "metrics.json").read_text())
    assert stored["pseudonymised"] and stored["checkpoint"].startswith("ID-") and stored["manifest"].startswith("ID-")
    assert all(r["patient"].startswith("ID-") and r["path"].startswith("ID-")
               for r in read_csv(out / "predictions.csv"))


@pytest.mark.slow
def test_pseudonymise_hides_ids_in_an_error_too(named, tmp_path, capsys):
    records = load_manifest(named.manifest).records
    broken = write_manifest([replace(records[0], path=records[0].path.with_name(f"{NAMES[0]}.png")), *records[1:]],
                            named.root / PERSON / "broken.csv")
    capsys.readouterr()
    code = main(["evaluate", "--checkpoint", str(named.checkpoint), "--manifest", str(broken), "--out",
                 str(tmp_path / "ev"), "--split", "all", "--cache", str(named.cache.root), "--pseudonymise"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "--pseudonymise" in err
    assert PERSON not in err and NAMES[0] not in err


# --------------------------------------------------------------------------------------------- intervals

@pytest.mark.slow
def test_every_figure_says_its_interval_and_none_is_zero_width(named, tmp_path):
    result = evaluate(named.checkpoint, named.manifest, tmp_path / "ev", split="all", n_boot=50,
                      cache=named.cache, gallery_size=0)
    patients = read_csv(tmp_path / "ev" / "patients.csv")
    right = sum(p["correct"] == "1" for p in patients)
    accuracy = result["patient"]["accuracy"]
    assert accuracy["ci_method"] == "clopper-pearson" and accuracy["count"] == [right, len(patients)]
    from scipy.stats import binomtest

    exact = binomtest(right, len(patients)).proportion_ci(method="exact")
    assert accuracy["ci"] == [pytest.approx(exact.low), pytest.approx(exact.high)]
    for level in ("patient", "file", "image"):
        for name, entry in result[level].items():
            exact_kind = level != "image" and name in ("accuracy", "sensitivity", "specificity", "ppv", "npv")
            assert entry["ci_method"] == ("clopper-pearson" if exact_kind else "bootstrap-patients"), (level, name)
            if entry["ci"] is None:
                assert entry["ci_note"], (level, name)
            else:
                assert entry["ci"][0] < entry["ci"][1], (level, name)
    page = (tmp_path / "ev" / "report.html").read_text(encoding="utf-8")
    assert "Clopper–Pearson" in page and "bootstrap over patients" in page
    assert f"{right}/{len(patients)}" in page


# ------------------------------------------------------------------------------------------- output sets

@pytest.mark.slow
def test_outputs_are_replaced_as_one_set_or_not_at_all(named, tmp_path, monkeypatch):
    out = tmp_path / "ev"
    evaluate(named.checkpoint, named.manifest, out, split="all", n_boot=10, cache=named.cache, gallery_size=1)
    assert any((out / "gallery").iterdir())
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    def fail(*args, **kwargs):
        raise RuntimeError("disk full while drawing")

    monkeypatch.setattr(evaluate_module, "write_report", fail)
    with pytest.raises(RuntimeError):
        evaluate(named.checkpoint, named.manifest, out, split="all", n_boot=10, threshold="0.2",
                 cache=named.cache, gallery_size=0)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # untouched
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no staging folder left
    monkeypatch.undo()
    evaluate(named.checkpoint, named.manifest, out, split="all", n_boot=10, cache=named.cache, gallery_size=0)
    assert not (out / "gallery").exists()  # the earlier run's gallery does not mix into this one


# ------------------------------------------------------------------------------------------- compare errors

@pytest.fixture(scope="module")
def evaluated(named, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("evaluated") / "ev"
    evaluate(named.checkpoint, named.manifest, out, split="all", n_boot=10, cache=named.cache, gallery_size=0)
    return out


def _copy(folder: Path, to: Path) -> Path:
    to.mkdir()
    for p in folder.iterdir():
        if p.is_file():
            (to / p.name).write_bytes(p.read_bytes())
    return to


@pytest.mark.slow
@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / "metrics.json").write_text((f / "metrics.json").read_text()[:300]),
     "metrics.json: unreadable or truncated"),
    (lambda f: (f / "metrics.json").write_text("[1, 2]"), "metrics.json: not the metrics"),
    (lambda f: (f / "metrics.json").write_text('{"classes": ["a", "b"]}'), "metrics.json: not the metrics"),
    (lambda f: (f / "predictions.csv").unlink(), "predictions.csv: missing"),
    (lambda f: (f / "predictions.csv").write_text((f / "predictions.csv").read_text()[:-40]), "predictions.csv: a row"),
    (lambda f: (f / "predictions.csv").write_text("path,frame\nx,1\n"), "predictions.csv: no column"),
    (lambda f: (f / "predictions.csv").write_text("".join((f / "predictions.csv").read_text().splitlines(True)[:-3])),
     "predictions.csv: 37 frames but metrics.json counts 40"),
    (lambda f: (f / "metrics.json").write_text('{"classes": ["a", "b"], "image": {"accuracy": 3}, "patient": {}, '
                                               '"counts": {}}'), "predictions.csv: labels"),
    (lambda f: (f / "predictions.csv").write_bytes(b"\xff\xfe\x00garbage"), "predictions.csv: unreadable"),
])
def test_compare_on_a_damaged_evaluation_says_what_is_wrong_in_one_line(evaluated, tmp_path, capsys, damage, message):
    folder = _copy(evaluated, tmp_path / "damaged")
    damage(folder)
    code = main(["compare", str(evaluated), str(folder), "--out", str(tmp_path / "cmp"), "--bootstrap", "10"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith("error: "), err
    assert message in err and str(folder) in err, err
    assert not (tmp_path / "cmp" / "comparison.html").exists()


@pytest.mark.slow
def test_compare_shows_damaged_metric_entries_as_missing_rather_than_crashing(evaluated, tmp_path):
    folder = _copy(evaluated, tmp_path / "odd")
    stored = json.loads((folder / "metrics.json").read_text())
    stored["image"].update(accuracy=3, roc_auc={"value": "x"}, pr_auc={"value": 0.5, "ci": "bad"})
    (folder / "metrics.json").write_text(json.dumps(stored))
    compare([folder], tmp_path / "cmp", n_boot=10)
    row = read_csv(tmp_path / "cmp" / "table.csv")[0]
    assert (row["Accuracy"], row["ROC AUC"], row["PR AUC"]) == ("n/a", "n/a", "0.500 (CI n/a)")


@pytest.mark.slow
def test_pseudonymised_comparison_holds_no_folder_path_or_run_name(evaluated, tmp_path, capsys):
    """comparison.json kept the evaluation folders' paths verbatim; the run names are folder names."""
    from mucosa.cli import main

    folder = _copy(evaluated, tmp_path / "JaneDoe-run")
    assert main(["compare", str(folder), "--out", str(tmp_path / "cmp"), "--bootstrap", "10", "--pseudonymise"]) == 0
    shown = capsys.readouterr()
    written = "".join(p.read_text(errors="ignore") for p in (tmp_path / "cmp").iterdir() if p.suffix != ".png")
    assert "JaneDoe" not in written + shown.out + shown.err and str(tmp_path) not in written
    summary = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert summary["pseudonymised"] is True and all(name.startswith("ID-") for name in summary["runs"])
    assert main(["compare", str(folder), "--out", str(tmp_path / "plain"), "--bootstrap", "10"]) == 0
    assert "JaneDoe-run" in (tmp_path / "plain" / "comparison.json").read_text()  # the names stay without it
