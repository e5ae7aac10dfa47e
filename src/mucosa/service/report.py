"""A case as files to download and to file: the per-frame timeline CSV and the case report.

The report is gathered once as plain data (:func:`report_data`, served as ``report.json``) and rendered from
it as a self-contained HTML page (:func:`report_html`) and as PDF (:mod:`mucosa.service.report_pdf`). It
holds the case and its exam fields; the model (name, version, weights SHA-256); the verdict with the
confidence of the class it calls, the share of frames per class and an interval; the timeline plot; key
frames (the most confident frame called each class) with their Grad-CAM; the quality gate's work and the
decode warnings; the reviewer's sign-off once there is one; and the banner. :func:`gather` collects the
pictures (timeline, key frames) from a case and the engine.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import time
from dataclasses import dataclass, field
from datetime import datetime

from mucosa.data.pseudonyms import Pseudonym
from mucosa.inference import verdict as verdicts
from mucosa.service.atlas import SIMILAR_CASES, NotReady, similar_cases
from mucosa.service.plots import timeline_figure
from mucosa.service.presentation import (
    BANNER,
    GREYS,
    class_colours,
    confidence,
    network_guess,
    probability_of,
    share_interval,
    shares,
    unfamiliar_words,
)
from mucosa.service.privacy import private_case, private_similar
from mucosa.tables import safe_row

__all__ = ["EXAM_FIELDS", "FORMAT", "MONOSPACED", "ReportParts", "atlas_rows", "case_rows", "gather", "key_caption",
           "key_frames", "key_frames_note", "model_rows", "quality_line", "report_data", "report_html", "review_rows",
           "share_colours", "timeline_csv", "verdict_lines"]

FORMAT = "mucosa-case-report/1"
# exam fields a case may carry (at its top level, or in an "exam" mapping): shown when present
EXAM_FIELDS = ("patient", "patient_id", "exam_date", "date", "region", "site", "operator", "indication")


def _values(value, classes: list[str]) -> list[str]:
    width = 1 if len(classes) == 2 else len(classes)
    if value is None:
        return [""] * width
    return [f"{value:.6f}"] if isinstance(value, float) else [f"{v:.6f}" for v in value]


def _columns(name: str, classes: list[str]) -> list[str]:
    return [name] if len(classes) == 2 else [f"{name}_{c}" for c in classes]


def timeline_csv(case: dict, classes: list[str]) -> str:
    """``frame, time, probability, smoothed, quality, dropped`` (per-class columns for more than two classes;
    ``source`` for image cases), then ``called`` (the class the frame's probability calls; empty for a dropped
    frame) and ``unfamiliar`` (1 or 0, as ``dropped`` and the ``unfamiliar`` columns of ``predict`` and ``stream``;
    empty when the atlas cannot tell), one row per frame."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    images = case["kind"] == "images"
    writer.writerow(safe_row(["frame", "time", *_columns("probability", classes), *_columns("smoothed", classes),
                              "quality", "dropped", *(["source"] if images else []), "called", "unfamiliar"]))
    for row in case["timeline"]:  # file names are the client's: neutralised like every CSV cell of mucosa
        flag = row.get("unfamiliar")
        writer.writerow(safe_row([row["frame"], "" if row["time"] is None else f"{row['time']:.4f}",
                                  *_values(row["probability"], classes), *_values(row["smoothed"], classes),
                                  f"{row['quality']:.4f}", int(row["dropped"]),
                                  *([case["files"][row["source"]]] if images else []), row.get("called") or "",
                                  "" if flag is None else int(bool(flag))]))
    return out.getvalue()




def _when(seconds: float | None) -> str | None:
    """A moment as ISO 8601 in the server's time zone, e.g. ``2026-03-02T14:05:09+01:00``."""
    return None if seconds is None else datetime.fromtimestamp(seconds).astimezone().isoformat(timespec="seconds")


def exam_fields(case: dict) -> dict[str, str]:
    """The exam fields the case carries, by the API's keys (``patient``, ``exam_date``, ``region``), in
    :data:`EXAM_FIELDS`' order and then the "exam" mapping's."""
    found = {key: case.get(key) for key in EXAM_FIELDS}
    if isinstance(case.get("exam"), dict):
        found.update(case["exam"])
    return {str(key): str(value) for key, value in found.items() if value not in (None, "")}


