"""``--pseudonymise``: keyed pseudonyms for patient ids and paths, and a console that shows no original.

:func:`~mucosa.data.pseudonyms.pseudonymiser` turns an identifier into ``ID-`` and ten hex digits
(HMAC-SHA256 with a key: the same key gives the same pseudonyms, a random key makes them irreversible).
:class:`Redactor` knows the identifiers of one run (patient ids, the paths of the checkpoint, the manifest
and every file) and replaces them, wherever they occur in a text, by their pseudonyms; any other path-like
word becomes ``<path>``. :meth:`Redactor.console` holds back the warnings of a block and shows them redacted
when it ends, redacts the library's log lines (``logging``, as the ``mucosa`` command shows them), and
re-raises a :class:`~mucosa.errors.MucosaError` with a redacted message, so no patient id or path reaches
the console.
"""

from __future__ import annotations

import logging
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from mucosa.data.pseudonyms import pseudonymiser
from mucosa.errors import MucosaError

__all__ = ["Redactor", "redactor", "shown"]

_PATH_WORD = re.compile(r"[^\s'\"`(),;]*[/\\][^\s'\"`(),;]*")
HINT = " (identifiers hidden by --pseudonymise; run without it to see them)"


class Redactor:
    """Replaces the identifiers it has learnt by their pseudonyms in any text shown to the user."""

    def __init__(self, name: Callable[[str], str]) -> None:
        self.name = name
        self._known: dict[str, str] = {}
        self._pattern: re.Pattern | None = None

    def learn(self, *identifiers: object) -> None:
        """Identifiers (patient ids, file names) to hide from now on."""
        for identifier in identifiers:
            text = str(identifier)
            if text.strip() and text not in self._known:
                self._known[text] = self.name(text)
                self._pattern = None

    def learn_paths(self, *paths: str | Path) -> None:
        """Paths to hide: as given, absolute, and their file names."""
        for path in paths:
            path = Path(path)
            self.learn(str(path), path.as_posix(), str(path.resolve()), path.name)

    def __call__(self, text: str) -> str:
        """``text`` with every known identifier replaced by its pseudonym and other paths by ``<path>``."""
        if self._known:
            if self._pattern is None:
                alternatives = "|".join(re.escape(k) for k in sorted(self._known, key=len, reverse=True))
                self._pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")
            text = self._pattern.sub(lambda m: self._known[m.group(0)], text)
        return _PATH_WORD.sub(lambda m: "<path>" if re.search(r"[^\W\d]", m.group(0)) else m.group(0), text)

    @contextmanager
    def console(self) -> Iterator[None]:
        """Show the block's warnings only redacted (when it ends), and its MucosaErrors redacted."""
        caught: list[warnings.WarningMessage] = []
        shown_lines = _LogRedaction(self)
        handlers = list(logging.getLogger("mucosa").handlers)
        for handler in handlers:
            handler.addFilter(shown_lines)
        try:
            with warnings.catch_warnings(record=True) as log:  # the caller's filters still apply
                caught = log
                yield
        except MucosaError as error:
            raise type(error)(self(str(error)) + HINT) from None
        finally:
            for handler in handlers:
                handler.removeFilter(shown_lines)
            for warning in caught:
                warnings.warn(self(str(warning.message)), warning.category, stacklevel=2)


class _LogRedaction(logging.Filter):
    """Rewrites each log line a handler shows through a :class:`Redactor`."""

    def __init__(self, redact: Redactor) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.redact(record.getMessage()), None
        return True


def redactor(pseudonymise: bool, key: str | None = None) -> Redactor | None:
    """The :class:`Redactor` of a ``--pseudonymise`` run (keyed by ``key``), None otherwise."""
    return Redactor(pseudonymiser(key)) if pseudonymise else None


def shown(redact: Redactor | None):
    """:meth:`Redactor.console` of a pseudonymised run, a context that changes nothing otherwise."""
    from contextlib import nullcontext

    return nullcontext() if redact is None else redact.console()

