"""The cohort manifest: one CSV row per image or video of a patient, with its histology label.

Columns (a user can write the file by hand):

- ``path``: image or video, relative to the CSV;
- ``label``: histology class of the image, e.g. ``active`` / ``control``;
- ``patient``: a pseudonymous patient (or case) identifier; all of a patient's images stay on one side
  of every grouped split;
- ``region`` (optional): rectum, left colon, transverse colon, right colon, terminal ileum (free text);
- ``group`` (optional): e.g. active CD / mucosal healing / normal;
- ``frames`` (optional, videos): ``all``, ``every:K``, ``A-B`` (inclusive), ``A-B:K`` or ``K``;
- ``split`` (optional): ``train``, ``val`` or ``test``.

Other columns (e.g. ``mask``, ``fold``) are kept as they are.
"""

from __future__ import annotations

import csv
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from mucosa.data.readers import FrameSelection, is_image, is_video
from mucosa.errors import ManifestError, MucosaWarning

REQUIRED = ("path", "label", "patient")
OPTIONAL = ("region", "group", "frames", "split")
SPLITS = ("train", "val", "test")
REGIONS = ("rectum", "left colon", "transverse colon", "right colon", "terminal ileum")
# Labels read as "inflammation present" when the user does not name the positive class.
POSITIVE_WORDS = ("active", "active cd", "inflamed", "inflammation", "disease", "pathologic", "abnormal",
                   "cd", "positive", "1")
_NEGATIVE_WORDS = ("control", "normal", "healthy", "healed", "healing", "mucosal healing", "remission",
                   "inactive", "negative", "benign", "0")
_MAX_LISTED = 20


@dataclass(frozen=True)
class Record:
    """One manifest row: an image, or a video with the frames to use, of one patient."""

    path: Path  # absolute
    label: str
    patient: str
    region: str = ""
    group: str = ""
    frames: FrameSelection = FrameSelection()
    split: str = ""
    row: int = 0  # line number in the CSV (header = 1), 0 when built in memory
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def is_video(self) -> bool:
        return is_video(self.path)


@dataclass
class Cohort:
    """Records of a manifest plus the class names (sorted, positive class last for two classes)."""

    records: list[Record]
    classes: list[str]
    source: Path | None = None

    @property
    def patients(self) -> list[str]:
        return sorted({r.patient for r in self.records})

    @property
    def positive(self) -> str | None:
        """The class counted as positive (inflammation) in binary metrics; ``None`` for 3+ classes."""
        return self.classes[-1] if len(self.classes) == 2 else None

    def label_index(self, label: str) -> int:
        return self.classes.index(label)

    def subset(self, split: str) -> Cohort:
        return Cohort([r for r in self.records if r.split == split], self.classes, self.source)

    def to_csv(self, path: str | Path) -> Path:
        """Write the manifest with paths relative to the new CSV's folder (forward slashes)."""
        return write_manifest(self.records, path)


def order_classes(labels: list[str] | set[str], positive: str | None = None) -> list[str]:
    """Sort class names; with two classes the positive (inflammation) class goes last.

    Args:
        labels: the class names.
        positive: the positive class; when omitted, a label like ``active`` or ``inflamed`` (or the
            label beside one like ``control`` or ``healing``), otherwise the alphabetically last label.
    """
    names = sorted(set(labels))
    if len(names) != 2:
        return names
    if positive is None:
        words = [n.strip().lower() for n in names]
        positives = [n for n, w in zip(names, words) if w in POSITIVE_WORDS]
        negatives = [n for n, w in zip(names, words) if w in _NEGATIVE_WORDS]
        if len(positives) == 1:
            positive = positives[0]
        elif len(negatives) == 1:
            positive = names[1 - names.index(negatives[0])]
        else:
            positive = names[1]
    if positive not in names:
        raise ManifestError(f"positive class {positive!r} is not one of the labels {names}")
    return [n for n in names if n != positive] + [positive]