def _label(key: str) -> str:
    """A key as the reports print it: ``exam_date`` → "Exam date"."""
    return key.replace("_", " ").capitalize()


def key_frames(case: dict, classes: list[str]) -> list[dict]:
    """The most confident informative frame called each class: ``[{"class", "frame", "time",
    "probability"}]`` (probability of that class), in class order; a class no frame was called is left out."""
    best: dict[str, dict] = {}
    for row in case["timeline"]:
        cls = row.get("called")
        if cls not in classes:
            continue
        p = probability_of(row["probability"], cls, classes)
        if cls not in best or p > best[cls]["probability"]:
            best[cls] = {"class": cls, "frame": row["frame"], "time": row["time"], "probability": p}
    return [best[c] for c in classes if c in best]


def report_data(case: dict, card: dict, generated: float | None = None, similar: list | None = None) -> dict:
    """The case report as plain data (``report.json``); ``case`` is the API's case with its timeline, ``similar``
    the most similar confirmed cases of the atlas (``atlas.similar_cases``)."""
    classes, verdict = card["classes"], case.get("verdict") or {}
    reason, alone = unfamiliar_words(verdict, classes)
    rows = case["timeline"]
    quality = [r["quality"] for r in rows]
    return {
        "format": FORMAT, "banner": BANNER, "generated": _when(generated or time.time()),
        "case": {"id": case["id"], "name": case["name"], "kind": case["kind"], "files": case["files"],
                 "opened": _when(case.get("created")), "finished": _when(case.get("finished")),
                 "status": case["status"], "error": case.get("error"), "fps": case.get("fps"),
                 "frames_expected": case["frames_expected"], "frames_decoded": case["frames_done"]},
        "exam": exam_fields(case),
        "model": {"name": card["name"], "model_version": case.get("model_version"),
                  "version": card.get("mucosa_version"),
                  "weights_sha256": card.get("weights_sha256"), "kind": (card.get("model") or {}).get("kind"),
                  "input_size": card["input_size"], "classes": classes, "verdicts": card.get("verdicts"),
                  "colours": class_colours(card), "threshold": card["threshold"],
                  "runtime": (card.get("runtime") or {}).get("name")},
        "verdict": {"state": verdict.get("state"), "label": verdict.get("label"), "class": verdict.get("class"),
                    "text": verdict.get("text"), "confidence": confidence(verdict, classes),
                    "frames": verdict.get("frames", 0), "total": verdict.get("total", 0),
                    "shares": shares(verdict, classes), "interval": share_interval(verdict, classes),
                    "rule": _rule(card), "unfamiliarity_ratio": verdict.get("unfamiliarity_ratio"), "reason": reason,
                    "network_alone": alone, "network_guess": network_guess(verdict, classes) if reason else None},
        "quality": {"threshold": card["preprocessing"]["quality_threshold"], "frames_dropped": case["frames_dropped"],
                    "mean": sum(quality) / len(quality) if quality else None},
        "warnings": list(case.get("warnings") or []),
        "key_frames": key_frames(case, classes),
        "review": _sign_off(case.get("review")),
        "atlas": {"available": bool(card.get("atlas")), "note": card.get("atlas_note"),
                  "vote": verdict.get("atlas_vote"), "unfamiliar": verdict.get("unfamiliar"),
                  "similar": [{k: c[k] for k in ("rank", "case", "patient", "label", "distance")} |
                              {"thumbnail": c["closest"][0]["thumbnail"] if c["closest"] else None}
                              for c in similar or []]},
    }


def _sign_off(review):
    """The reviewer's sign-off as the report shows it: the API's review without its ids; the verdict judged is the
    class, or ``unfamiliar`` for an unfamiliar case (its ``verdict_text``)."""
    if isinstance(review, dict) and "case_id" in review:
        kept = {key: value for key, value in review.items() if key not in ("id", "case_id", "verdict_text")}
        if kept.get("verdict") is None and review.get("verdict_text") == verdicts.UNFAMILIAR:
            kept["verdict"] = verdicts.UNFAMILIAR
        return kept
    return review


