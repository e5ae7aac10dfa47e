"""The verdict: the one rule that turns a model's probabilities into a call, for a frame, a file or a case.

- Two classes (one logit): the positive class (the inflammation class for the paper's labels) is called
  when its probability reaches the threshold, a number in [0, 1] (0.5 by default).
- Three or more classes: the class of highest probability.
- A file's or a case's score is the mean probability of its frames that passed the quality gate; with
  none, there is no verdict (:data:`NO_VERDICT`).
- A probability that is not finite (a diverged model) never becomes a verdict: it raises
  :class:`~mucosa.errors.ModelOutputError`.
- With a calibrated atlas (:mod:`mucosa.inference.atlas`), which gives each used frame an unfamiliarity
  score and marks it unfamiliar above the frame threshold: a file or case whose frames' median score is
  above the atlas's case threshold (:func:`unfamiliar_case`) gets the verdict :data:`UNFAMILIAR` instead of
  a class (:func:`verdict_or_unfamiliar`): as a whole it is unlike the confirmed cases the model learnt
  from (further from them than about 95% of those cases are from the others), and its probability means
  nothing. The share of its unfamiliar frames is given beside the verdict. A case is judged as a whole
  because a few frames of any recording look unlike the atlas, and a foreign recording has familiar-looking
  frames too: against the pCLE brain models, the colorectal video had 26-29% of its frames above the frame
  threshold, held-out brain videos up to 21% (docs/results.md).
- A running verdict (``mucosa stream``, the service while a case is read) with a calibrated atlas says
  :data:`GATHERING`, neither a class nor :data:`UNFAMILIAR`, until the recording has as many used frames as
  score each atlas case in the case threshold's calibration (``inference.running_verdict.Smoother.gathering``); a
  finished file or case always gets its verdict.

Example:
    >>> from mucosa.inference.verdict import verdict
    >>> verdict(0.8, ["control", "active"])
    'active inflammation'
    >>> verdict(None, ["control", "active"])
    'no informative frames'
"""

from __future__ import annotations

import math

import numpy as np

from mucosa.data.manifest import POSITIVE_WORDS
from mucosa.errors import ConfigError, ModelOutputError

__all__ = ["NO_VERDICT", "UNFAMILIAR", "GATHERING", "verdict_names", "check_threshold", "call", "calls", "mean_score",
           "verdict", "unfamiliar_share", "case_unfamiliarity", "joined", "unfamiliarity_ratio", "unfamiliar_case",
           "verdict_or_unfamiliar", "percent", "unfamiliar_reason", "network_alone", "NO_SECOND_OPINION", "NOT_SIMILAR",
           "NEAREST_NOTE"]

NO_VERDICT = "no informative frames"
UNFAMILIAR = "unfamiliar"
GATHERING = "gathering frames"  # a running verdict with an atlas, before its case score is comparable: no verdict yet
# For a file or case whose verdict is UNFAMILIAR: what the atlas's vote and its cases are then (no second opinion,
# not similar), in the words every output uses
NO_SECOND_OPINION = "nearest atlas frames, no second opinion"
NOT_SIMILAR = "nearest, not similar"
NEAREST_NOTE = (f"The atlas's vote is that of its {NO_SECOND_OPINION}, and the atlas cases listed are the "
                f"{NOT_SIMILAR}.")


def verdict_names(classes: list[str]) -> list[str]:
    """What a verdict says for each class: the clinical words when the labels are inflammation vs not."""
    if len(classes) == 2 and classes[1].strip().lower() in POSITIVE_WORDS:
        return ["mucosal healing", "active inflammation"]
    return list(classes)


