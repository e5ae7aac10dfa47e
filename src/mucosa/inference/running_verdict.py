"""The running verdict of a case read frame by frame, shared by ``mucosa stream`` and the service's viewer.

:class:`Smoother` takes each informative frame's probability (and, with an atlas, its unfamiliarity) as it comes:

- ``smoothed``: the mean probability of the last ``window`` informative frames (what is under the probe now);
- the case verdict: the mean of *all* informative frames so far against the threshold, ``predict``'s and
  ``evaluate``'s rule, ``unfamiliar`` when the atlas says so (``verdict.verdict_or_unfamiliar``, the one rule);
- with a calibrated atlas, :data:`verdict.GATHERING` as the running verdict until there are as many used frames as
  score each atlas case in the case threshold's calibration (``atlas.CASE_CALIBRATION_FRAMES``).
"""

from __future__ import annotations

from collections import deque

import numpy as np

from mucosa.errors import ConfigError
from mucosa.inference import verdict as verdicts
from mucosa.inference.atlas import CASE_CALIBRATION_FRAMES

__all__ = ["Smoother"]


class Smoother:
    """Moving mean of the last ``window`` informative probabilities, and the running case mean, share of
    unfamiliar frames and verdict (``case_threshold``: the atlas's, None without a calibrated atlas; ``scales``:
    its calibration's, with a texture view)."""

    def __init__(self, classes: list[str], window: int = 16, threshold: float = 0.5,
                 case_threshold: float | None = None, scales: tuple[float, float] | None = None) -> None:
        if window < 1:
            raise ConfigError(f"window {window} must be at least 1 frame")
        self.classes, self.threshold = classes, verdicts.check_threshold(threshold)
        self.recent: deque = deque(maxlen=window)
        self.total = 0.0
        self.count = 0
        self.flags: list[bool] | None = []  # unfamiliar or not, per informative frame; None: cannot tell
        self.scores: list[float] = []  # their unfamiliarity scores
        self.textures: list[float] = []  # texture scores of the textured ones (texture_view)
        self.case_threshold, self.scales = case_threshold, scales

    def update(self, probability, unfamiliar: bool | None = None, unfamiliarity: float | None = None,
               texture: float | None = None) -> None:
        """Add an informative frame's probability, whether the atlas finds it unfamiliar and its score (None:
        no atlas, or one that cannot tell; then the share and the unfamiliar verdict stay unknown), and its
        texture score when it has one."""
        if texture is not None:
            self.textures.append(float(texture))
        self.recent.append(probability)
        self.total = self.total + np.asarray(probability, np.float64)
        self.count += 1
        if unfamiliar is None or self.flags is None:
            self.flags = None
        else:
            self.flags.append(bool(unfamiliar))
            self.scores.append(float(unfamiliarity if unfamiliarity is not None else np.nan))

    @property
    def unfamiliar_share(self) -> float | None:
        return verdicts.unfamiliar_share(self.flags)

    @property
    def unfamiliarity_ratio(self) -> float | None:
        """The used frames' unfamiliarity so far over the atlas's case threshold (``verdict.unfamiliarity_ratio``:
        above 1, ``unfamiliar``); None when it cannot tell."""
        if self.flags is None:
            return None
        return verdicts.unfamiliarity_ratio(self.scores, self.case_threshold, self.textures, self.scales)

    @property
    def smoothed(self):
        return np.mean(np.asarray(self.recent), axis=0) if self.recent else None

    @property
    def case_probability(self):
        return self.total / self.count if self.count else None

    @property
    def gathering(self) -> bool:
        """Whether the running verdict still waits for frames: an atlas that can tell (a case threshold, every
        used frame scored) and some used frames, but fewer than score each atlas case in its calibration
        (``atlas.CASE_CALIBRATION_FRAMES``), so that their median is not yet comparable with its threshold."""
        told = self.case_threshold is not None and self.flags is not None
        return told and 0 < self.count < CASE_CALIBRATION_FRAMES

    @property
    def verdict(self) -> str:
        """The running verdict: :data:`verdict.GATHERING` while :attr:`gathering`, else :attr:`case_verdict`."""
        return verdicts.GATHERING if self.gathering else self.case_verdict

    @property
    def case_verdict(self) -> str:
        """The verdict of the used frames so far by ``predict``'s rule (``verdict.verdict_or_unfamiliar``), however
        few: what a stream ends with."""
        told = self.flags is not None
        return verdicts.verdict_or_unfamiliar(self.case_probability, self.classes, self.flags, self.threshold,
                                              self.scores if told else None,
                                              self.case_threshold if told else None, self.textures, self.scales)[0]