def _rule(card: dict) -> str:
    if card.get("positive"):
        return (f"the mean probability of {card['positive']} over the frames that passed the quality gate, called "
                f"{card['positive']} at {card['threshold']:g} or above; frames below the gate count for nothing")
    return "the class of highest mean probability over the frames that passed the quality gate"


def _similar(case, engine) -> list:
    """The five confirmed cases most like a finished case (none without an atlas or a usable frame)."""
    if case.status != "done" or case.folder is None:
        return []
    try:
        return similar_cases(engine.atlas, case.folder, case.sources, SIMILAR_CASES, case.record.patient)["similar"]
    except NotReady:
        return []


def atlas_rows(data: dict) -> list[tuple[str, str]]:
    """What the atlas says as (label, text) rows, as both reports print them: its vote, the unfamiliar share and
    the similar confirmed cases (or the note that there is no atlas). For an unfamiliar case the vote is no second
    opinion and the cases are the nearest, not similar: so named, and a vote against the network's guess said."""
    atlas, verdict = data["atlas"], data["verdict"]
    if not atlas["available"]:
        return [("Atlas", atlas["note"] or "none")]
    vote, share, ratio = atlas["vote"], atlas["unfamiliar"], verdict.get("unfamiliarity_ratio")
    voted = "—" if not vote else f"{vote['label']} ({verdicts.percent(vote['share'])} of the nearest confirmed frames)"
    frames = f"{verdicts.percent(share)} of the informative frames" if share is not None else (
        atlas.get("note") or "cannot tell")  # an atlas that is not calibrated: its note says why
    if not verdict.get("reason"):
        return [("Atlas vote (second opinion)", voted), ("Unfamiliar frames", frames),
                *((f"Similar case {c['rank']}", _found(c)) for c in atlas["similar"])]
    if ratio is not None:
        frames += f"; unfamiliarity ratio {ratio:.2f} (above 1 is unfamiliar)"
    rows = [("Nearest atlas frames", "no second opinion: this recording is unlike the atlas's cases" +
             ("" if not vote else f"; most are {voted}")), ("Unfamiliar frames", frames)]
    guess = verdict.get("network_guess")
    if vote and guess and vote["label"] != guess:
        rows.append(("Disagreement", f"the network's unsupported guess ({guess}) and most of the nearest atlas "
                                     f"frames ({vote['label']}) disagree; neither is a verdict"))
    return rows + [(f"Nearest atlas case {c['rank']}", "not similar: " + _found(c)) for c in atlas["similar"]]


def _found(case: dict) -> str:
    return f"{case['label']} · {case['case']} · patient {case['patient']} · distance {case['distance']:.3f}"


def share_colours(data: dict) -> dict[str, str]:
    """The colour of each class's share of frames in the verdict's bar: the class's, or for an unfamiliar case
    greys (:data:`~mucosa.service.presentation.GREYS`), so that no class's colour stands for the verdict."""
    classes, colours = data["model"]["classes"], data["model"]["colours"]
    if not data["verdict"].get("reason"):
        return colours
    return {c: GREYS[k % len(GREYS)] for k, c in enumerate(classes)}


@dataclass
class ReportParts:
    """What a report shows: its data, the timeline plot (PNG, and SVG for the HTML page) and the key
    frames' pictures (frame number → (display JPEG, Grad-CAM PNG))."""

    data: dict
    timeline_png: bytes
    timeline_svg: str
    images: dict[int, tuple[bytes, bytes]] = field(default_factory=dict)


