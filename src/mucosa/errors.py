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


def first_line(error: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message`` (at most ``limit`` characters), also for errors without a message.

    >>> first_line(ValueError("bad value\\nmore detail"))
    'ValueError: bad value'
    """
    lines = str(error).strip().splitlines()
    return type(error).__name__ + (f": {lines[0][:limit]}" if lines else "")
