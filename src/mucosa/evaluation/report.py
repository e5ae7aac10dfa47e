"""Figures and the human-readable report (HTML with embedded figures, and Markdown) of an evaluation."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

import numpy as np

from mucosa.inference import verdict as verdicts
from mucosa.intervals import BOOTSTRAP, DESCRIPTIONS, EXACT

METRIC_ORDER = ("accuracy", "sensitivity", "specificity", "ppv", "npv", "f1", "roc_auc", "pr_auc")
METRIC_NAMES = {"accuracy": "Accuracy", "sensitivity": "Sensitivity (Se)", "specificity": "Specificity (Sp)",
                "ppv": "PPV", "npv": "NPV", "f1": "F1", "roc_auc": "ROC AUC", "pr_auc": "PR AUC"}


def _figure(size: tuple[float, float]):
    """A figure and its axes, drawn by Agg through matplotlib's object API: pyplot is never imported, so the
    caller's plotting backend (a notebook's, say) stays as it was."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size)
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def plain(text: object) -> str:
    """``text`` for a figure label, shown as written (a ``$`` would otherwise start TeX math)."""
    return str(text).replace("$", r"\$")


def fmt(entry: dict | None, percent: bool = False) -> str:
    """``0.953 (0.910–0.980)``: value with its 95% CI; ``1.000 (CI n/a)`` without one; ``n/a`` when
    undefined."""
    if not isinstance(entry, dict) or not isinstance(entry.get("value"), (int, float)):
        return "n/a"
    scale, unit = (100.0, "%") if percent else (1.0, "")
    ci = entry.get("ci")
    finite = isinstance(ci, (list, tuple)) and len(ci) == 2 and all(isinstance(x, (int, float)) for x in ci)
    lo, hi = ci if finite else (None, None)
    text = f"{entry['value'] * scale:.1f}{unit}" if percent else f"{entry['value']:.3f}"
    if lo is not None and hi is not None:
        text += f" ({lo * scale:.1f}–{hi * scale:.1f})" if percent else f" ({lo:.3f}–{hi:.3f})"
    else:
        text += " (CI n/a)"
    return text


def interval_kind(entry: dict | None) -> str:
    """Which interval a figure carries, in words: ``exact binomial (Clopper–Pearson), 12/12``,
    ``percentile bootstrap over patients``, or ``n/a: <why there is none>``."""
    if not isinstance(entry, dict):
        return ""
    if entry.get("value") is None or not entry.get("ci"):
        return f"n/a: {entry.get('ci_note') or 'no interval'}"
    method = entry.get("ci_method", BOOTSTRAP)  # evaluations written before intervals said their kind
    text = DESCRIPTIONS.get(method, method)
    if entry.get("count"):
        text += f", {entry['count'][0]}/{entry['count'][1]}"
    return text


def metric_rows(level: dict) -> list[list[str]]:
    """``[name, value (95% CI), interval kind]`` of every figure of a level, the paper's first."""
    keys = [k for k in METRIC_ORDER if k in level] + sorted(k for k in level if k not in METRIC_ORDER)
    return [[METRIC_NAMES.get(k, k), fmt(level[k]), interval_kind(level[k])] for k in keys]


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

    paths = []
    for kind, title in zip(("roc", "pr"), titles):
        fig, ax = _figure(size)
        for name, y, s in curves:
            if len(set(np.asarray(y).tolist())) < 2:
                continue
            if kind == "roc":
                fpr, tpr, _ = roc_curve(y, s)
                ax.plot(fpr, tpr, label=f"{plain(name)} (AUC {roc_auc_score(y, s):.3f})")
            else:
                precision, recall, _ = precision_recall_curve(y, s)
                ax.plot(recall, precision, label=f"{plain(name)} (AP {average_precision_score(y, s):.3f})")
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
    fig, ax = _figure((3.8, 3.4))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), v in np.ndenumerate(matrix):
        ax.text(j, i, str(int(v)), ha="center", va="center",
                color="white" if v > matrix.max() / 2 else "black")
    ax.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=[plain(c) for c in classes],
           yticklabels=[plain(c) for c in classes],
           xlabel="predicted", ylabel="histology", title=title)
    return _save(fig, out)


