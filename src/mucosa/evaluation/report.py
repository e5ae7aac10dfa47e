"""Figures and the human-readable report (HTML with embedded figures, and Markdown) of an evaluation."""

from __future__ import annotations

import base64
import html
from pathlib import Path

import numpy as np

METRIC_ORDER = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc")
METRIC_NAMES = {"accuracy": "Accuracy", "sensitivity": "Sensitivity (Se)", "specificity": "Specificity (Sp)",
                "ppv": "PPV", "npv": "NPV", "f1": "F1", "roc_auc": "ROC AUC", "pr_auc": "PR AUC"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fmt(entry: dict | None, percent: bool = False) -> str:
    """``0.953 (0.91–0.98)``: value with its 95% CI; ``n/a`` when undefined."""
    if not entry or entry.get("value") is None:
        return "n/a"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    lo, hi = entry.get("ci") or (None, None)
    text = f"{entry['value'] * scale:.1f}{unit}" if percent else f"{entry['value']:.3f}"
    if lo is not None and hi is not None:
        text += f" ({lo * scale:.1f}–{hi * scale:.1f})" if percent else f" ({lo:.3f}–{hi:.3f})"
    return text


def metric_rows(level: dict) -> list[tuple[str, str]]:
    keys = [k for k in METRIC_ORDER if k in level] + sorted(k for k in level if k not in METRIC_ORDER)
    return [(METRIC_NAMES.get(k, k), fmt(level[k])) for k in keys]


# --------------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------------


def _curves(y_true: np.ndarray, y_score: np.ndarray, classes: list[str]):
    """(name, y01, score) pairs: one for binary, one-vs-rest per class otherwise."""
    if y_score.ndim == 1:
        return [(classes[1], y_true, y_score)]
    return [(c, (y_true == k).astype(int), y_score[:, k]) for k, c in enumerate(classes)]


def plot_curves(curves: list[tuple[str, np.ndarray, np.ndarray]], out: Path, prefix: str = "",
                titles: tuple[str, str] = ("ROC curve (frames)", "Precision–recall (frames)"),
                size: tuple[float, float] = (4.5, 4.2)) -> list[Path]:
    """ROC and precision–recall figures of (label, y 0/1, score) curves; writes ``{prefix}roc.png`` and
    ``{prefix}pr.png``."""
    from sklearn.metrics import (
        average_precision_score,
        precision_recall_curve,
        roc_auc_score,
        roc_curve,
    )

    plt = _pyplot()
    paths = []
    for kind, title in zip(("roc", "pr"), titles):
        fig, ax = plt.subplots(figsize=size)
        for name, y, s in curves:
            if len(set(np.asarray(y).tolist())) < 2:
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, s)
                ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, s):.3f})")
            else:
                precision, recall, _ = precision_recall_curve(y, s)
                ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, s):.3f})")
        if kind == "roc":
            ax.plot([0, 1], [0, 1], ls=":", c="grey")
            ax.set(xlabel="1 − specificity", ylabel="sensitivity", title=title)
        else:
            ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title)
        ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=7)
        paths.append(_save(fig, out / f"{prefix}{kind}.png"))
    return paths


def plot_roc_pr(y_true, y_score, classes, out: Path) -> list[Path]:
    """``roc.png`` and ``pr.png`` of one evaluation (one-vs-rest curves for 3+ classes)."""
    return plot_curves(_curves(y_true, y_score, classes), out)


def plot_confusion(matrix: np.ndarray, classes: list[str], out: Path, title: str) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(int(v)), ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
           xlabel="predicted", ylabel="histology", title=title)
    return _save(fig, out)


def plot_reliability(calibration: dict, out: Path) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    mask = [c > 0 for c in calibration["count"]]
    predicted = [p for p, m in zip(calibration["mean_predicted"], mask) if m]
    observed = [o for o, m in zip(calibration["observed"], mask) if m]
    ax.plot([0, 1], [0, 1], ls=":", c="grey")
    ax.plot(predicted, observed, "o-")
    ax.set(xlabel="mean predicted probability", ylabel="observed frequency",
           title=f"Reliability (ECE {calibration['ece']:.3f}, Brier {calibration['brier']:.3f})",
           xlim=(0, 1), ylim=(0, 1))
    return _save(fig, out)


