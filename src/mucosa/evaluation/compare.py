"""The paper's Table III and Fig. 4 for any set of evaluated runs, with a paired bootstrap test of AUCs."""

from __future__ import annotations

import csv
import html
import json
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

import numpy as np

from mucosa import metrics
from mucosa.errors import ConfigError
from mucosa.evaluation.report import _html_table, _md_table, fmt, plot_curves

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
    """Read an evaluation folder (or a run folder holding ``evaluation/``)."""
    folder = Path(folder)
    if not (folder / "metrics.json").is_file() and (folder / "evaluation" / "metrics.json").is_file():
        name, folder = name or folder.name, folder / "evaluation"
    if not (folder / "metrics.json").is_file():
        raise ConfigError(f"{folder}: no metrics.json — run `mucosa evaluate --out {folder}` first")
    result = json.loads((folder / "metrics.json").read_text())
    if len(result["classes"]) != 2:
        raise ConfigError(f"{folder}: compare handles binary evaluations; this one has classes {result['classes']}")
    with open(folder / "predictions.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    positive = result["classes"][1]
    return Evaluation(name or folder.name, folder, result, [(r["path"], int(r["frame"])) for r in rows],
                      np.array([r["patient"] for r in rows], dtype=object),
                      np.array([int(r["label"] == positive) for r in rows]),
                      np.array([float(r["probability"]) for r in rows]))


def table_rows(evaluations: list[Evaluation]) -> list[list[str]]:
    """Table III: image-level metrics (95% CI) and the patient-level accuracy of every run."""
    rows = []
    for e in evaluations:
        image, patient = e.metrics["image"], e.metrics["patient"]
        rows.append([e.name, *[fmt(image.get(k)) for k, _ in TABLE_METRICS], fmt(patient.get("accuracy")),
                     str(e.metrics["counts"]["patients"])])
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


def compare(folders: list[str | Path], out: str | Path, n_boot: int = 2000, seed: int = 0,
            title: str = "mucosa comparison", notes: list[str] | None = None) -> dict:
    """Write table (CSV, Markdown, HTML), overlaid curves and paired tests for evaluated runs."""
    if not folders:
        raise ConfigError("compare needs at least one evaluation folder")
    evaluations = [load_evaluation(f) for f in folders]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    header = ["run", *[name for _, name in TABLE_METRICS], "patient accuracy", "test patients"]
    rows = table_rows(evaluations)
    tests = paired_tests(evaluations, n_boot, seed)
    figures = plot_overlay(evaluations, out)
    with open(out / "table.csv", "w", newline="") as handle:
        csv.writer(handle).writerows([header, *rows])
    summary = {"runs": {e.name: {"folder": str(e.folder), "image": e.metrics["image"],
                                 "patient": e.metrics["patient"]} for e in evaluations}, "paired_tests": tests}
    (out / "comparison.json").write_text(json.dumps(summary, indent=1))
    intro = (notes or []) + ["Values: image level, 95% CI from a bootstrap over patients; patient accuracy: "
                             "the per-patient verdict."]
    md = [f"# {title}", "", *intro, "", _md_table(header, rows), "", "## Paired tests (ROC AUC)", "",
          *[f"- {_test_line(t)}" for t in tests], "", *[f"![{p.stem}]({p.name})" for p in figures]]
    (out / "comparison.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    import base64

    images = "".join(f'<img alt="{p.stem}" src="data:image/png;base64,{base64.b64encode(p.read_bytes()).decode()}">'
                     for p in figures)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title></head><body>"
            f"<h1>{html.escape(title)}</h1>{''.join(f'<p>{html.escape(n)}</p>' for n in intro)}"
            f"{_html_table(header, rows)}<h2>Paired tests (ROC AUC)</h2><ul>"
            f"{''.join(f'<li>{html.escape(_test_line(t))}</li>' for t in tests)}</ul>{images}</body></html>")
    (out / "comparison.html").write_text(page, encoding="utf-8")
    return summary