def check_threshold(value: float | str, name: str = "threshold") -> float:
    """A decision threshold as a float in [0, 1]; anything else (2, -1, NaN, text) is a ConfigError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {value!r} must be a number in [0, 1]") from None
    if not (math.isfinite(number) and 0.0 <= number <= 1.0):
        raise ConfigError(f"{name} {value!r} must be a number in [0, 1]")
    return number


def calls(scores: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """Class index called for each score: (N,) positive probabilities, or (N, K) class probabilities.

    Raises:
        ModelOutputError: a score is NaN or infinite.
    """
    scores = np.asarray(scores, dtype=np.float64)
    if not np.all(np.isfinite(scores)):
        bad = int(np.sum(~np.isfinite(scores).reshape(len(scores), -1).all(1))) if scores.ndim else 1
        raise ModelOutputError(f"the model gave {bad} non-finite probabilit{'y' if bad == 1 else 'ies'} (NaN or "
                               "infinite): its weights are broken or it diverged in training; no verdict is given")
    if scores.ndim <= 1:
        return (scores >= threshold).astype(np.int64)
    return scores.argmax(-1).astype(np.int64)


def call(score, threshold: float = 0.5) -> int:
    """Class index called for one score: a positive probability, or (K,) class probabilities."""
    score = np.asarray(score, dtype=np.float64)
    return int(calls(score[None], threshold)[0])


def mean_score(probabilities) -> np.ndarray | None:
    """A file's or case's score: the mean of its used frames' probabilities (None when there are none)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    return probabilities.mean(0) if len(probabilities) else None


def verdict(score, classes: list[str], threshold: float = 0.5) -> str:
    """The words of the call for a score (:func:`mean_score` of a file or case); ``None`` gives
    :data:`NO_VERDICT`."""
    if score is None:
        return NO_VERDICT
    return verdict_names(classes)[call(score, threshold)]


def unfamiliar_share(unfamiliar) -> float | None:
    """The share of a file's or case's used frames that the atlas marks unfamiliar (one bool a frame);
    ``None`` when it cannot tell (no atlas calibration, given as ``None``) or there are no frames."""
    if unfamiliar is None:
        return None
    flags = np.asarray(unfamiliar, dtype=bool).ravel()
    return float(flags.mean()) if len(flags) else None


def case_unfamiliarity(unfamiliarity, textures=None, scales: tuple[float, float] | None = None) -> float | None:
    """A file's or case's unfamiliarity: the median of its used frames' scores (one a frame); with the atlas's
    texture view (``scales``: the calibration's (embedding, texture) scales), the mean of that median and the
    median of its texture scores (``textures``, of some used frames), each over its scale. ``None`` when it
    cannot tell: no scores, or no texture score where the atlas has a texture view.

    Example:
        >>> case_unfamiliarity([0.2, 0.4, 0.9])
        0.4
        >>> case_unfamiliarity([0.2, 0.4, 0.9], [0.5], (0.4, 0.25))  # (0.4 / 0.4 + 0.5 / 0.25) / 2
        1.5
    """
    if unfamiliarity is None:
        return None
    scores = np.asarray(unfamiliarity, dtype=np.float64).ravel()
    if not len(scores):
        return None
    if scales is None:
        return float(np.median(scores))
    texture = np.asarray([] if textures is None else textures, dtype=np.float64).ravel()
    if not len(texture):
        return None
    return float(joined(np.median(scores), np.median(texture), scales))


def joined(median, texture_median, scales: tuple[float, float]):
    """The case rule's join of its two views: the mean of the embedding median and the texture median, each
    over its scale (numbers, or arrays of them: one a case).

    Example:
        >>> joined(0.4, 0.5, (0.4, 0.25))
        1.5
    """
    return (median / scales[0] + texture_median / scales[1]) / 2


def unfamiliarity_ratio(unfamiliarity, case_threshold: float | None, textures=None,
                        scales: tuple[float, float] | None = None) -> float | None:
    """A file's or case's :func:`case_unfamiliarity` over the atlas's ``case_threshold``: above 1, it is
    unfamiliar (None when it cannot tell, as :func:`unfamiliar_case`)."""
    if case_threshold is None or case_threshold <= 0:
        return None
    found = case_unfamiliarity(unfamiliarity, textures, scales)
    return None if found is None else found / case_threshold


def unfamiliar_case(unfamiliarity, case_threshold: float | None, textures=None,
                    scales: tuple[float, float] | None = None) -> bool | None:
    """Whether a file or case is unfamiliar: its :func:`case_unfamiliarity` is above the atlas's
    ``case_threshold``. ``None`` when it cannot tell: no calibrated atlas (a ``case_threshold`` or scores of
    ``None``) or no frames."""
    if case_threshold is None:
        return None
    found = case_unfamiliarity(unfamiliarity, textures, scales)
    return None if found is None else bool(found > case_threshold)


