"""How the viewer and the reports present a model's classes and a case's verdict: the same words and colours
everywhere.

- :data:`BANNER`: the statement on every page and report.
- :func:`class_colours`: one colour per class. A palette with no clinical meaning (Okabe–Ito, readable with
  every common colour-vision deficiency) unless the classes are the inflammation pair whose verdicts say
  "mucosal healing" and "active inflammation": then green and red, whose meaning is meant.
- :func:`probability_of`: the probability of one class, from a binary model's positive probability too.
- :func:`confidence`: the mean probability of the class the verdict calls (for a binary model the score is
  the positive class's, so a negative verdict's confidence is ``1 - score``).
- :func:`shares`: the informative frames called each class, and their share.
- :func:`share_interval`: the 95% exact binomial interval of the share of frames called the verdict's class.
- :func:`unfamiliar_words`: for the verdict `unfamiliar`, why (with its ratio and share of unfamiliar frames) and
  what the network alone would have said, worded as no verdict (``verdict.unfamiliar_reason``, ``network_alone``);
  :func:`network_guess`: that class. An unfamiliar verdict is drawn in :data:`GREYS`, never a class's colour;
  its unfamiliar frames are marked in :data:`UNFAMILIAR_MARK` (the viewer's atlas.js uses the same colour).

Example:
    >>> class_colours({"classes": ["glioblastoma", "meningioma"], "verdicts": {}})
    {'glioblastoma': '#0072B2', 'meningioma': '#E69F00'}
"""

from __future__ import annotations

from mucosa.inference import verdict as verdicts
from mucosa.intervals import DESCRIPTIONS, EXACT, clopper_pearson

__all__ = ["BANNER", "CLINICAL", "GREYS", "NEUTRAL", "UNFAMILIAR_MARK", "class_colours", "confidence", "is_unfamiliar",
           "network_guess", "probability_of", "share_interval", "shares", "unfamiliar_words"]

BANNER = "Research use only — not a medical device"

# Okabe & Ito (2008), "Color universal design": blue and orange first, black last
NEUTRAL = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
CLINICAL = {"mucosal healing": "#17653f", "active inflammation": "#a8281d"}
GREYS = ("#6b7684", "#aab4c1")  # an unfamiliar case's share of frames per class: no class's colour
UNFAMILIAR_MARK = "#7c3aed"  # an unfamiliar frame's mark on the timeline


def class_colours(card: dict) -> dict[str, str]:
    """``{class: "#rrggbb"}`` for the model ``card``'s classes (see the module docstring)."""
    classes, words = card["classes"], card.get("verdicts") or {}
    if len(classes) == 2 and {words.get(c) for c in classes} == set(CLINICAL):
        return {c: CLINICAL[words[c]] for c in classes}
    return {c: NEUTRAL[k % len(NEUTRAL)] for k, c in enumerate(classes)}


def probability_of(value, cls: str, classes: list[str]) -> float:
    """P(``cls``) from a probability as the API gives it: the positive (last) class's for a binary model, one
    per class otherwise."""
    index = classes.index(cls)
    if isinstance(value, list):
        return float(value[index])
    return float(value) if index == len(classes) - 1 else 1.0 - float(value)


def confidence(verdict: dict | None, classes: list[str]) -> float | None:
    """The mean probability of the class ``verdict`` calls, or None without a verdict."""
    if not verdict or verdict.get("class") not in classes or verdict.get("score") is None:
        return None
    return probability_of(verdict["score"], verdict["class"], classes)


def shares(verdict: dict | None, classes: list[str]) -> list[dict]:
    """``[{"class", "frames", "share"}]``: the informative frames called each class (``share`` None
    without informative frames)."""
    calls = (verdict or {}).get("calls") or {}
    total = sum(calls.get(c, 0) for c in classes)
    return [{"class": c, "frames": int(calls.get(c, 0)), "share": calls.get(c, 0) / total if total else None}
            for c in classes]


def share_interval(verdict: dict | None, classes: list[str]) -> dict | None:
    """The share of informative frames called the verdict's class with its 95% exact binomial
    (Clopper–Pearson) interval, or None without a verdict. The frames of one recording are not independent
    samples: the interval is narrower than the uncertainty of the recording's verdict, which it does not
    replace."""
    called = (verdict or {}).get("class")
    counts = {row["class"]: row["frames"] for row in shares(verdict, classes)}
    trials = sum(counts.values())
    if called not in counts or trials == 0:
        return None
    low, high = clopper_pearson(counts[called], trials)
    return {"class": called, "frames": counts[called], "of": trials, "share": counts[called] / trials,
            "low": low, "high": high, "level": 0.95, "method": DESCRIPTIONS[EXACT],
            "note": "the share of informative frames called this class; frames of one recording are not "
                    "independent, so the interval is narrower than the uncertainty of the verdict itself"}


def is_unfamiliar(verdict: dict | None) -> bool:
    """Whether ``verdict`` is `unfamiliar`: no class is given."""
    return bool(verdict) and verdict.get("label") == verdicts.UNFAMILIAR


def network_guess(verdict: dict | None, classes: list[str]) -> str | None:
    """The class the network alone calls from the verdict's mean probability (None without one): for an
    unfamiliar verdict, a guess the atlas does not support."""
    if not verdict or verdict.get("score") is None:
        return None
    return classes[verdicts.call(verdict["score"], verdict.get("threshold", 0.5))]


def unfamiliar_words(verdict: dict | None, classes: list[str]) -> tuple[str | None, str | None]:
    """For an unfamiliar verdict, (why, what the network alone would have said) in the words the viewer prints
    (the API's ``reason`` and ``network_alone``); (None, None) for any other."""
    if not is_unfamiliar(verdict):
        return None, None
    return (verdicts.unfamiliar_reason(verdict.get("unfamiliar"), verdict.get("unfamiliarity_ratio")),
            verdicts.network_alone(verdict.get("score"), classes, verdict.get("threshold", 0.5), verdict.get("calls")))
