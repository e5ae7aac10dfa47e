"""The paper's Table III and Fig. 4 for any set of evaluated runs, with a paired bootstrap test of AUCs."""

from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

import numpy as np

from mucosa import metrics
from mucosa.atomic import OutputSet
from mucosa.errors import ConfigError
from mucosa.evaluation.privacy import redactor, shown
from mucosa.evaluation.report import (
    embed,
    fmt,
    html_page,
    html_table,
    md_escape,
    md_table,
    plot_curves,
)
from mucosa.formats import read_json_object
from mucosa.intervals import BOOTSTRAP, DESCRIPTIONS, EXACT
from mucosa.tables import read_csv, write_csv

TABLE_METRICS = (("accuracy", "Accuracy"), ("roc_auc", "ROC AUC"), ("pr_auc", "PR AUC"),
                 ("specificity", "Sp"), ("sensitivity", "Se"))


@dataclass
class Evaluation:
    """One ``mucosa evaluate`` output folder."""

    name: str
    folder: Path
    metrics: dict
    keys: list[tuple[str, int]]  # (path, frame) of every frame
    patients: np.ndarray
    y_true: np.ndarray
    y_score: np.ndarray


def load_evaluation(folder: str | Path, name: str | None = None) -> Evaluation:
    """Read an evaluation folder (or a run folder holding ``evaluation/``).

    Raises:
        ConfigError: one line naming the file and what is wrong with it (missing, truncated, not written by
            ``mucosa evaluate``, a row that cannot be read).
    """
    folder = Path(folder)
    if not (folder / "metrics.json").is_file() and (folder / "evaluation" / "metrics.json").is_file():
        name, folder = name or folder.name, folder / "evaluation"
    result = _read_metrics(folder)
    if len(result["classes"]) != 2:
        raise ConfigError(f"{folder}: compare handles binary evaluations; this one has classes {result['classes']}")
    keys, patients, y_true, y_score = _read_predictions(folder / "predictions.csv", result["classes"])
    frames = result["counts"].get("frames")
    if isinstance(frames, int) and frames != len(keys):
        raise ConfigError(f"{folder / 'predictions.csv'}: {len(keys)} frames but metrics.json counts {frames}; "
                          f"the file is truncated or from another evaluation")
    return Evaluation(name or folder.name, folder, result, keys, patients, y_true, y_score)


def _read_metrics(folder: Path) -> dict:
    path = folder / "metrics.json"
    rerun = f"run `mucosa evaluate --out {folder}` again"
    if not path.is_file():
        raise ConfigError(f"{folder}: no metrics.json — run `mucosa evaluate --out {folder}` first")
    result = read_json_object(path, "the metrics of `mucosa evaluate`", ConfigError, rerun)
    kinds = {"classes": list, "image": dict, "patient": dict, "counts": dict}
    missing = [k for k, kind in kinds.items() if not isinstance(result.get(k), kind)]
    if missing or not all(isinstance(c, str) for c in result["classes"]) or len(result["classes"]) < 2:
        raise ConfigError(f"{path}: not the metrics of `mucosa evaluate` "
                          f"({'no ' + ', '.join(missing) if missing else 'bad classes'}); {rerun}")
    return result


def _read_predictions(path: Path, classes: list[str]):
    """(keys, patients, y_true, y_score) of a binary evaluation's predictions.csv."""
    if not path.is_file():
        raise ConfigError(f"{path}: missing — compare needs the frame predictions that `mucosa evaluate` writes")
    try:
        rows = read_csv(path)
        if any(None in r or None in r.values() for r in rows):
            raise ValueError("a row has more or fewer cells than the header")
        keys = [(r["path"], int(r["frame"])) for r in rows]
        labels = [r["label"] for r in rows]
        scores = np.array([float(r["probability"]) for r in rows], dtype=np.float64)
        patients = np.array([r["patient"] for r in rows], dtype=object)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise ConfigError(f"{path}: unreadable ({_reason(error)})") from None
    except KeyError as error:
        raise ConfigError(f"{path}: no column {error} (not written by `mucosa evaluate`)") from None
    except (TypeError, ValueError) as error:
        raise ConfigError(f"{path}: a row cannot be read ({_reason(error)}); the file is damaged or truncated") \
            from None
    if not rows:
        raise ConfigError(f"{path}: no predictions")
    unknown = sorted(set(labels) - set(classes))
    if unknown or not np.all(np.isfinite(scores)) or np.any((scores < 0) | (scores > 1)):
        what = f"labels {unknown[:3]} not in {classes}" if unknown else "probabilities outside [0, 1]"
        raise ConfigError(f"{path}: {what}; the file does not belong to its metrics.json")
    return keys, patients, np.array([int(label == classes[1]) for label in labels]), scores


