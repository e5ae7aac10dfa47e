"""mucosa: computer-aided confirmation of mucosal healing from confocal laser endomicroscopy (CLE).

The public surface, for notebooks and scripts (the ``mucosa`` command sits on the same functions)::

    import mucosa
    classifier = mucosa.load("runs/pcle/best.ckpt")          # device="auto", runtime="auto"
    prediction = classifier.predict("case_017/")              # images, videos, folders, arrays
    for case in prediction.cases:
        print(case.case, case.verdict, case.score, case.used)

Names are imported on first use, so ``import mucosa`` is quick and pulls in no deep-learning library.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mucosa._version import __version__
from mucosa.errors import MucosaError

__all__ = ["__version__", "load", "train", "evaluate", "Classifier", "Prediction", "CaseVerdict",
           "TrainingResult", "EvaluationResult", "MucosaError"]

_LAZY = {
    "load": "mucosa.inference.classifier", "Classifier": "mucosa.inference.classifier",
    "Prediction": "mucosa.inference.classifier", "CaseVerdict": "mucosa.inference.classifier",
    "train": "mucosa.api", "TrainingResult": "mucosa.api",
    "evaluate": "mucosa.api", "EvaluationResult": "mucosa.api",
}

if TYPE_CHECKING:  # pragma: no cover
    from mucosa.api import EvaluationResult, TrainingResult, evaluate, train
    from mucosa.inference.classifier import CaseVerdict, Classifier, Prediction, load


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'mucosa' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