def plot_reliability(calibration: dict, out: Path) -> Path:
    fig, ax = _figure((4.2, 4.0))
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
    order = sorted(patients, key=lambda p: (p["true"], p["mean_probability"]))
    fig, ax = _figure((6.5, max(3.0, 0.28 * len(order) + 1.6)))
    for row, p in enumerate(order):
        probs = scored.y_score[scored.patients == p["patient"]]
        jitter = (np.random.default_rng(row).random(len(probs)) - 0.5) * 0.3
        colour = "tab:red" if p["true"] == 1 else "tab:blue"
        ax.scatter(probs, row + jitter, s=6, alpha=0.35, color=colour, linewidths=0)
        ax.plot([p["mean_probability"]] * 2, [row - 0.4, row + 0.4], color=colour, lw=2.5)
    ax.axvline(threshold, ls="--", c="grey", lw=1)
    from matplotlib.lines import Line2D

    legend = [Line2D([], [], color="tab:red", lw=2.5, label=f"{plain(verdicts[1])} (histology)"),
              Line2D([], [], color="tab:blue", lw=2.5, label=f"{plain(verdicts[0])} (histology)"),
              Line2D([], [], color="grey", ls="--", label="threshold")]
    ax.legend(handles=legend, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncol=3, frameon=False)
    ax.set(yticks=range(len(order)), yticklabels=[plain(str(p["patient"])[:16]) for p in order], xlim=(0, 1),
           xlabel="probability of " + plain(verdicts[1]), title="Frame probabilities per patient (bar: patient mean)")
    ax.tick_params(axis="y", labelsize=7)
    return _save(fig, out)


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def make_figures(out: Path, result: dict, scored, patients: list[dict]) -> list[Path]:
    from mucosa.metrics import confusion

    classes = result["classes"]
    figures = plot_roc_pr(scored.y_true, scored.y_score, classes, out)
    threshold = result["threshold"]["value"]
    predicted = verdicts.calls(scored.y_score, threshold if threshold is not None else 0.5)
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


STYLE = """
:root{--ink:#1d2329;--muted:#5b6670;--line:#d5dbe1;--head:#eef2f6;--accent:#2b5d8c;--bad:#b42318}
*{box-sizing:border-box}
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,sans-serif;color:var(--ink);
 max-width:76rem;margin:0 auto;padding:1.5rem 2rem 3rem}
h1{font-size:1.7rem;margin:.2rem 0 1rem;padding-bottom:.3rem;border-bottom:3px solid var(--accent)}
h2{font-size:1.25rem;margin:2rem 0 .6rem;padding-bottom:.2rem;color:var(--accent);border-bottom:1px solid var(--line)}
h3{font-size:1.05rem;margin:1.2rem 0 .4rem}
dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.3rem 1rem;margin:0 0 1rem;padding:.8rem 1rem;
 background:#f6f8fa;border:1px solid var(--line);border-radius:6px}
dl.facts dt{font-weight:600;color:var(--muted)}
dl.facts dd{margin:0;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:.4rem 0 1rem;font-size:.92rem;font-variant-numeric:tabular-nums}
th,td{border:1px solid var(--line);padding:.3rem .55rem;text-align:left;vertical-align:top}
th{background:var(--head);font-weight:600}
tbody tr:nth-child(even){background:#fafbfc}
td.num,th.num{text-align:right}
td.num{white-space:nowrap}
td.bad{color:var(--bad);font-weight:600}
td.kind{width:16rem;color:var(--muted);font-size:.82rem}
.levels{display:flex;flex-wrap:wrap;gap:0 2rem}
.levels section{flex:0 1 auto;min-width:0}
.wide{overflow-x:auto}
.figures{display:flex;flex-wrap:wrap;gap:1rem;align-items:flex-start}
figure{margin:0;padding:.5rem;max-width:calc(50% - .5rem);background:#fff;border:1px solid var(--line);
  border-radius:6px}
figure img{display:block;max-width:100%;height:auto}
p.note,ul.notes{color:var(--muted);font-size:.88rem}
@media (max-width:50rem){figure{max-width:100%}}
@page{margin:1.5cm}
@media print{
 body{max-width:none;padding:0;font-size:10pt}
 h1,h2,h3{break-after:avoid}
 table,figure,dl.facts{break-inside:avoid}
 tbody tr:nth-child(even){background:none}
 .wide{overflow:visible}
 table{font-size:8.5pt}
 .figures{gap:.4rem}
 figure{border:none;padding:0;max-width:calc(50% - .2rem)}
}
"""


def html_page(title: str, body: list[str]) -> str:
    """A complete HTML page with the report stylesheet; ``body`` is HTML already escaped."""
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
            f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{''.join(body)}</body></html>")


def md_escape(text: object) -> str:
    """``text`` shown literally in Markdown: HTML escaped as in the HTML reports (no ``<script>`` or
    ``<img onerror>`` reaches a renderer), the characters of links, images, code, emphasis and table cells
    backslash-escaped, and line breaks joined (a line break would end a table row)."""
    escaped = html.escape(str(text), quote=False)
    return " ".join(re.sub(r"([\\`*_\[\]|#])", r"\\\1", escaped).split())


