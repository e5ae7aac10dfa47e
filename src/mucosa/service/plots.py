"""The probability timeline of a case as a picture for its reports (matplotlib's object API, no pyplot: safe
in the server's threads).

Frames are placed by their number, so what a damaged recording lost shows as such: a gap between decoded
frames, and the frames the video announced but that never decoded at its end, are shaded and labelled.
"""

from __future__ import annotations

import io

from mucosa.service.presentation import GREYS, UNFAMILIAR_MARK, class_colours, is_unfamiliar, probability_of

__all__ = ["calibration_figure", "timeline_figure"]

MISSING = "#9aa3ad"  # frames announced but not decoded
DROPPED = "#55606e"  # frames below the quality gate (a tick under the plot)


def _axis_label(card: dict) -> str:
    positive = card.get("positive")
    return f"P({positive})" if positive else "probability of each class"


def timeline_figure(case: dict, card: dict, fmt: str = "png", width: float = 7.2, height: float = 2.9,
                    dpi: int = 150) -> bytes:
    """The case's timeline as a PNG or SVG (``fmt``): each informative frame's probability (dots, coloured by
    the class it is called; grey when the case is `unfamiliar`: no class is called), the smoothed probability
    (line), the threshold (binary models), frames the atlas finds unfamiliar (marks above 1.0; the viewer draws
    its inside the plot, just under P = 1), frames dropped by the quality gate (ticks under the plot) and frames
    lost by a damaged recording (shaded)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows, classes, colours = case["timeline"], card["classes"], class_colours(card)
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.08, 0.34, 0.9, 0.62))
    binary = card.get("positive") is not None
    used = [r for r in rows if not r["dropped"] and r["probability"] is not None]
    if is_unfamiliar(case.get("verdict")):
        ax.scatter([r["frame"] for r in used], [_plotted(r, binary) for r in used], s=6, color=GREYS[0], alpha=0.6,
                   linewidths=0, label="frame (the network's probability; no class: unfamiliar)")
    else:
        for cls in classes:
            mine = [r for r in used if r.get("called") == cls]
            ax.scatter([r["frame"] for r in mine], [_plotted(r, binary) for r in mine], s=6, color=colours[cls],
                       alpha=0.6, linewidths=0, label=f"frame called {cls}")
    for cls in classes if not binary else [card["positive"]]:
        points = [(r["frame"], probability_of(r["smoothed"], cls, classes)) for r in rows
                  if r["smoothed"] is not None]
        if points:
            ax.plot(*zip(*points), color="#1b2430" if binary else colours[cls], linewidth=1.4,
                    label="smoothed" if binary else f"smoothed P({cls})")
    if binary:
        ax.axhline(card["threshold"], color="#55606e", linestyle="--", linewidth=0.9,
                   label=f"threshold {card['threshold']:g}")
    end = max(case.get("frames_expected") or 0, rows[-1]["frame"] + 1 if rows else 1)
    _shade_losses(ax, rows, end)
    dropped = [r["frame"] for r in rows if r["dropped"]]
    if dropped:
        ax.scatter(dropped, [-0.07] * len(dropped), marker="|", s=30, color=DROPPED, clip_on=False,
                   label="dropped by the quality gate")
    unfamiliar = [r["frame"] for r in used if r.get("unfamiliar")]
    if unfamiliar:
        ax.scatter(unfamiliar, [1.07] * len(unfamiliar), marker="|", s=30, color=UNFAMILIAR_MARK,
                   label="unfamiliar frame (unlike the atlas)")
    ax.set_xlim(-0.5, end - 0.5)
    ax.set_ylim(-0.1, 1.12 if unfamiliar else 1.02)
    ax.set_xlabel("frame" if case.get("kind") == "video" else "image frame", fontsize=8)
    ax.set_ylabel(_axis_label(card), fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(axis="y", color="#e3e7ec", linewidth=0.6)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=7, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=dpi, facecolor="white", metadata={"Date": None} if fmt == "svg" else None)
    return buffer.getvalue()


def _plotted(row: dict, binary: bool) -> float:
    """What a frame's dot plots: P(positive) for a binary model, else the probability of the class it calls."""
    return float(row["probability"]) if binary else max(row["probability"])


def _shade_losses(ax, rows: list[dict], end: int) -> None:
    """Shade the gaps between decoded frames and the announced frames after the last one."""
    spans = [(a["frame"] + 1, b["frame"]) for a, b in zip(rows, rows[1:]) if b["frame"] - a["frame"] > 1]
    if rows and end > rows[-1]["frame"] + 1:
        spans.append((rows[-1]["frame"] + 1, end))
    for k, (start, stop) in enumerate(spans):
        ax.axvspan(start - 0.5, stop - 0.5, color=MISSING, alpha=0.3, linewidth=0,
                   label="announced, not decoded" if k == 0 else None)


def calibration_figure(audit: dict, card: dict, width: float = 4.8, height: float = 4.2, dpi: int = 150) -> bytes:
    """The running audit's calibration curve as a PNG: per bin of the predicted probability of the positive
    class, the share histology found positive with its exact interval, beside the diagonal of a calibrated
    model; each point's size follows its cases."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    positive = audit.get("positive") or card.get("positive")
    colour = class_colours(card).get(positive, "#1d3f72")
    rows = [row for row in audit["overall"].get("calibration") or [] if row.get("cases")]
    fig = Figure(figsize=(width, height), dpi=dpi)
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0.14, 0.13, 0.82, 0.8))
    ax.plot([0, 1], [0, 1], color=MISSING, linestyle="--", linewidth=0.9, label="calibrated")
    xs = [row["predicted"] for row in rows]
    ys = [row["observed"] for row in rows]
    low = [row["observed"] - row["ci"][0] for row in rows]
    high = [row["ci"][1] - row["observed"] for row in rows]
    ax.errorbar(xs, ys, yerr=[low, high], color=colour, linewidth=1.2, capsize=3, marker="none")
    ax.scatter(xs, ys, s=[12 + 4 * row["cases"] for row in rows], color=colour, zorder=3,
               label=f"reviewed cases ({sum(row['cases'] for row in rows)})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel(f"predicted P({positive})", fontsize=8)
    ax.set_ylabel(f"share with {positive} histology (exact 95% CI)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(color="#e3e7ec", linewidth=0.6)
    ax.legend(loc="upper left", fontsize=7, frameon=False)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, facecolor="white")
    return buffer.getvalue()
