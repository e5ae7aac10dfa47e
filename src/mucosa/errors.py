"""Errors that mucosa reports to the user as a plain message, without a traceback."""


class MucosaError(Exception):
    """Base class: the CLI prints ``str(error)`` and exits with status 2."""


class ManifestError(MucosaError):
    """A cohort manifest is malformed; the message names the file and row."""


class UnreadableFileError(MucosaError):
    """An image or video cannot be decoded; the message names the file."""


class ConfigError(MucosaError):
    """A configuration value or command-line option is invalid."""


class MucosaWarning(UserWarning):
    """Something the user should know (leakage, dropped frames, damaged video); printed as one line."""


class ModelOutputError(MucosaError):
    """The model produced numbers that cannot support a verdict (NaN or infinite probabilities)."""
