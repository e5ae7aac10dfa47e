"""What the ``mucosa`` command refuses, and how it ends: option types with their ranges, and exit codes.

Every command ends with one of these statuses (the README lists them):

====  ==========================================================================================
0     done
1     ``mucosa check`` found unreadable files
2     refused: a bad input file, option or output place (one ``error:`` line says which); nothing written
3     done, but some inputs could not be read (``mucosa predict``: they are left out, and named); it wins over 4
4     done, but at least one case is ``unfamiliar``: unlike every confirmed case of the model's atlas
      (``mucosa predict``, ``mucosa stream``)
70    internal error: a bug in mucosa (one line; ``--debug`` or ``MUCOSA_DEBUG=1`` shows the traceback)
74    a file could not be read or written during the work (disk full, file-size limit, permissions)
130   interrupted (Ctrl-C)
====  ==========================================================================================

No command ends in a Python traceback: :func:`run` turns every exception into one ``error:`` line.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import re
import sys
import traceback
from collections.abc import Callable
from typing import Any

from mucosa.atomic import WriteError, is_torch_write_failure
from mucosa.errors import ConfigError, MucosaError

EXIT_OK = 0
EXIT_CHECK_FOUND = 1
EXIT_REFUSED = 2
EXIT_PARTIAL = 3
EXIT_UNFAMILIAR = 4
EXIT_INTERNAL = 70
EXIT_IO = 74
EXIT_INTERRUPTED = 130

_WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, getattr(errno, "EDQUOT", errno.ENOSPC)}


# --------------------------------------------------------------------------------------------------
# Option types: argparse reports a bad value as one usage error (exit 2) before any work
# --------------------------------------------------------------------------------------------------


def integer(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be at least {minimum}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def number(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number in [low, high] (``low_open``: (low, high])."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        inside = math.isfinite(value) and (value > low if low_open else value >= low) and value <= high
        if not inside:
            where = f"{'(' if low_open else '['}{low:g}, {high:g}]" if math.isfinite(high) else \
                f"{'above' if low_open else 'at least'} {low:g}"
            raise argparse.ArgumentTypeError(f"{text} must be a number {'in ' if math.isfinite(high) else ''}{where}")
        return value

    parse.__name__ = "number"
    return parse


def threshold(text: str) -> float:
    """An argparse type: a decision threshold in [0, 1] (``inference.verdict.check_threshold``)."""
    from mucosa.inference.verdict import check_threshold

    return _by_library(check_threshold, text, "threshold")


def _by_library(check: Callable[..., Any], *args: Any) -> Any:
    """What a library check returns; its ConfigError as argparse's usage error."""
    try:
        return check(*args)
    except ConfigError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


_RULE = re.compile(r"^(sensitivity|specificity)\s*=\s*(\S+)$")


def threshold_rule(text: str) -> str:
    """An argparse type for ``evaluate --threshold``: a number in [0, 1], ``youden``, ``sensitivity=T`` or
    ``specificity=T`` with T in (0, 1]. Returned as given (evaluate parses it)."""
    rule = text.strip().lower()
    if rule == "youden":
        return text
    match = _RULE.match(rule)
    if match is None:
        try:
            float(rule)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number in [0, 1], youden, sensitivity=T or "
                                             "specificity=T") from None
        threshold(rule)
        return text
    try:
        target = float(match.group(2))
    except ValueError:
        target = math.nan
    if not (math.isfinite(target) and 0.0 < target <= 1.0):
        raise argparse.ArgumentTypeError(f"{text!r}: the target {match.group(2)} must be a number in (0, 1]")
    return text


def model_kind(text: str) -> str:
    """An argparse type: a model kind, by the model's own rule (``models.networks.check_kind``)."""
    from mucosa.models.networks import check_kind

    return _by_library(check_kind, text)


model_kind.__name__ = "model kind"


def devices(text: str) -> int | str:
    """An argparse type for ``predict --devices`` (processes per node): ``auto`` or a count >= 1."""
    return text if text == "auto" else integer(1)(text)


def training_devices(text: str) -> int | str:
    """An argparse type for ``train --devices``: Lightning's devices, by the training settings' own rule
    (``models.config.check_devices``): a count, -1 (all), auto or ids such as 0,1."""
    from mucosa.models.config import check_devices

    return _by_library(check_devices, text)


training_devices.__name__ = "devices"


# --------------------------------------------------------------------------------------------------
# Running a command: every exception becomes one line and an exit status
# --------------------------------------------------------------------------------------------------


def os_error_line(error: OSError) -> str:
    """An OSError as one line naming its file: ``cannot write out/x.csv: No space left on device``."""
    reason = error.strerror or str(error) or type(error).__name__
    if error.errno == errno.EFBIG:
        reason += " (the file-size limit, see `ulimit -f`)"
    if error.filename is None:
        return reason
    where = os.fsdecode(error.filename) + (f" -> {os.fsdecode(error.filename2)}" if error.filename2 else "")
    return f"{'cannot write ' if error.errno in _WRITE_ERRNOS else ''}{where}: {reason}"


def _quiet_stdout() -> None:
    """After a broken pipe, send what is left of standard output nowhere (no second error at exit)."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _fail(message: str, code: int, debug: bool) -> int:
    if debug:
        traceback.print_exc()
    print(f"error: {message}", file=sys.stderr)
    return code


def run(command: Callable[[], int | None], debug: bool = False) -> int:
    """Run a command and return its exit status; any exception is one ``error:`` line on stderr."""
    try:
        return int(command() or EXIT_OK)
    except WriteError as error:
        return _fail(str(error), EXIT_IO, debug)
    except MucosaError as error:
        return _fail(str(error), EXIT_REFUSED, debug)
    except KeyboardInterrupt:
        if debug:
            traceback.print_exc()
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return _fail("output closed early (broken pipe)", EXIT_IO, debug)
    except OSError as error:
        return _fail(os_error_line(error), EXIT_IO, debug)
    except MemoryError:
        return _fail("out of memory (try a smaller --batch-size, fewer --workers, or a smaller input)",
                     EXIT_IO, debug)
    except Exception as error:
        if is_torch_write_failure(error):
            return _fail("cannot write a file: the disk is probably full, or a file-size limit was reached "
                         f"(torch: {str(error).strip().splitlines()[0][:200]})", EXIT_IO, debug)
        first = (str(error).strip().splitlines() or [""])[0][:300]
        hint = "" if debug else "; rerun with --debug for the traceback"
        return _fail(f"internal error: {type(error).__name__}: {first} (please report this{hint})",
                     EXIT_INTERNAL, debug)
