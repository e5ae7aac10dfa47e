"""Tiny training configs shared by the tests: a CNN-LSTM trained for seconds on small synthetic images.

``TINY`` is the usual one (32x32, every frame used, a seeded patient split with validation patients, one
epoch); :func:`tiny_config` gives it, or another base, with some keys of some sections changed::

    tiny_config(training={"epochs": 2})
    tiny_config(TINY_NO_AUGMENTATION, split={"mode": "manifest"})
"""

import copy

TINY = {"model": {"size": 32}, "preprocessing": {"quality_threshold": 0.0},
        "split": {"mode": "patient", "test": 0.3, "val": 0.3, "seed": 1},
        "training": {"epochs": 1, "batch_size": 8, "threads": 1}}

# For tests that compare two runs or a run with its resumption: no random augmentation.
TINY_NO_AUGMENTATION = {"model": {"size": 32}, "preprocessing": {"quality_threshold": 0.0},
                        "split": {"mode": "patient", "test": 0.25, "val": 0.25},
                        "training": {"epochs": 1, "batch_size": 8, "threads": 1},
                        "augmentation": {"probability": 0.0, "flip": False}}

# 40x40 frames read whole (no crop) as luminance, as the ONNX tests feed them.
TINY_LUMINANCE = {"model": {"size": 40},
                  "preprocessing": {"quality_threshold": 0.0, "crop": "none", "channel": "luminance"},
                  "split": {"mode": "patient", "test": 0.25, "val": 0.25, "seed": 0},
                  "training": {"epochs": 1, "batch_size": 8, "threads": 1}}


def tiny_config(base: dict = TINY, **sections: dict) -> dict:
    """A copy of ``base`` with the given keys of each section changed (a section it lacks is added)."""
    config = copy.deepcopy(base)
    for section, changes in sections.items():
        config.setdefault(section, {}).update(changes)
    return config


def run_config(base: dict = TINY, **sections: dict):
    """:func:`tiny_config` as the ``RunConfig`` that ``train`` takes (imported here: it imports PyTorch)."""
    from mucosa.models.config import config_from_dict

    return config_from_dict(tiny_config(base, **sections))