def html_table(header: list[str], rows: list[list[str]], numeric: tuple[int, ...] = ()) -> str:
    """An HTML table, every cell escaped; columns in ``numeric`` are right-aligned, an ``interval`` column is
    set in small type and a ``NO`` (a wrong verdict) is marked."""
    def cell(i: int, value) -> str:
        kind = "num" if i in numeric else "kind" if header[i] == "interval" else "bad" if value == "NO" else ""
        return f"<td class='{kind}'>" if kind else "<td>"

    head = "".join(f"<th class='num'>{html.escape(h)}</th>" if i in numeric else f"<th>{html.escape(h)}</th>"
                   for i, h in enumerate(header))
    body = "".join("<tr>" + "".join(f"{cell(i, c)}{html.escape(str(c))}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<div class='wide'><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table, every cell escaped (:func:`md_escape`).

    >>> print(md_table(["patient", "verdict"], [["P|1", "active"]]))
    | patient | verdict |
    |---|---|
    | P\\|1 | active |
    """
    lines = ["| " + " | ".join(md_escape(h) for h in header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(md_escape(c) for c in r) + " |" for r in rows])


LEVEL_HEADER = ["metric", "value (95% CI)", "interval"]


def _sections(result: dict, patients: list[dict]) -> list[tuple[str, list[str], list[list[str]]]]:
    """(heading, header, rows) of the report's tables: the metric levels first, then the patients."""
    verdicts, classes = result["verdicts"], result["classes"]
    patient_rows = [[p["patient"], p["n_frames"], f"{p['score']:.3f}" if not isinstance(p["score"], list)
                     else " ".join(f"{v:.2f}" for v in p["score"]), classes[p["true"]], verdicts[p["predicted"]],
                     "yes" if p["true"] == p["predicted"] else "NO"] for p in patients]
    counts = result["counts"]
    sections = [(f"Patient-level verdict ({counts['patients']} patients)", LEVEL_HEADER,
                 metric_rows(result["patient"]))]
    if "file" in result and counts.get("files", counts["frames"]) != counts["frames"]:  # videos or tiled images
        sections.append((f"File level ({counts['files']} images or videos, each a verdict on its frames)",
                         LEVEL_HEADER, metric_rows(result["file"])))
    sections.append((f"Image level ({counts['frames']} frames)", LEVEL_HEADER, metric_rows(result["image"])))
    return sections + [("Patients", ["patient", "frames", "score", "histology", "verdict", "correct"], patient_rows)]


def _facts(result: dict) -> list[tuple[str, str]]:
    """(label, text) lines that say what was evaluated and how the figures were made."""
    t, counts = result["threshold"], result["counts"]
    rule = ("argmax" if t["value"] is None else f"{t['value']:.3f} ({t['rule']}"
            + (f", chosen on {t['chosen_on']})" if t["chosen_on"] else ")"))
    return [
        ("Model", f"{result['model']} at {result['size']}×{result['size']}; checkpoint {result['checkpoint']}"),
        ("Evaluated", f"{result['evaluated']} — {counts['frames']} frames of {counts['patients']} patients"),
        ("Threshold", f"{rule}; patient score: {result['aggregation']} of frame probabilities"),
        ("Intervals", ("95%. Proportions of patients and of files (accuracy, sensitivity, specificity, PPV, "
                       f"NPV): {DESCRIPTIONS[EXACT]} over the patients (files) called, each counted once (the "
                       "files of one patient as if independent). Frame-level figures, F1 and AUCs: "
                       f"{DESCRIPTIONS[BOOTSTRAP]} ({counts['bootstrap']} replicates, seed {counts['seed']}). "
                       "Where an interval cannot be given: n/a and the reason, never a zero-width interval.")),
    ]


def embed(path: Path) -> str:
    """A PNG embedded in the page (the report is one self-contained file)."""
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
    facts = _facts(result)
    parts = [f"<h1>{title}</h1><dl class='facts'>",
             *[f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in facts], "</dl>"]
    md = [f"# {title}", "", *[f"- **{k}:** {md_escape(v)}" for k, v in facts], ""]
    levels = [s for s in sections if s[1] == LEVEL_HEADER]
    parts.append("<div class='levels'>")
    for heading, header, rows in levels:
        parts += [f"<section><h2>{html.escape(heading)}</h2>", html_table(header, rows, numeric=(1,)), "</section>"]
    parts.append("</div>")
    for heading, header, rows in sections:
        if (heading, header, rows) not in levels:
            parts += [f"<h2>{html.escape(heading)}</h2>", html_table(header, rows, numeric=(1, 2))]
        md += [f"## {md_escape(heading)}", "", md_table(header, rows), ""]
    parts.append("<h2>Figures</h2><div class='figures'>")
    md += ["## Figures", ""]
    for figure in figures:
        parts.append(embed(figure))
        md.append(f"![{figure.stem}]({figure.name})")
    parts.append("</div>")
    if gallery:
        layer = "the final feature map" if str(result.get("model", "")).startswith("timm:") else "conv4"
        parts.append(f"<h2>Gallery: where the model looked (Grad-CAM at {layer})</h2>")
        md += ["", f"## Gallery: where the model looked (Grad-CAM at {layer})", ""]
        for group in dict.fromkeys(g for g, _ in gallery):
            parts.append(f"<h3>{html.escape(group)}</h3><div class='figures'>")
            md.append(f"### {md_escape(group)}\n")
            for g, path in gallery:
                if g == group:
                    parts.append(embed(path))
                    md.append(f"![{path.stem}]({path.relative_to(out).as_posix()})")
            parts.append("</div>")
    (out / "report.html").write_text(html_page(title, parts), encoding="utf-8")
    (out / "report.md").write_text("\n".join(md) + "\n", encoding="utf-8")
    return out / "report.html", out / "report.md"