def load_manifest(path: str | Path, classes: list[str] | None = None, positive: str | None = None,
                  check_files: bool = True, require_all: bool = True) -> Cohort:
    """Read and validate a manifest; every problem is reported at once with its row.

    Args:
        path: the CSV.
        classes: expected class names (e.g. from a checkpoint): other labels are errors, and with
            ``require_all`` a class without images is an error too.
        positive: the positive class for binary tasks (see :func:`order_classes`).
        check_files: report missing files (they are always resolved relative to the CSV).
        require_all: with ``classes``, every class must have images (off to evaluate a one-class cohort).

    Raises:
        ManifestError: naming the file, the row and the problem for each error found.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; the header is "
                                f"{','.join(header) or '(empty)'} and must include {','.join(REQUIRED)}")
        rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    records, errors = _parse_rows(rows, path, set(classes) if classes else None, check_files)
    if not records and not errors:
        errors.append(f"{path}: the manifest has no rows")
    if classes and require_all:
        present = {r.label for r in records}
        errors += [f"{path}: class {c!r} has no images" for c in classes if c not in present]
    if errors:
        shown = "\n  ".join(errors[:_MAX_LISTED])
        more = f"\n  ... and {len(errors) - _MAX_LISTED} more" if len(errors) > _MAX_LISTED else ""
        raise ManifestError(f"{path}: {len(errors)} problem(s) in the manifest:\n  {shown}{more}")
    _warn_mixed_patients(records, path)
    names = list(classes) if classes else order_classes({r.label for r in records}, positive)
    return Cohort(records, names, path)


def _parse_rows(rows: list[dict[str, str]], path: Path, classes: set[str] | None,
                check_files: bool) -> tuple[list[Record], list[str]]:
    records, errors, seen = [], [], {}
    for line, row in enumerate(rows, start=2):
        where = f"{path.name} row {line}"
        rel = row.get("path", "").replace("\\", "/")
        problems = []
        if not rel:
            problems.append("empty path")
        if not row.get("label"):
            problems.append("empty label")
        elif classes is not None and row["label"] not in classes:
            problems.append(f"unknown label {row['label']!r} (expected one of {sorted(classes)})")
        if not row.get("patient"):
            problems.append("empty patient")
        if row.get("split") and row["split"] not in SPLITS:
            problems.append(f"split {row['split']!r} is not one of {', '.join(SPLITS)} or empty")
        target = (path.parent / rel).resolve() if rel else None
        if target is not None and check_files and not target.is_file():
            problems.append(f"file not found: {rel}")
        if target is not None and not (is_image(target) or is_video(target)):
            problems.append(f"{rel}: not an image or video file type")
        try:
            frames = FrameSelection.parse(row.get("frames"))
        except ValueError as error:
            problems.append(str(error))
            frames = FrameSelection()
        if target is not None and not frames.is_all and not is_video(target):
            problems.append(f"frames {row['frames']!r} given for an image (only videos have frames)")
        key = (target, frames)
        if target is not None and key in seen:
            problems.append(f"duplicate of row {seen[key]} ({rel}, frames {frames})")
        seen.setdefault(key, line)
        if problems:
            errors += [f"{where}: {p}" for p in problems]
            continue
        extra = {k: v for k, v in row.items() if k not in REQUIRED + OPTIONAL and k}
        records.append(Record(target, row["label"], row["patient"], row.get("region", ""),
                              row.get("group", ""), frames, row.get("split", ""), line, extra))
    return records, errors


def _warn_mixed_patients(records: list[Record], path: Path) -> None:
    labels = defaultdict(set)
    for r in records:
        labels[r.patient].add(r.label)
    mixed = {p: sorted(ls) for p, ls in labels.items() if len(ls) > 1}
    if mixed:
        listed = "; ".join(f"{p}: {', '.join(ls)}" for p, ls in sorted(mixed.items())[:_MAX_LISTED])
        warnings.warn(f"{path}: {len(mixed)} patient(s) carry more than one label ({listed}). This can be "
                      "real (an inflamed and a healed region), but check the labels; grouped splits keep "
                      "each patient on one side and stratify by the patient's majority label.",
                      MucosaWarning, stacklevel=3)


def write_manifest(records: list[Record], path: str | Path) -> Path:
    """Write records as a manifest CSV; paths become relative to the CSV's folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extras = list(dict.fromkeys(k for r in records for k in r.extra))
    columns = list(REQUIRED + OPTIONAL) + extras
    base = path.parent.resolve()
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        for r in records:
            writer.writerow({"path": _relative(r.path, base), "label": r.label, "patient": r.patient,
                             "region": r.region, "group": r.group,
                             "frames": "" if r.frames.is_all else str(r.frames), "split": r.split,
                             **r.extra})
    return path


def _relative(target: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(target, base)).as_posix()


def with_splits(records: list[Record], splits: list[str]) -> list[Record]:
    """Copies of ``records`` with their ``split`` set."""
    return [replace(r, split=s) for r, s in zip(records, splits, strict=True)]


def label_counts(records: list[Record]) -> Counter:
    return Counter(r.label for r in records)
