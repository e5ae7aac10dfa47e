"""A case as files to download: the per-frame timeline CSV and a one-page HTML report."""

from __future__ import annotations

import csv
import html
import io
import time

from mucosa.tables import safe_row


def _values(value, classes: list[str]) -> list[str]:
    width = 1 if len(classes) == 2 else len(classes)
    if value is None:
        return [""] * width
    return [f"{value:.6f}"] if isinstance(value, float) else [f"{v:.6f}" for v in value]


def _columns(name: str, classes: list[str]) -> list[str]:
    return [name] if len(classes) == 2 else [f"{name}_{c}" for c in classes]


def timeline_csv(case: dict, classes: list[str]) -> str:
    """``frame, time, probability, smoothed, quality, dropped`` (per-class columns for more than two classes;
    ``source`` for image cases), one row per frame."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    images = case["kind"] == "images"
    writer.writerow(safe_row(["frame", "time", *_columns("probability", classes), *_columns("smoothed", classes),
                              "quality", "dropped", *(["source"] if images else [])]))
    for row in case["timeline"]:  # file names are the client's: neutralised like every CSV cell of mucosa
        writer.writerow(safe_row([row["frame"], "" if row["time"] is None else f"{row['time']:.4f}",
                                  *_values(row["probability"], classes), *_values(row["smoothed"], classes),
                                  f"{row['quality']:.4f}", int(row["dropped"]),
                                  *([case["files"][row["source"]]] if images else [])]))
    return out.getvalue()


def _polyline(points: list[tuple[float, float]]) -> str:
    return " ".join(f"{x:.1f},{y:.1f}" for x, y in points)


def timeline_svg(case: dict, threshold: float, width: int = 860, height: int = 220) -> str:
    """The probability timeline as inline SVG: frames (dots), smoothed line, threshold, dropped frames."""
    rows = case["timeline"]
    left, top, plot_w, plot_h = 44, 12, width - 56, height - 52
    count = max(len(rows), 1)
    x = lambda k: left + plot_w * (k + 0.5) / count  # noqa: E731
    y = lambda p: top + plot_h * (1 - p)  # noqa: E731
    binary = all(not isinstance(r["probability"], list) for r in rows)
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" role="img" '
             f'aria-label="probability timeline" font-family="sans-serif" font-size="11">',
             f'<rect x="{left}" y="{top}" width="{plot_w}" height="{plot_h}" fill="#f7f9fb" stroke="#c9d1da"/>']
    for p in (0, 0.5, 1):
        parts.append(f'<text x="{left - 6}" y="{y(p) + 4:.1f}" text-anchor="end" fill="#55606e">{p:g}</text>')
    parts.append(f'<line x1="{left}" x2="{left + plot_w}" y1="{y(threshold):.1f}" y2="{y(threshold):.1f}" '
                 f'stroke="#8a94a3" stroke-dasharray="4 3"/>')
    if binary:
        dots = "".join(f'<circle cx="{x(k):.1f}" cy="{y(r["probability"]):.1f}" r="1.6"/>'
                       for k, r in enumerate(rows) if r["probability"] is not None)
        parts.append(f'<g fill="#4a78b5" fill-opacity="0.45">{dots}</g>')
        line = [(x(k), y(r["smoothed"])) for k, r in enumerate(rows) if r["smoothed"] is not None]
        parts.append(f'<polyline points="{_polyline(line)}" fill="none" stroke="#1d3f72" stroke-width="2"/>')
    band = top + plot_h + 8
    ticks = "".join(f'<rect x="{x(k) - plot_w / count / 2:.1f}" y="{band}" width="{max(plot_w / count, 1):.1f}" '
                    f'height="8"/>' for k, r in enumerate(rows) if r["dropped"])
    parts.append(f'<g fill="#c0392b">{ticks}</g>')
    parts.append(f'<text x="{left}" y="{band + 24}" fill="#55606e">frames 0–{len(rows) - 1}; red: dropped by the '
                 f'quality gate; dots: frame probability, line: smoothed, dashed: threshold {threshold:g}</text>')
    parts.append("</svg>")
    return "".join(parts)


def report_html(case: dict, card: dict) -> str:
    """A self-contained HTML page: verdict, counts, timeline, model and how the verdict was reached."""
    e = html.escape
    verdict = case.get("verdict") or {}
    score = verdict.get("score")
    score_text = "" if score is None else (f"{score:.3f}" if isinstance(score, float)
                                           else ", ".join(f"{c} {v:.3f}" for c, v in zip(card["classes"], score)))
    positive = card.get("positive")
    created = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(case["created"]))
    rows = [("Case", case["name"]), ("Files", ", ".join(case["files"])), ("Opened", created),
            ("Status", case["status"] + (f" — {case['error']}" if case.get("error") else "")),
            ("Frames", f"{case['frames_done']} decoded, {case['frames_dropped']} dropped by the quality gate "
                       f"(threshold {card['preprocessing']['quality_threshold']:g})"),
            ("Verdict rests on", f"{verdict.get('frames', 0)} informative frames"),
            ("Score", (f"mean probability of {card['verdicts'][positive]}: " if positive else "mean probabilities: ")
             + score_text
             if score_text else "—"),
            ("Decision threshold", f"{card['threshold']:g}"),
            ("Model", f"{card['name']} ({(card.get('model') or {}).get('kind', '?')}, {card['input_size']}×"
                      f"{card['input_size']}, classes {', '.join(card['classes'])}; runtime "
                      f"{card['runtime']['name']})")]
    table = "".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in rows)
    tone = "active" if positive and verdict.get("class") == positive else "healed" if verdict.get("label") else "none"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>mucosa case report: {e(case['name'])}</title>
<style>
body {{ font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1c2430; max-width: 920px;
  margin: 2rem auto; padding: 0 1rem; }}
h1 {{ font-size: 1.3rem; margin: 0 0 .2rem; }} .sub {{ color: #55606e; margin: 0 0 1.2rem; }}
.verdict {{ border-radius: 8px; padding: .9rem 1.1rem; margin-bottom: 1.2rem; font-size: 1.5rem; font-weight: 650; }}
.verdict.active {{ background: #fbeae8; color: #9b2a1d; }} .verdict.healed {{ background: #e6f4ee; color: #1d6b47; }}
.verdict.none {{ background: #eef1f4; color: #3b4654; }}
.verdict small {{ display: block; font-size: .9rem; font-weight: 400; color: #3b4654; }}
table {{ border-collapse: collapse; width: 100%; margin-bottom: 1.2rem; }}
th, td {{ text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #e3e7ec; vertical-align: top; }}
th {{ width: 12rem; color: #55606e; font-weight: 500; }}
.note {{ color: #55606e; font-size: .85rem; }}
</style></head><body>
<h1>mucosa case report</h1><p class="sub">{e(case['name'])} · {e(created)}</p>
<div class="verdict {tone}">{e(verdict.get('text', '—').capitalize())}
<small>{e(score_text and 'score ' + score_text + ' · ')}{verdict.get('frames', 0)} of {case['frames_done']} frames
informative · {e(case['status'])}</small></div>
<table>{table}</table>
{timeline_svg(case, card['threshold'])}
<p class="note">The verdict is the mean probability of the frames that passed the quality gate, compared with the
threshold; frames below the gate count for nothing. Research software: not a diagnosis, and not validated for
clinical use.</p>
</body></html>
"""
