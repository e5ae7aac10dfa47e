"""Reviewed cases as training data: a manifest CSV that ``mucosa train`` reads.

One row per media file of every reviewed case: ``path`` (the file in the store's media folder, relative to
the CSV), ``label`` (the latest review's histology), ``patient`` (the pseudonymous patient id; a case without
one is its own patient, ``case-ID``), ``region`` and ``case`` (the case's id). A file stored for two cases is
written once (the manifest refuses duplicate rows), under the earlier case. A case whose histology is
:data:`mucosa.choices.OUTSIDE_CLASSES` (tissue that is none of the model's classes) is left out: it has no label
a model can learn.

Pseudonymised (``mucosa store export --pseudonymise``, the one rule of :mod:`mucosa.data.pseudonyms`), each
patient is its keyed pseudonym (with the key of ``mucosa serve --pseudonymise``: the pseudonym its reports
show), and the case's patient and file names are hidden wherever they occur in the region, as in the server's
reports. The files keep their paths: the store names them by their content's SHA-256, not by what was
uploaded, so that ``mucosa train`` still reads the manifest.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from mucosa.atomic import PendingFile, check_writable_file, write_error
from mucosa.choices import OUTSIDE_CLASSES
from mucosa.data.manifest import Record, write_manifest
from mucosa.data.pseudonyms import Pseudonym
from mucosa.evaluation.privacy import Redactor
from mucosa.store.media import MediaFolder
from mucosa.store.records import Case, Review, StoreError

__all__ = ["export_reviewed"]

log = logging.getLogger(__name__)


def _records(reviewed: Sequence[tuple[Case, Review]], media_folder: MediaFolder,
             pseudonym: Pseudonym | None) -> list[Record]:
    records, seen = [], {}
    for case, review in reviewed:
        if review.histology == OUTSIDE_CLASSES:  # tissue the model does not know: no label to train on
            continue
        patient, region = case.patient or f"case-{case.id}", case.region or ""
        shown = [media.name for media in case.media]
        if pseudonym is not None:
            redact = Redactor(pseudonym)
            redact.learn(*(text for text in (case.patient, case.name) if text), *(m.name for m in case.media))
            patient, region, shown = pseudonym(patient), redact(region), [pseudonym(name) for name in shown]
        for media, name in zip(case.media, shown):
            path = media_folder.path(media.sha256, media.suffix).absolute()
            if path in seen:
                log.warning("case %s: %s is already exported for case %s; skipped", case.id, name, seen[path])
                continue
            seen[path] = case.id
            records.append(Record(path, review.histology, patient, region, extra={"case": case.id}))
    return records


def export_reviewed(reviewed: Sequence[tuple[Case, Review]], media_folder: MediaFolder, path: str | Path,
                    where: str, pseudonym: Pseudonym | None = None) -> int:
    """Write the manifest of the reviewed cases (each with its latest review) of the store ``where`` to ``path``
    (atomically); returns its rows. ``pseudonym``: patients, and the names hidden in the region, as keyed
    pseudonyms (see the module).

    Raises:
        StoreError: no case has been reviewed yet.
        OutputError, WriteError: ``path`` cannot be written.
    """
    path = check_writable_file(path, "manifest")
    records = _records(reviewed, media_folder, pseudonym)
    outside = sum(review.histology == OUTSIDE_CLASSES for _, review in reviewed)
    if outside:
        log.warning("%d reviewed case(s) with histology %r left out: no class to train on", outside, OUTSIDE_CLASSES)
    if not records:
        why = f" ({outside} reviewed as {OUTSIDE_CLASSES!r}, which no model can learn)" if outside else ""
        raise StoreError(f"store {where}: no reviewed case to export{why}")
    pending = PendingFile(path, open_file=False)
    try:
        write_manifest(records, pending.temp)  # same folder as path: the relative paths hold
    except BaseException as error:
        pending.discard()
        if isinstance(error, OSError):
            raise write_error(error, path) from None
        raise
    pending.commit()
    log.info("exported %d files of reviewed cases to %s", len(records), path)
    return len(records)
