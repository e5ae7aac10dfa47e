"""What of the atlas a query never finds: the one rule that every entry point follows.

A recording compared with the atlas must not find itself, nor its own patient: it would be its own most
similar case, its neighbours would be its own frames, and its unfamiliarity (the distance to its k-th nearest
atlas frame) would fall to nothing. So every answer of the atlas (similar cases, the atlas's vote, the
unfamiliarity scores of the frames and of the texture view) leaves out the atlas frames of **the query's
patients** (:func:`own_patients`):

- the atlas's patients of the query's recordings: an atlas case is one recording, named ``FILE@SHA``
  (``atlas_build.case_id``: the start of its content's SHA-256), so a file whose content is an atlas case's,
  whatever its name or folder, is that case's recording, and that case's patient is the query's patient;
- the patient the query names, when it names one: a manifest's ``patient`` column (``mucosa predict``,
  ``mucosa atlas search``, the Python API), the exam's pseudonymous ``patient`` field of the service's cases.

``mucosa predict`` (a manifest or not), ``mucosa stream``, ``mucosa atlas search``, the Python API
(``mucosa.load``: its predictions and ``similar_cases``), the service's cases and their similar cases, and
``POST /v1/predict`` all ask :func:`own_patients` once per case (a predict case: all its files), then leave
those patients out of every frame's search. A recording that is not in the atlas, with no patient named,
leaves nothing out: its answers are the same whichever way it came.

Example:
    >>> import numpy as np, tempfile, pathlib
    >>> from mucosa.inference.atlas import Atlas, AtlasModel, FrameRecords
    >>> video = pathlib.Path(tempfile.mkdtemp()) / "exam.mp4"
    >>> _ = video.write_bytes(b"a recording")
    >>> records = FrameRecords.of([f"old-name.mp4@{file_sha256(video)[:12]}", "b.mp4@0123456789ab"], ["p1", "p2"],
    ...                           ["control", "active"], [0, 0], ["old-name.mp4", "b.mp4"])
    >>> atlas = Atlas(AtlasModel("0" * 64, ("control", "active"), 2), np.eye(2, dtype=np.float32), records,
    ...               np.zeros((2, 8, 8), np.uint8))
    >>> own_patients(atlas, [video]), own_patients(atlas, [video], ["p9"]), own_patients(atlas, [], [None])
    (('p1',), ('p1', 'p9'), None)
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Iterable
from pathlib import Path

from mucosa.atomic import file_sha256
from mucosa.data.cache import FrameCache
from mucosa.inference.atlas import Atlas

__all__ = ["HASH_DIGITS", "own_patients", "own_patients_by_case", "recording_hash"]

log = logging.getLogger(__name__)

HASH_DIGITS = 12  # hex digits of a recording's SHA-256 in its atlas case id (FILE@SHA)
_CASE_HASH = re.compile(rf"@([0-9a-f]{{{HASH_DIGITS}}})(\[[^\]@]*\])?$")
_RECORDINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # atlas → (its size, hash → patients)


def recording_hash(case: str) -> str | None:
    """The start of the recording's SHA-256 in an atlas case id (``FILE@SHA`` or ``FILE@SHA[FRAMES]``), or None
    for a case named otherwise."""
    found = _CASE_HASH.search(str(case))
    return None if found is None else found.group(1)


def _recordings(atlas: Atlas) -> dict[str, set[str]]:
    """Each recording's hash → the atlas's patients of its cases (made once for each size of the atlas)."""
    known = _RECORDINGS.get(atlas)
    if known is not None and known[0] == len(atlas):
        return known[1]
    found: dict[str, set[str]] = {}
    for case, patient in dict(zip(atlas.records.cases.tolist(), atlas.records.patients.tolist())).items():
        digest = recording_hash(case)
        if digest is not None:
            found.setdefault(digest, set()).add(str(patient))
    _RECORDINGS[atlas] = (len(atlas), found)
    return found


def own_patients(atlas: Atlas, files: Iterable[str | Path] = (), patients: Iterable[str | None] = (),
                 cache: FrameCache | None = None) -> tuple[str, ...] | None:
    """The patients whose atlas frames a query of ``files`` must not find (see the module): the atlas's
    patients of those recordings (by content: their SHA-256, from ``cache`` when given, which keeps it), and
    ``patients``, those the query names (None: not named). None when there is none. A file that cannot be
    read leaves nothing out (its reading says what is wrong)."""
    recordings, digest = _recordings(atlas), file_sha256 if cache is None else cache.content_hash
    found = {str(p) for p in patients if p is not None and str(p)}
    for path in files:
        try:
            key = digest(Path(path))[:HASH_DIGITS]
        except OSError:
            continue
        found |= recordings.get(key, set())
    if found:
        log.debug("left out of the atlas's answers: patients %s", ", ".join(sorted(found)))
    return tuple(sorted(found)) or None


def own_patients_by_case(atlas: Atlas, members: Iterable[tuple[str, Path | None, str | None]],
                         cache: FrameCache | None = None) -> dict[str, tuple[str, ...] | None]:
    """Each case's own patients (:func:`own_patients` of all its files and the patients they name), from
    (case, file or None for frames given in memory, patient named or None) of every file."""
    cases: dict[str, tuple[list, list]] = {}
    for case, path, patient in members:
        files, patients = cases.setdefault(case, ([], []))
        if path is not None:
            files.append(Path(path).resolve())
        patients.append(patient)
    return {case: own_patients(atlas, files, patients, cache) for case, (files, patients) in cases.items()}
