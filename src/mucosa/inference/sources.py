"""The files a prediction reads and the case each belongs to (``mucosa predict``, ``mucosa atlas search``, the API).

:func:`collect_sources` turns the paths given (image files, video files, folders searched recursively, manifest
CSVs) into :class:`Source` items, and :func:`prepared_frames` prepares a source's frames exactly as for training
and ``evaluate`` (``data.preparation.prepare_file``, or the frame cache with the same key).

Cases: a manifest's ``patient``; for a folder, the images of one sub-folder form one case (one
examination's frames) and every video is a case of its own; a file named on the command line is its own
case. A file given twice for the same case (a folder or a file named twice, a manifest row repeated) counts once
in it, with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from mucosa.data.cache import FrameCache
from mucosa.data.manifest import load_manifest
from mucosa.data.preparation import PreparedFrames, prepare_file
from mucosa.data.readers import FrameSelection, is_image, is_video, media_in, path_key
from mucosa.errors import MucosaError, MucosaWarning, UnreadableFileError

__all__ = ["Source", "collect_sources", "prepared_frames"]


@dataclass(frozen=True)
class Source:
    """One image or video to predict, with the case it belongs to."""

    path: Path
    case: str
    frames: FrameSelection = FrameSelection()
    patient: str | None = None  # the manifest's patient (its case's, left out of the atlas's answers); None: unknown


def collect_sources(paths: list[str | Path]) -> list[Source]:
    """Images, videos, folders and manifests (``.csv``) → sources with their case (see the module doc).

    Raises:
        MucosaError: a path that does not exist, is not an image, video, folder or CSV, or a folder
            without images or videos; ManifestError for a bad manifest.
    """
    sources: list[Source] = []
    for given in paths:
        if not str(given).strip():
            raise MucosaError("an empty path was given")
        path = Path(given)
        if path.is_dir():
            found = media_in(path)
            if not found:
                raise MucosaError(f"{path}: no images or videos in this folder")
            sources += [Source(p, str(p) if is_video(p) else str(p.parent)) for p in found]
        elif path.suffix.lower() == ".csv":
            cohort = load_manifest(path)
            sources += [Source(r.path, r.patient, r.frames, r.patient) for r in cohort.records]
        elif path.is_file() and (is_image(path) or is_video(path)):
            sources.append(Source(path, str(path)))
        elif not path.exists():
            raise MucosaError(f"{path}: not found")
        else:
            raise UnreadableFileError(f"{path}: not an image, a video, a folder or a manifest (.csv)")
    return _once_each(sources)


def _once_each(sources: list[Source]) -> list[Source]:
    """The sources without repeats of the same frames at the same path in the same case (a folder or a file
    named twice, a manifest row listed twice), the first kept, with one warning: a repeat would count twice in
    its case's verdict. A file named on its own and within its folder is in two cases, and kept in both; two
    paths to one file (a link) are two files, as the user named them."""
    seen: set = set()
    kept, repeated = [], []
    for source in sources:
        key = (path_key(source.path), source.frames, source.case)
        (repeated if key in seen else kept).append(source)
        seen.add(key)
    if repeated:
        warnings.warn(f"{len(repeated)} of {len(sources)} files were given more than once (e.g. {repeated[0].path}): "
                      "each counts once in its case", MucosaWarning, stacklevel=3)
    return kept


def prepared_frames(source: Source, prep, cache: FrameCache | None) -> PreparedFrames:
    """A source's frames prepared as for training, from the cache when one is given (and filling it)."""
    path = source.path.resolve()
    return cache.get(path, prep, source.frames) if cache is not None else prepare_file(path, prep, source.frames)