def gather(case, engine, card: dict, pictures: bool = True, pseudonym: Pseudonym | None = None) -> ReportParts:
    """The report of a case (``cases.Case``): its data and (``pictures``) its pictures, Grad-CAM from
    ``engine`` (slow the first time for each key frame; the engine keeps them). ``pseudonym``: the report names
    patients, cases and files by these pseudonyms (``serve --pseudonymise``, :mod:`mucosa.service.privacy`)."""
    summary, similar = case.to_dict(), _similar(case, engine)
    if pseudonym is not None:
        summary = private_case(summary, pseudonym)
        similar = private_similar({"similar": similar}, pseudonym)["similar"]
    data = report_data(summary, card, similar=similar)
    if not pictures:
        return ReportParts(data, b"", "")
    images = {}
    if case.store is not None:
        for key in data["key_frames"]:
            number = key["frame"]
            images[number] = (case.store.display_path(number).read_bytes(),
                              engine.frame_png(case.store, number, gradcam=True))
    svg = timeline_figure(summary, card, "svg").decode()
    return ReportParts(data, timeline_figure(summary, card, "png"), svg[svg.index("<svg"):], images)


# --------------------------------------------------------------------------------------------------
# HTML
# --------------------------------------------------------------------------------------------------

_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1b2430; max-width: 940px;
  margin: 0 auto; padding: 0 1rem 2rem; }
.banner { background: #1d3f72; color: #fff; font-weight: 650; padding: .55rem 1rem; margin: 0 -1rem 1.2rem;
  text-align: center; letter-spacing: .2px; }
