"""``mucosa serve --pseudonymise``: what the server hands out names no patient, case, file or folder.

Under the setting (``ServeSettings.pseudonymise``, keyed by ``pseudonym_key``: ``--pseudonym-key``, else
``$MUCOSA_PSEUDONYM_KEY``, else a random key for the server's life), the keyed pseudonyms of the one rule
(:func:`~mucosa.data.pseudonyms.pseudonymiser`, :class:`~mucosa.evaluation.privacy.Redactor`) replace:

- in the case report (``report.json``, ``.html``, ``.pdf`` and their file names) and ``timeline.csv`` (its
  ``source`` column and its file name): the case's name, its files and the patient (:func:`private_case`).
  Free text typed by people (the region, reviewers' notes) and the case's error are withheld whole
  (:data:`WITHHELD`): a name in them ("ileum of John Smith") is not a known identifier and cannot be found. The
  decode warnings, which mucosa writes, have each identifier replaced, and any path reduced to ``<path>``;
- in the similar cases of the atlas (``/similar``, and the reports' atlas section): their case, patient and
  file names (:func:`private_similar`);
- in an answer refusing a new case: the names of its files (:func:`shown_name`), and the paths it named under
  ``--data-root`` (:func:`hidden_paths`).

The same key gives the same pseudonyms (``mucosa store export --pseudonymise`` with it names the patients as
the reports do). What the viewer works with (``GET /v1/cases``, ``/v1/cases/{id}`` and its events) still
shows what the unit typed: the unit's own screens, not a document to hand on.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mucosa.data.pseudonyms import Pseudonym
from mucosa.evaluation.privacy import Redactor

__all__ = ["FREE_TEXT", "IDENTIFIERS", "WITHHELD", "hidden_paths", "private_case", "private_similar", "scrubbed",
           "shown_name"]

IDENTIFIERS = ("name", "patient", "patient_id")  # a case's values replaced whole by their pseudonyms
FREE_TEXT = ("region", "site", "operator", "indication", "error")  # written freely (or quoting what was): withheld
WITHHELD = "[free text withheld under --pseudonymise]"
_KEPT = {"id", "kind", "status", "timeline"}  # a case's values that hold no free text


def scrubbed(value: Any, redact: Redactor) -> Any:
    """``value`` (text, or mappings and lists of them) with ``redact`` applied to every text in it."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {key: scrubbed(item, redact) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [scrubbed(item, redact) for item in value]
    return value


def private_case(case: dict, pseudonym: Pseudonym) -> dict:
    """The API's case (``CaseView.to_dict``) as reports show it under ``--pseudonymise``: its name, files and
    patient as pseudonyms, its free text (region, error, reviewers' notes) withheld, its other text with those
    identifiers (and any path) hidden."""
    files = [str(f) for f in case.get("files") or []]
    redact = Redactor(pseudonym)
    redact.learn(*(case[key] for key in IDENTIFIERS if case.get(key)), *(f for f in files),
                 *(Path(f).stem for f in files))
    private = {key: value if key in _KEPT else scrubbed(value, redact) for key, value in case.items()}
    private.update({key: pseudonym(str(case[key])) for key in IDENTIFIERS if case.get(key)})
    private["files"] = [pseudonym(f) for f in files]
    private.update({key: WITHHELD for key in FREE_TEXT if case.get(key)})
    for review in [private.get("review"), *(private.get("reviews") or [])]:
        if isinstance(review, dict) and review.get("note"):
            review["note"] = WITHHELD
    return private


def private_similar(answer: dict, pseudonym: Pseudonym) -> dict:
    """``similar_cases``' answer with each similar case's case, patient and files as pseudonyms."""
    cases = []
    for case in answer.get("similar") or []:
        closest = [{**frame, "file": pseudonym(str(frame["file"]))} for frame in case.get("closest") or []]
        cases.append({**case, "case": pseudonym(str(case["case"])), "patient": pseudonym(str(case["patient"])),
                      "closest": closest})
    return {**answer, "similar": cases}


def shown_name(name: str, pseudonym: Pseudonym | None) -> str:
    """A file's name as an answer shows it: itself, or its pseudonym under ``--pseudonymise``."""
    return name if pseudonym is None else pseudonym(name)


def hidden_paths(reason: str, given: Iterable[str], pseudonym: Pseudonym) -> str:
    """An answer's ``reason`` with the paths a client ``given`` (and their file names) as pseudonyms, and any
    other path as ``<path>``."""
    redact = Redactor(pseudonym)
    redact.learn_paths(*given)
    return redact(reason)
