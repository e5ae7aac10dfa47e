"""Names a user picks from whose rules live in modules that import PyTorch, Lightning, scikit-learn or SQLAlchemy.

Each tuple is owned by the module that checks it (``inference.runtime.RUNTIMES``, ``inference.distributed
.STRATEGIES``, ``models.config.LOGGERS``, ``metrics.AGGREGATION_RULES``, ``store.tables.ROLES`` are these objects,
and ``store.records.Role`` has these values); it is defined here, in a module that imports nothing, so that the
``mucosa`` command lists the choices in its options without importing those libraries: ``mucosa --help`` and the
commands that need no model start at once. Choice lists of light modules stay there (``data.splits.MODES``,
``data.readers.CHANNELS``).
"""

__all__ = ["RUNTIMES", "STRATEGIES", "LOGGERS", "AGGREGATION_RULES", "ROLES", "OUTSIDE_CLASSES"]

RUNTIMES = ("auto", "torch", "onnx")  # what runs a model: auto, PyTorch, ONNX Runtime
STRATEGIES = ("auto", "ddp")  # how predictions are shared out over processes (auto means ddp)
LOGGERS = ("csv", "tensorboard", "mlflow")  # experiment logs besides a run's metrics.csv
AGGREGATION_RULES = ("mean", "share")  # a patient's score: mean frame probability, or share of frames called positive
ROLES = ("viewer", "reviewer", "admin")  # what a user of the case store may do, least first (store.records.Role)
# a review's histology when the tissue is none of the model's classes (a colon video for a brain model): the audit
# counts such a case apart, and ``mucosa store export --reviewed`` leaves it out of the training manifest
OUTSIDE_CLASSES = "outside the model's classes"