h1 { font-size: 1.35rem; margin: 0 0 .2rem; } h2 { font-size: 1.05rem; margin: 1.4rem 0 .5rem; }
.sub { color: #4f5b6a; margin: 0 0 1.2rem; }
.verdict { border: 1px solid #dde3ea; border-left: 8px solid var(--tone); border-radius: 8px; padding: .9rem 1.1rem; }
.verdict .label { font-size: 1.5rem; font-weight: 700; }
.verdict p { margin: .3rem 0 0; }
.shares { display: flex; height: 14px; border-radius: 4px; overflow: hidden; margin: .6rem 0 .3rem;
  border: 1px solid #1b2430; }
.swatch { display: inline-block; width: .8em; height: .8em; border: 1px solid #1b2430; margin-right: .3em;
  vertical-align: -1px; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .35rem .5rem; border-bottom: 1px solid #e3e7ec; vertical-align: top; }
th { width: 13rem; color: #4f5b6a; font-weight: 500; }
code { font-size: .85em; word-break: break-all; }
.warnings { background: #fff6e0; border: 1px solid #b7791f; border-radius: 8px; padding: .6rem 1rem; }
.warnings li { margin: .2rem 0; }
.keys { display: grid; grid-template-columns: repeat(auto-fill, minmax(280px, 1fr)); gap: 1rem; }
.keys figure { margin: 0; } .keys img { width: 49%; } .keys figcaption { font-size: .9rem; color: #4f5b6a; }
.timeline svg { width: 100%; height: auto; }
.note { color: #4f5b6a; font-size: .88rem; }
"""


def _rows(pairs) -> str:
    e = html.escape
    return "".join(f"<tr><th scope='row'>{e(str(k))}</th><td>{v}</td></tr>" for k, v in pairs)


def _data_url(data: bytes, kind: str) -> str:
    return f"data:image/{kind};base64," + base64.b64encode(data).decode()


def verdict_lines(data: dict) -> dict[str, str]:
    """The verdict's words as the HTML and PDF reports print them: ``label``, ``confidence``, ``shares``,
    ``interval`` and ``frames`` (plain text). For an unfamiliar case ``confidence`` is why (the viewer's words, with
    the ratio and the share of unfamiliar frames) and ``shares`` what the network alone would have said."""
    v = data["verdict"]
    label = (v["label"] or v["text"] or "no verdict").capitalize()
    if data["case"]["status"] == "failed":
        label = "No verdict"
    lines = {"label": label, "confidence": "", "shares": "", "interval": "",
             "frames": f"rests on {v['frames']} of {data['case']['frames_decoded']} decoded frames "
                       f"({data['quality']['frames_dropped']} dropped by the quality gate)"}
    if v["confidence"] is not None:
        lines["confidence"] = f"mean probability of {v['class']}: {v['confidence']:.3f}"
    if v.get("reason"):  # unfamiliar: why, and the network's call only as what it alone would have said
        return {**lines, "confidence": v["reason"], "shares": v["network_alone"] or ""}
    if any(row["share"] is not None for row in v["shares"]):
        lines["shares"] = "frames called " + " · ".join(
            f"{row['class']} {verdicts.percent(row['share'])} ({row['frames']})" for row in v["shares"])
    if v["interval"]:
        i = v["interval"]
        lines["interval"] = (f"{verdicts.percent(i['share'])} of informative frames called {i['class']} (95% interval "
                             f"{100 * i['low']:.0f}–{100 * i['high']:.0f}%, {i['method']})")
    return lines


MONOSPACED = ("Case id", "Weights SHA-256")  # labels whose values print in a fixed-width font


def case_rows(data: dict) -> list[tuple[str, str]]:
    """The case and its exam fields as (label, text) rows, as both reports print them."""
    case = data["case"]
    frames = (f"{case['frames_decoded']} decoded of {case['frames_expected']} announced" if case["kind"] == "video"
              else f"{case['frames_decoded']} from {len(case['files'])} image(s)")
    return [("Case id", case["id"]), ("Case", case["name"]), ("Files", ", ".join(case["files"])),
            ("Opened", case["opened"] or ""), ("Status", case["status"] + (f" — {case['error']}" if case.get("error")
                                                                           else "")),
            ("Frames", frames), *((_label(key), value) for key, value in data["exam"].items())]


def model_rows(data: dict) -> list[tuple[str, str]]:
    """The model as (label, text) rows, as both reports print them."""
    model = data["model"]
    return [("Model", model["name"]), *([("Model version", model["model_version"])] if model.get("model_version")
                                        else []),
            ("mucosa version", str(model["version"] or "unknown")),
            ("Weights SHA-256", str(model["weights_sha256"] or "unknown")), ("Classes", ", ".join(model["classes"])),
            ("Decision rule", data["verdict"]["rule"]),
            ("Runtime", f"{model['kind'] or '?'}, {model['input_size']}×{model['input_size']}, {model['runtime']}")]


def quality_line(data: dict) -> str:
    """What the quality gate did, in one sentence."""
    quality = data["quality"]
    mean = "" if quality["mean"] is None else f"; mean quality {quality['mean']:.2f}"
    return (f"{quality['frames_dropped']} frame(s) dropped by the quality gate (threshold "
            f"{quality['threshold']:g}{mean}).")


def _html_rows(rows: list[tuple[str, str]], colours: dict | None = None) -> str:
    e, cells = html.escape, []
    for label, text in rows:
        if label in MONOSPACED:
            cells.append((label, f"<code>{e(text)}</code>"))
        elif label == "Classes" and colours:
            cells.append((label, " ".join(f'<span><i class="swatch" style="background:{colour}"></i>{e(c)}</span>'
                                          for c, colour in colours.items())))
        else:
            cells.append((label, e(text)))
    return f"<table>{_rows(cells)}</table>"


def report_html(parts: ReportParts) -> str:
    """A self-contained HTML page of the report (pictures embedded)."""
    e, data = html.escape, parts.data
    case, v, colours = data["case"], data["verdict"], data["model"]["colours"]
    words, unfamiliar = verdict_lines(data), bool(v.get("reason"))
    bar = "".join(f'<span style="width:{100 * row["share"]:.2f}%;background:{share_colours(data)[row["class"]]}">'
                  "</span>" for row in v["shares"] if row["share"])
    warnings = "".join(f"<li>{e(w)}</li>" for w in data["warnings"])
    warning_block = (f'<div class="warnings" role="note"><strong>Damaged recording: the verdict rests on the '
                     f"frames that decoded.</strong><ul>{warnings}</ul></div>") if warnings else \
        "<p>No decode warnings: the recording decoded whole.</p>"
    keys = "".join(_key_figure(key, parts.images.get(key["frame"]), unfamiliar) for key in data["key_frames"]) or \
        "<p>No informative frame.</p>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>mucosa case report: {e(case['name'])}</title><style>{_STYLE}</style></head><body>
<header class="banner" role="note">{e(data['banner'])}</header>
<main>
<h1>mucosa case report</h1>
<p class="sub">{e(case['name'])} · case {e(case['id'])} · generated {e(data['generated'])}</p>
<section class="verdict" style="--tone:{colours.get(v["class"], "#8a94a3")}" aria-label="verdict">
<div class="label">{e(words['label'])}</div>
<p>{e(words['confidence'])}</p>
<div class="shares" role="img" aria-label="{e(words['shares'] or 'no informative frames')}">{bar}</div>
<p>{e(words['shares'])}</p><p>{e(words['interval'])}</p><p>{e(words['frames'])}</p>
</section>
<h2>Case and exam</h2>{_html_rows(case_rows(data))}
<h2>Model</h2>{_html_rows(model_rows(data), colours)}
<h2>Atlas of confirmed cases</h2>{_html_rows(atlas_rows(data))}
<h2>Quality and decoding</h2>
<p>{e(quality_line(data))}</p>
{warning_block}
<h2>Timeline</h2>
<figure class="timeline" role="img" aria-label="probability timeline of the case">{parts.timeline_svg}</figure>
<h2>Key frames</h2><p class="note">{e(key_frames_note(data))}</p><div class="keys">{keys}</div>
<h2>Reviewer sign-off</h2>{_review_html(data['review'])}
<p class="note">{e(data['banner'])}. The verdict supports, and does not replace, the endoscopist's judgement.</p>
</main></body></html>
"""


def key_frames_note(data: dict) -> str:
    """What the key frames are, above them in both reports."""
    if data["verdict"].get("reason"):
        return ("The case is unfamiliar: no class is given. These are the frames the network alone was most "
                "confident about, beside its Grad-CAM: the network's attention for its unsupported guess, not "
                "evidence for a class.")
    return ("The most confident frame called each class, beside its Grad-CAM (the evidence for that class, inside "
            "the field of view).")


def key_caption(key: dict, unfamiliar: bool = False) -> str:
    """A key frame's caption: ``frame 135 (5.62 s): called meningioma, P(meningioma) 0.669``; of an
    ``unfamiliar`` case, no class called: ``frame 135 (5.62 s): the network's P(meningioma) 0.669; Grad-CAM: its
    attention for its unsupported guess``."""
    when = "" if key["time"] is None else f" ({key['time']:.2f} s)"
    if unfamiliar:
        return (f"frame {key['frame']}{when}: the network's P({key['class']}) {key['probability']:.3f}; Grad-CAM: "
                "its attention for its unsupported guess")
    return f"frame {key['frame']}{when}: called {key['class']}, P({key['class']}) {key['probability']:.3f}"


def _key_figure(key: dict, images: tuple[bytes, bytes] | None, unfamiliar: bool) -> str:
    e = html.escape
    caption = key_caption(key, unfamiliar)
    cam = "the network's unsupported guess" if unfamiliar else e(key["class"])
    pictures = "" if images is None else (
        f'<img src="{_data_url(images[0], "jpeg")}" alt="frame {key["frame"]}">'
        f'<img src="{_data_url(images[1], "png")}" alt="Grad-CAM of {cam} on frame {key["frame"]}"> ')
    return f"<figure>{pictures}<figcaption>{e(caption)}</figcaption></figure>"


_REVIEW_LABELS = {"agrees": "Agrees with the verdict", "at": "Signed", "verdict": "Verdict reviewed"}


def review_rows(review) -> list[tuple[str, str]]:
    """A reviewer's sign-off (a mapping, a list of them, or text) as (label, text) rows; none without one."""
    if not review:
        return []
    if isinstance(review, list):
        return [row for item in review for row in review_rows(item)]
    if isinstance(review, dict):
        judged = f" (the verdict {verdicts.UNFAMILIAR})" if review.get("verdict") == verdicts.UNFAMILIAR else ""
        return [(_REVIEW_LABELS.get(k) or _label(str(k)), _words(v) + (judged if k == "agrees" else ""))
                for k, v in review.items() if v not in (None, "")]
    return [("Review", str(review))]


def _words(value) -> str:
    """A value as a clinical document prints it: true and false as "yes" and "no"."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _review_html(review) -> str:
    rows = review_rows(review)
    if not rows:
        return "<p>Not reviewed yet: no sign-off.</p>"
    return f"<table>{_rows((k, html.escape(v)) for k, v in rows)}</table>"