def _reason(error: Exception) -> str:
    return " ".join(str(error).split())[:120] or type(error).__name__


def table_rows(evaluations: list[Evaluation]) -> list[list[str]]:
    """Table III: image-level metrics (95% CI) and the patient-level accuracy of every run."""
    rows = []
    for e in evaluations:
        image, patient = e.metrics["image"], e.metrics["patient"]
        rows.append([e.name, *[fmt(image.get(k)) for k, _ in TABLE_METRICS], fmt(patient.get("accuracy")),
                     str(e.metrics["counts"].get("patients", "?"))])
    return rows


def paired_tests(evaluations: list[Evaluation], n_boot: int, seed: int) -> list[dict]:
    """Paired bootstrap of the ROC AUC difference for every pair evaluated on the same frames."""
    tests = []
    for a, b in combinations(evaluations, 2):
        common = sorted(set(a.keys) & set(b.keys))
        if len(common) < len(set(a.keys) | set(b.keys)) * 0.95 or len(common) < 2:
            tests.append({"a": a.name, "b": b.name, "paired": False,
                          "why": "evaluated on different frames (different test sets)"})
            continue
        ia = {k: i for i, k in enumerate(a.keys)}
        ib = {k: i for i, k in enumerate(b.keys)}
        sa, sb = np.array([ia[k] for k in common]), np.array([ib[k] for k in common])
        test = metrics.paired_bootstrap_auc(a.y_true[sa], a.y_score[sa], b.y_score[sb], a.patients[sa],
                                            n_boot=n_boot, seed=seed)
        tests.append({"a": a.name, "b": b.name, "paired": True, "frames": len(common),
                      **{k: _json_number(v) for k, v in test.items()}})
    return tests


