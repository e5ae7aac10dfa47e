"""CSV tables that a spreadsheet opens safely: the one place where mucosa writes (and reads back) CSV files.

A spreadsheet runs a cell that starts with ``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return) as a
formula, so a patient id such as ``=HYPERLINK("http://…")`` written verbatim into ``patients.csv`` becomes a
live link or worse (CSV injection). :func:`safe_cell` neutralises such a text cell by putting a single quote
in front of it, which spreadsheets show as text; a cell that already starts with a quote gets a second one, so
:func:`original_cell` undoes the rule exactly. Numbers (Python ``int``/``float``, or text that is a plain
decimal number such as ``-0.25``) are left as they are: a spreadsheet reads them as numbers, not formulas.

Every command that writes a CSV goes through :func:`write_csv`, which writes atomically
(:mod:`mucosa.atomic`), or, where rows are streamed (predict, stream), through :func:`safe_row`; every reader
of those files through :func:`read_csv`.

Example:
    >>> safe_cell('=HYPERLINK("http://x")')
    '\\'=HYPERLINK("http://x")'
    >>> safe_cell("-0.25"), safe_cell(-3), safe_cell("P01")
    ('-0.25', -3, 'P01')
    >>> original_cell(safe_cell("@SUM(A1)"))
    '@SUM(A1)'
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from mucosa.atomic import temporary_beside

__all__ = ["original_cell", "read_csv", "safe_cell", "safe_row", "write_csv"]

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""A text cell starting with one of these is run as a formula by Excel, LibreOffice or Google Sheets."""
QUOTE = "'"
_PLAIN_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def safe_cell(value: object) -> object:
    """``value`` as a spreadsheet shows it as text: a quote before text that starts like a formula."""
    if not isinstance(value, str) or not value:
        return value
    if value.startswith(QUOTE) or (value.startswith(FORMULA_STARTS) and not _PLAIN_NUMBER.match(value)):
        return QUOTE + value
    return value


def safe_row(row: Iterable[object]) -> list[object]:
    """Every cell of a row through :func:`safe_cell` (for a ``csv.writer`` that streams its rows)."""
    return [safe_cell(cell) for cell in row]


def original_cell(text: str) -> str:
    """The value :func:`safe_cell` was given, from the text it wrote."""
    return text[1:] if text.startswith(QUOTE) else text


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[object]]) -> Path:
    """Write a header and rows to ``path`` atomically, every cell through :func:`safe_cell`."""
    with temporary_beside(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([safe_cell(h) for h in header])
        writer.writerows([safe_cell(c) for c in row] for row in rows)
    return Path(path)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV written by :func:`write_csv`, as dicts of the original cell values."""
    with open(path, newline="", encoding="utf-8") as handle:
        return [{_original(k): _original(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _original(value):
    return original_cell(value) if isinstance(value, str) else value