def plot_patients(patients: list[dict], scored, threshold: float, verdicts: list[str], out: Path) -> Path:
    """Every patient's frame probabilities (dots) and mean probability (bar), by true label."""
    plt = _pyplot()
    order = sorted(patients, key=lambda p: (p["true"], p["mean_probability"]))
    fig, ax = plt.subplots(figsize=(6.5, max(3.0, 0.28 * len(order) + 1.6)))
    for row, p in enumerate(order):
        probs = scored.y_score[scored.patients == p["patient"]]
        jitter = (np.random.default_rng(row).random(len(probs)) - 0.5) * 0.3
        colour = "tab:red" if p["true"] == 1 else "tab:blue"
        ax.scatter(probs, row + jitter, s=6, alpha=0.35, color=colour, linewidths=0)
        ax.plot([p["mean_probability"]] * 2, [row - 0.4, row + 0.4], color=colour, lw=2.5)
    ax.axvline(threshold, ls="--", c="grey", lw=1)
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], color="tab:red", lw=2.5, label=f"{verdicts[1]} (histology)"),
              Line2D([], [], color="tab:blue", lw=2.5, label=f"{verdicts[0]} (histology)"),
              Line2D([], [], color="grey", ls="--", label="threshold")]
    ax.legend(handles=legend, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False)
    ax.set(yticks=range(len(order)), yticklabels=[str(p["patient"])[:16] for p in order], xlim=(0, 1),
           xlabel="probability of " + verdicts[1], title="Frame probabilities per patient (bar: patient mean)")
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, out)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def make_figures(out: Path, result: dict, scored, patients: list[dict]) -> list[Path]:
    from mucosa.metrics import confusion

    classes = result["classes"]
    figures = plot_roc_pr(scored.y_true, scored.y_score, classes, out)
    threshold = result["threshold"]["value"]
    predicted = (scored.y_score >= threshold).astype(int) if threshold is not None else scored.y_score.argmax(1)
    figures.append(plot_confusion(confusion(scored.y_true, predicted, len(classes)), classes,
                                  out / "confusion.png", "Confusion matrix (frames)"))
    if "calibration" in result:
        figures.append(plot_reliability(result["calibration"], out / "reliability.png"))
    if threshold is not None:
        figures.append(plot_patients(patients, scored, threshold,
                                     result["verdicts"], out / "patients.png"))
    return figures


# --------------------------------------------------------------------------------------------------
# HTML and Markdown
# --------------------------------------------------------------------------------------------------


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def _sections(result: dict, patients: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    verdicts, classes = result["verdicts"], result["classes"]
    patient_rows = [[p["patient"], p["n_frames"], f"{p['score']:.3f}" if not isinstance(p["score"], list)
                     else " ".join(f"{v:.2f}" for v in p["score"]), classes[p["true"]], verdicts[p["predicted"]],
                     "yes" if p["true"] == p["predicted"] else "NO"] for p in patients]
    level = [[name, value] for name, value in metric_rows(result["patient"])]
    image = [[name, value] for name, value in metric_rows(result["image"])]
    sections = [("Patient-level verdict", ["metric", "value (95% CI)"], level),
                ("Patients", ["patient", "frames", "score", "histology", "verdict", "correct"], patient_rows)]
    counts = result["counts"]
    if "file" in result and counts.get("files", counts["frames"]) != counts["frames"]:  # videos or tiled images
        files = [[name, value] for name, value in metric_rows(result["file"])]
        sections.append((f"File level ({counts['files']} images or videos, each a verdict on its frames)",
                         ["metric", "value (95% CI)"], files))
    return sections + [("Image level", ["metric", "value (95% CI)"], image)]


def _preamble(result: dict) -> list[str]:
    t = result["threshold"]
    rule = ("argmax" if t["value"] is None else f"{t['value']:.3f} ({t['rule']}"
            + (f", chosen on {t['chosen_on']})" if t["chosen_on"] else ")"))
    return [f"Model: {result['model']} at {result['size']}×{result['size']}; checkpoint {result['checkpoint']}",
            f"Evaluated: {result['evaluated']} — {result['counts']['frames']} frames of "
            f"{result['counts']['patients']} patients",
            f"Threshold: {rule}; patient score: {result['aggregation']} of frame probabilities",
            "Confidence intervals: 95% percentile bootstrap resampling patients "
            f"({result['counts']['bootstrap']} replicates, seed {result['counts']['seed']})"]


def _embed(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img alt="{html.escape(path.stem)}" src="data:image/png;base64,{data}"></figure>'


def write_report(out: Path, result: dict, scored, patients: list[dict],
                 gallery: list[tuple[str, Path]] = ()) -> tuple[Path, Path]:
    """Figures, ``report.html`` (figures embedded) and ``report.md`` (figures linked).

    Args:
        gallery: (group, PNG) pairs of Grad-CAM overlays (true/false positives/negatives) to show.
    """
    figures = make_figures(out, result, scored, patients)
    sections = _sections(result, patients)
    title = "mucosa evaluation"
    parts = [f"<h1>{title}</h1>", *[f"<p>{html.escape(line)}</p>" for line in _preamble(result)]]
    md = [f"# {title}", "", *[f"- {line}" for line in _preamble(result)], ""]
    for heading, header, rows in sections:
        parts += [f"<h2>{heading}</h2>", _html_table(header, rows)]
        md += [f"## {heading}", "", _md_table(header, rows), ""]
    parts.append("<h2>Figures</h2>")
    md += ["## Figures", ""]
    for figure in figures:
        parts.append(_embed(figure))
        md.append(f"![{figure.stem}]({figure.name})")
    if gallery:
        parts.append("<h2>Gallery: where the model looked (Grad-CAM at conv4)</h2>")
        md += ["", "## Gallery: where the model looked (Grad-CAM at conv4)", ""]
        for group in dict.fromkeys(g for g, _ in gallery):
            parts.append(f"<h3>{html.escape(group)}</h3>")
            md.append(f"### {group}\n")
            for g, path in gallery:
                if g == group:
                    parts.append(_embed(path))
                    md.append(f"![{path.stem}]({path.relative_to(out).as_posix()})")
    style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:.2em .6em}figure{display:inline-block;margin:.5em}")
    page = f"<!doctype html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>" \
           f"</head><body>{''.join(parts)}</body></html>"
    (out / "report.html").write_text(page, encoding="utf-8")
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return out / "report.html", out / "report.md"