def _json_number(value):
    if isinstance(value, (tuple, list)):
        return [_json_number(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def plot_overlay(evaluations: list[Evaluation], out: Path) -> list[Path]:
    """Fig. 4: ROC (A) and precision–recall (B) curves of all runs overlaid."""
    return plot_curves([(e.name, e.y_true, e.y_score) for e in evaluations], out, prefix="compare_",
                       titles=("Fig. 4A — ROC curves (frames)", "Fig. 4B — precision–recall"), size=(5, 4.6))


def _test_line(t: dict) -> str:
    if not t["paired"]:
        return f"{t['a']} vs {t['b']}: not paired — {t['why']}"
    if t["p_value"] is None:
        return (f"{t['a']} vs {t['b']}: ΔAUC {t['diff']:+.3f}, not testable — fewer than two test patients "
                "of a label")
    return (f"{t['a']} vs {t['b']}: ΔAUC {t['diff']:+.3f} (95% CI {t['ci'][0]:+.3f} to {t['ci'][1]:+.3f}), "
            f"p = {t['p_value']:.3f}, {t['frames']} frames")


OUTPUTS = ("table.csv", "comparison.json", "comparison.md", "comparison.html", "compare_roc.png", "compare_pr.png")
"""Everything :func:`compare` writes: a rerun into the same folder replaces the whole set."""


def _interval_notes(evaluations: list[Evaluation]) -> list[str]:
    """Why a cell of the table has no interval, one line per such cell."""
    notes = []
    for e in evaluations:
        cells = [("image", k, label) for k, label in TABLE_METRICS] + [("patient", "accuracy", "patient accuracy")]
        for level, key, label in cells:
            entry = e.metrics[level].get(key)
            if fmt(entry).endswith("(CI n/a)"):
                notes.append(f"{e.name}, {label}: no interval — {entry.get('ci_note') or 'none was computed'}")
    return notes


def compare(folders: list[str | Path], out: str | Path, n_boot: int = 2000, seed: int = 0,
            title: str = "mucosa comparison", notes: list[str] | None = None, pseudonymise: bool = False,
            pseudonym_key: str | None = None) -> dict:
    """Write table (CSV, Markdown, HTML), overlaid curves and paired tests for evaluated runs, as one set
    (:data:`OUTPUTS`): an earlier comparison in ``out`` is replaced whole or not at all. Returns the summary
    written to ``comparison.json``, with ``rows`` (the table as shown). ``pseudonymise``: each run's name and
    folder become keyed pseudonyms (``evaluation.privacy``) in every output."""
    if not folders:
        raise ConfigError("compare needs at least one evaluation folder")
    redact = redactor(pseudonymise, pseudonym_key)
    if redact is not None:
        redact.learn_paths(*folders)
    with shown(redact):
        evaluations = [load_evaluation(f) for f in folders]
    if redact is not None:
        evaluations = [replace(e, name=redact.name(e.name), folder=Path(redact.name(str(e.folder))))
                       for e in evaluations]
    header = ["run", *[name for _, name in TABLE_METRICS], "patient accuracy", "test patients"]
    rows = table_rows(evaluations)
    tests = paired_tests(evaluations, n_boot, seed)
    summary = {"runs": {e.name: {"folder": str(e.folder), "image": e.metrics["image"],
                                 "patient": e.metrics["patient"]} for e in evaluations}, "paired_tests": tests,
               "pseudonymised": redact is not None}
    intro = (notes or []) + [f"Values with 95% CIs. Image level: {DESCRIPTIONS[BOOTSTRAP]}. Patient accuracy: "
                             f"the per-patient verdict, {DESCRIPTIONS[EXACT]}."]
    footnotes = _interval_notes(evaluations)
    with OutputSet(out, OUTPUTS) as staged:
        folder = staged.staging
        figures = plot_overlay(evaluations, folder)
        write_csv(folder / "table.csv", header, rows)
        (folder / "comparison.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
        (folder / "comparison.md").write_text(_markdown(title, intro, header, rows, footnotes, tests, figures),
                                              encoding="utf-8")
        (folder / "comparison.html").write_text(_html(title, intro, header, rows, footnotes, tests, figures),
                                                encoding="utf-8")
    return {**summary, "rows": rows}


def _markdown(title, intro, header, rows, footnotes, tests, figures) -> str:
    md = [f"# {md_escape(title)}", "", *[md_escape(n) + "\n" for n in intro], md_table(header, rows), "",
          *[f"- {md_escape(n)}" for n in footnotes], "", "## Paired tests (ROC AUC)", "",
          *[f"- {md_escape(_test_line(t))}" for t in tests], "", *[f"![{p.stem}]({p.name})" for p in figures]]
    return "\n".join(md) + "\n"


def _html(title, intro, header, rows, footnotes, tests, figures) -> str:
    numeric = tuple(range(1, len(header)))
    body = [f"<h1>{html.escape(title)}</h1>", *[f"<p>{html.escape(n)}</p>" for n in intro],
            html_table(header, rows, numeric=numeric)]
    if footnotes:
        body.append("<ul class='notes'>" + "".join(f"<li>{html.escape(n)}</li>" for n in footnotes) + "</ul>")
    body += ["<h2>Paired tests (ROC AUC)</h2><ul>", *[f"<li>{html.escape(_test_line(t))}</li>" for t in tests],
             "</ul><h2>Figures</h2><div class='figures'>"]
    return html_page(title, body + [embed(p) for p in figures] + ["</div>"])
