"""Keyed pseudonyms of patient ids and paths: the one rule of every ``--pseudonymise``.

:func:`pseudonymiser` turns an identifier into ``ID-`` and ten hex digits (HMAC-SHA256 with a key: the same
key gives the same pseudonyms, a random key makes them irreversible). Nothing in a pseudonymised output
holds the key: :func:`key_check` is a keyed hash of a fixed text, which tells whether a key given later is
the one a run was made with, and nothing else.

A pseudonymised training run keeps the split it used as a manifest of pseudonyms
(:func:`pseudonymise_cohort`: patient, group and file become pseudonyms, other columns are left out);
:func:`restore_split` finds the split again in the original manifest, given the same key, so that the run
can be resumed and its frames read.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from mucosa.data.manifest import Cohort, Record
from mucosa.errors import ConfigError

__all__ = ["KEY_VARIABLE", "Pseudonym", "key_check", "pseudonymise_cohort", "pseudonymiser", "restore_split"]

Pseudonym = Callable[[str], str]
KEY_VARIABLE = "MUCOSA_PSEUDONYM_KEY"  # the environment variable that holds the key (out of the process list)
_CHECK_TEXT = "mucosa: the key of these pseudonyms"


def pseudonymiser(key: str | None) -> Pseudonym:
    """A keyed hash (HMAC-SHA256) of identifiers; a random key when none is given (then irreversible)."""
    secret = (key or secrets.token_hex(16)).encode()

    def pseudonym(text: str) -> str:
        return "ID-" + hmac.new(secret, str(text).encode(), hashlib.sha256).hexdigest()[:10]

    return pseudonym


def key_check(name: Pseudonym) -> str:
    """What a run records of its key: the pseudonym of a fixed text (it tells a wrong key, and reveals none)."""
    return name(_CHECK_TEXT)


def _file(record: Record, base: Path) -> str:
    """A file as its pseudonym is made of: its path relative to the manifest's folder (kept if both move)."""
    return Path(os.path.relpath(record.path, base)).as_posix()


def pseudonymise_cohort(cohort: Cohort, name: Pseudonym, base: Path, folder: Path) -> Cohort:
    """The cohort with patient, group and file replaced by their pseudonyms (files named ``folder/ID-…``), the
    other columns (free text) left out; ``base``: the folder of the original manifest. A file keeps its
    extension, which tells a video from an image."""
    base, folder = Path(base).resolve(), Path(folder).resolve()
    records = [Record(folder / (name(_file(r, base)) + r.path.suffix), r.label, name(r.patient), r.region,
                      name(r.group) if r.group else "", r.frames, r.split, r.row) for r in cohort.records]
    return Cohort(records, cohort.classes, None)


def restore_split(pseudonymised: Cohort, original: Cohort, name: Pseudonym, what: str) -> Cohort:
    """The rows of ``original`` (the manifest a run was made from) in the order and with the split of
    ``pseudonymised`` (its :func:`pseudonymise_cohort`, read back), found with the same key.

    Raises:
        ConfigError: a row found nowhere in ``original`` (another manifest, or another key).
    """
    base = original.source.parent.resolve() if original.source else Path.cwd()
    rows: dict[tuple, list[Record]] = {}
    for r in original.records:
        rows.setdefault((name(_file(r, base)), name(r.patient), str(r.frames)), []).append(r)
    restored = []
    for r in pseudonymised.records:
        found = rows.get((r.path.name.split(".")[0], r.patient, str(r.frames)))
        if not found:
            raise ConfigError(f"{what}: row {r.row} ({r.path.name}) matches no row of {original.source} with this "
                              "pseudonym key: give the manifest the run was made from, and the key it was made with")
        restored.append(replace(found.pop(0), split=r.split))
    return Cohort(restored, pseudonymised.classes, original.source)