def verdict_or_unfamiliar(score, classes: list[str], unfamiliar=None, threshold: float = 0.5,
                          unfamiliarity=None, case_threshold: float | None = None, textures=None,
                          scales: tuple[float, float] | None = None) -> tuple[str, float | None]:
    """The verdict of a file or case, and the share of its used frames that are unfamiliar.

    ``unfamiliar`` and ``unfamiliarity`` hold, for each used frame (the frames ``score`` is the mean of),
    whether the atlas marks it unfamiliar and its score; ``case_threshold`` is the atlas's (all ``None`` when
    there is no calibrated atlas to tell); ``textures`` and ``scales``: the texture scores and the
    calibration's scales, with an atlas that has a texture view. :func:`unfamiliar_case` gives
    :data:`UNFAMILIAR`; otherwise the verdict is :func:`verdict`'s.

    Example:
        >>> verdict_or_unfamiliar(0.9, ["control", "active"], [True, False, False], 0.5, [0.9, 0.6, 0.7], 0.65)
        ('unfamiliar', 0.3333333333333333)
        >>> verdict_or_unfamiliar(0.9, ["control", "active"], [True, False, False], 0.5, [0.9, 0.1, 0.2], 0.65)
        ('active inflammation', 0.3333333333333333)
        >>> verdict_or_unfamiliar(0.9, ["control", "active"])  # no atlas: it cannot tell
        ('active inflammation', None)
        >>> verdict_or_unfamiliar(None, ["control", "active"], [], 0.5, [], 0.65)
        ('no informative frames', None)
    """
    share = unfamiliar_share(unfamiliar)
    if score is not None and unfamiliar_case(unfamiliarity, case_threshold, textures, scales):
        return UNFAMILIAR, share
    return verdict(score, classes, threshold), share


def percent(share: float) -> str:
    """A share (0 to 1) as a whole percentage, as every output prints a share of frames: a share above 0 but
    under 1% reads "<1%", not 0% (4 unfamiliar frames of 820 are not none), and one under 1 but above 99% reads
    ">99%", not 100%.

    Example:
        >>> percent(4 / 820), percent(0.0), percent(0.374), percent(816 / 820), percent(1.0)
        ('<1%', '0%', '37%', '>99%', '100%')
    """
    if 0 < share < 0.01:
        return "<1%"
    if 0.99 < share < 1:
        return ">99%"
    return f"{100 * share:.0f}%"


def unfamiliar_reason(share: float | None, ratio: float | None) -> str:
    """Why a file or case is :data:`UNFAMILIAR`, in the words the viewer, the reports and ``predict`` print:
    its unfamiliarity over the atlas's case threshold (``ratio``, :func:`unfamiliarity_ratio`) and the share of
    its used frames marked unfamiliar (``share``); either may be None (not known)."""
    how = [] if ratio is None else [f"unfamiliarity ratio {ratio:.2f}, where above 1 is unfamiliar"]
    how += [] if share is None else [f"{percent(share)} of its frames are marked unfamiliar"]
    return ("As a whole, this recording is unlike the confirmed cases of the atlas (its frames' typical distance "
            f"and texture are beyond theirs{': ' + '; '.join(how) if how else ''}): no class is given.")


def network_alone(score, classes: list[str], threshold: float = 0.5, calls: dict | None = None) -> str | None:
    """What the network alone would have called a file or case whose verdict is :data:`UNFAMILIAR`, worded as
    what it is, not a verdict: the class its mean probability ``score`` calls, that probability and (``calls``:
    informative frames called each class) how many frames it calls so. None without a score."""
    if score is None:
        return None
    index = call(score, threshold)
    cls = classes[index]
    value = np.asarray(score, dtype=np.float64)
    p = float(value[index]) if value.ndim else (float(value) if index == len(classes) - 1 else 1 - float(value))
    frames = ""
    if calls:
        frames = f"; {int(calls.get(cls, 0))} of the {sum(int(n) for n in calls.values())} informative frames alone " \
                 "would say so too"
    return (f"The network alone, not a verdict (the atlas does not support it): it would say {cls}, with a mean "
            f"probability of {p:.3f}{frames}.")
