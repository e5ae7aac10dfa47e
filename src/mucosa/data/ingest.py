"""Building a manifest from the layouts people have, and checking a cohort before training.

Layouts understood by :func:`index_directory`:

- ``DIR/<label>/<patient>/<images or videos>`` (deeper folders allowed; a folder named like a region,
  e.g. ``terminal_ileum``, fills the region column);
- ``DIR/<label>/<videos>``: one case (patient) per video.

:func:`index_csv` reads an existing table with other column names, Windows separators and a stray path
prefix (e.g. ``data\\AIA\\C_00\\capture_10.jpg`` next to a ``C_00`` folder).
"""

from __future__ import annotations

import difflib
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from mucosa.data.manifest import (
    MAX_NAME_CHARS,
    MAX_PATH_CHARS,
    REGIONS,
    Cohort,
    Record,
    clip,
    has_control,
    label_counts,
    read_table,
)
from mucosa.data.readers import is_image, is_video, media_in, read_image
from mucosa.data.video import scan_video, video_info
from mucosa.errors import ConfigError, ManifestError, MucosaWarning, UnreadableFileError

_MAX_LISTED = 20


def _region_of(parts: tuple[str, ...]) -> str:
    for part in parts:
        name = part.replace("_", " ").replace("-", " ").strip().lower()
        if name in REGIONS:
            return name
    return ""


def index_directory(root: str | Path) -> list[Record]:
    """Records for ``root/<label>/<patient>/...`` and ``root/<label>/<video>`` layouts.

    Raises:
        ManifestError: when the folder has no label folders, or images lie directly in a label folder
            (their patient is unknown, so no split could keep patients apart).
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError(f"{root}: not a folder (give a folder of label folders, or a CSV)")
    labels = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    records, loose = [], []
    for label_dir in labels:
        for item in sorted(label_dir.iterdir()):
            if item.name.startswith("."):
                continue
            if item.is_file() and is_video(item):
                records.append(Record(item.resolve(), label_dir.name, item.stem))
            elif item.is_file() and is_image(item):
                loose.append(item)
            elif item.is_dir():
                for media in media_in(item):
                    region = _region_of(media.relative_to(item).parts[:-1])
                    records.append(Record(media.resolve(), label_dir.name, item.name, region))
    if loose:
        raise ManifestError(
            f"{root}: {len(loose)} image(s) lie directly in a label folder (e.g. {loose[0]}): their patient "
            "is unknown. Put them in per-patient folders (DIR/<label>/<patient>/<images>) or index a CSV "
            "with a patient column.")
    if not records:
        raise ManifestError(f"{root}: no images or videos found under label folders "
                            "(expected DIR/<label>/<patient>/<images> or DIR/<label>/<videos>)")
    return records


def _path_parts(text: str) -> tuple[str, ...]:
    parts = PureWindowsPath(text.strip()).parts  # handles both \ and / separators and drive letters
    return tuple(p for p in parts if p not in ("\\", "/", ".") and not p.endswith(":\\"))


def _resolve(parts: tuple[str, ...], base: Path, skip: int | None) -> tuple[Path | None, int | None]:
    """Find the file by dropping leading path components (a stray prefix); returns (path, dropped)."""
    order = ([skip] if skip is not None else []) + [k for k in range(len(parts)) if k != skip]
    for k in order:
        candidate = base.joinpath(*parts[k:]) if parts[k:] else None
        try:
            if candidate is not None and candidate.is_file():
                return candidate.resolve(), k
        except (OSError, ValueError):  # a name the system refuses: not this candidate
            continue
    return None, skip


def _path_problem(raw: str) -> str | None:
    """Why a path from a table cannot be used as one (too long, control characters), or None."""
    if not raw:
        return "empty path"
    longest = max(len(part) for part in _path_parts(raw)) if _path_parts(raw) else 0
    if len(raw) > MAX_PATH_CHARS or longest > MAX_NAME_CHARS:
        return (f"path of {len(raw)} characters (a name of {longest}); at most {MAX_PATH_CHARS} and "
                f"{MAX_NAME_CHARS}: {clip(raw)}")
    if has_control(raw):
        return f"path {clip(raw)!r} holds control characters"
    return None


def index_csv(table: str | Path, path_col: str = "path", label_col: str = "label",
              patient_col: str = "patient", region_col: str | None = None, root: str | Path | None = None,
              label_map: dict[str, str] | None = None) -> list[Record]:
    """Records from an existing CSV with its own column names (any common encoding, see ``read_table``).

    Args:
        table: the CSV.
        path_col, label_col, patient_col, region_col: its column names.
        root: folder the paths are relative to (default: the CSV's folder).
        label_map: rename label values, e.g. ``{"0": "control", "1": "AIA"}``.

    Raises:
        ManifestError: missing columns, malformed rows, or rows whose file cannot be found (all listed with
            their row).
    """
    table = Path(table)
    base = Path(root) if root else table.parent
    header, rows, errors = read_table(table)
    wanted = [c for c in (path_col, label_col, patient_col, region_col) if c]
    missing = [c for c in wanted if c not in header]
    if missing:
        raise ManifestError(f"{table}: no column(s) {', '.join(missing)}; its columns are "
                            f"{clip(', '.join(h or '(unnamed)' for h in header), 200)} — name them with "
                            "--path-col/--label-col/--patient-col")
    records, skip = [], None
    for line, row in rows:
        raw = row.get(path_col, "")
        problem = _path_problem(raw)
        target, skip = (None, skip) if problem else _resolve(_path_parts(raw), base, skip)
        label = row.get(label_col, "")
        label = (label_map or {}).get(label, label)
        patient = row.get(patient_col, "")
        if problem:
            errors.append(f"{table.name} row {line}: {problem}")
        elif target is None:
            errors.append(f"{table.name} row {line}: file not found: {clip(raw)} (under {base})")
        elif not label or not patient:
            errors.append(f"{table.name} row {line}: empty {'label' if not label else 'patient'}")
        else:
            region = row.get(region_col, "") if region_col else ""
            records.append(Record(target, label, patient, region))
    if errors:
        listed = "\n  ".join(errors[:_MAX_LISTED])
        more = f"\n  ... and {len(errors) - _MAX_LISTED} more" if len(errors) > _MAX_LISTED else ""
        raise ManifestError(f"{table}: {len(errors)} row(s) could not be indexed:\n  {listed}{more}")
    return records


def parse_label_map(text: str | None) -> dict[str, str]:
    """``"0=control,1=AIA"`` → ``{"0": "control", "1": "AIA"}``."""
    if not text:
        return {}
    pairs = [item.split("=", 1) for item in text.split(",") if item.strip()]
    if any(len(p) != 2 or not p[0].strip() or not p[1].strip() for p in pairs):
        raise ManifestError(f"label map {text!r} must look like 0=control,1=active")
    return {k.strip(): v.strip() for k, v in pairs}


# --------------------------------------------------------------------------------------------------
# Class names: typos, case variants and near-empty classes
# --------------------------------------------------------------------------------------------------

MIN_CLASS_ROWS = 5       # a class with fewer rows is suspicious ...
MIN_CLASS_SHARE = 0.02   # ... as is one with a smaller share of the rows ...
_RARE_AGAINST = 4        # ... when the largest class has at least this many times its rows
_LOOK_ALIKE_AGAINST = 10  # a look-alike name is suspicious with 10 times fewer rows than its twin


@dataclass(frozen=True)
class SuspectClass:
    """A label that looks like a mistake: ``rows`` rows, maybe resembling another class."""

    label: str
    rows: int
    total: int
    reason: str
    resembles: str | None = None

    def describe(self) -> str:
        like = f"; it resembles {self.resembles!r}" if self.resembles else ""
        return f"class {clip(self.label, 40)!r} has {self.rows} of {self.total} rows ({self.reason}{like})"


def suspicious_classes(records: list[Record]) -> list[SuspectClass]:
    """Labels that look like mistakes rather than classes.

    A label is suspect when it differs from another only in case, spacing or punctuation (the rarer of the
    two); when it has very few rows (under 5, or under 2% of all rows) while the largest class has at least
    four times as many; when it is within two edits of a class with ten times its rows (a typo); or when it
    holds control characters. Training refuses suspects unless the user names the classes.
    """
    counts = Counter(r.label for r in records)
    total, largest = sum(counts.values()), max(counts.values(), default=0)
    suspects = []
    for label, n in sorted(counts.items(), key=lambda item: (item[1], item[0])):
        twin = _case_twin(label, counts)
        alike = twin or _look_alike(label, counts)
        rare = (n < MIN_CLASS_ROWS or n < MIN_CLASS_SHARE * total) and n * _RARE_AGAINST <= largest
        if twin:
            reason = "it differs from another class only in case, spaces or punctuation"
        elif has_control(label):
            reason = "the name holds control characters"
        elif rare:
            reason = "very few rows"
        elif alike and counts[alike] >= _LOOK_ALIKE_AGAINST * n:
            reason = "a name one or two letters away from a much larger class"
        else:
            continue
        suspects.append(SuspectClass(label, n, total, reason, alike))
    return suspects


def refuse_suspicious_classes(cohort: Cohort) -> None:
    """Raise ConfigError naming every suspect class (see :func:`suspicious_classes`), for training."""
    suspects = suspicious_classes(cohort.records)
    if suspects:
        listed = "; ".join(s.describe() for s in suspects)
        others = [c for c in cohort.classes if c not in {s.label for s in suspects}]
        example = ",".join(others if len(others) >= 2 else cohort.classes)
        raise ConfigError(f"{cohort.source}: {listed}. A typo in a label makes a class of its own: fix the labels, "
                          f"or name the classes to train on with --classes (e.g. --classes {example})")


def _folded(label: str) -> str:
    return "".join(ch for ch in label.casefold() if ch.isalnum())


def _case_twin(label: str, counts: Counter) -> str | None:
    """A more frequent class (or, at equal counts, an earlier name) equal to ``label`` but for case/punctuation."""
    for other, m in counts.most_common():
        if other != label and _folded(other) == _folded(label) and (m, label) > (counts[label], other):
            return other
    return None


def _look_alike(label: str, counts: Counter) -> str | None:
    """The largest other class within two edits of ``label`` whose name is similar overall (difflib ratio)."""
    for other, _ in counts.most_common():
        if other == label or _edits(label.casefold(), other.casefold()) > 2:
            continue
        if difflib.SequenceMatcher(None, label.casefold(), other.casefold()).ratio() >= 0.6:
            return other
    return None


def _edits(a: str, b: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions)."""
    previous = list(range(len(b) + 1))
    for i, ca in enumerate(a, start=1):
        current = [i]
        for j, cb in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
        previous = current
    return previous[-1]


def parse_classes(text: str) -> list[str]:
    """``"control,active"`` → ``["control", "active"]`` (order kept, duplicates dropped)."""
    names = list(dict.fromkeys(name.strip() for name in text.split(",") if name.strip()))
    if len(names) < 2:
        raise ConfigError(f"--classes {text!r} must name at least two classes, e.g. --classes control,active")
    return names


def restrict_classes(cohort: Cohort, classes: list[str]) -> Cohort:
    """The cohort's rows of the named classes, in that order (with two, the last is the positive class).

    Rows of other labels are left out with a ``MucosaWarning`` that counts them.

    Raises:
        ConfigError: a named class has no rows (the manifest's labels are listed with their counts).
    """
    counts = label_counts(cohort.records)
    absent = [c for c in classes if c not in counts]
    if absent:
        have = ", ".join(f"{clip(label, 40)!r} ({n})" for label, n in counts.most_common(_MAX_LISTED))
        raise ConfigError(f"{cohort.source}: class(es) {', '.join(map(repr, absent))} named in --classes have no rows; "
                          f"the manifest's labels (rows) are {have}")
    left = {label: n for label, n in counts.items() if label not in classes}
    if left:
        listed = ", ".join(f"{clip(label, 40)!r} {n}" for label, n in sorted(left.items())[:_MAX_LISTED])
        warnings.warn(f"{cohort.source}: {sum(left.values())} row(s) whose label is not in --classes are left out "
                      f"({listed})", MucosaWarning, stacklevel=2)
    return Cohort([r for r in cohort.records if r.label in classes], list(classes), cohort.source)


# --------------------------------------------------------------------------------------------------
# mucosa check
# --------------------------------------------------------------------------------------------------


@dataclass
class CohortSummary:
    """What ``mucosa check`` prints.

    ``unreadable``: files that cannot be used (undecodable, too small, too large, multi-page);
    ``problems``: the rest that needs a look before training (suspicious classes, damaged videos).
    """

    frames_per_label: Counter = field(default_factory=Counter)
    files_per_label: Counter = field(default_factory=Counter)
    patients_per_label: dict[str, set] = field(default_factory=lambda: defaultdict(set))
    frames_per_region: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.unreadable or self.problems)

    def format(self, cohort: Cohort) -> str:
        lines = [f"cohort {cohort.source or ''}: {len(cohort.records)} files, {len(cohort.patients)} patients, "
                 f"classes {', '.join(cohort.classes)}"
                 + (f" (positive: {cohort.positive})" if cohort.positive else "")]
        lines.append(f"  {'label':<20} {'files':>7} {'frames':>8} {'patients':>9}")
        for label in cohort.classes:
            lines.append(f"  {clip(label, 20):<20} {self.files_per_label[label]:>7} "
                         f"{self.frames_per_label[label]:>8} {len(self.patients_per_label[label]):>9}")
        if any(self.frames_per_region):
            lines.append("  frames per region: " + ", ".join(
                f"{r or '(none)'} {n}" for r, n in sorted(self.frames_per_region.items())))
        lines.append("  image sizes (W x H): " + ", ".join(
            f"{w}x{h} ({n})" for (w, h), n in self.sizes.most_common(8)))
        lines.append(f"  unreadable files: {len(self.unreadable)}")
        lines += [f"    {u}" for u in self.unreadable[:_MAX_LISTED]]
        lines.append(f"  problems: {len(self.problems)}")
        lines += [f"    {p}" for p in self.problems[:_MAX_LISTED]]
        return "\n".join(lines)


def check_cohort(cohort: Cohort) -> CohortSummary:
    """Open every file once: count frames, collect sizes, list unreadable files, damaged videos and
    suspicious classes (see :func:`suspicious_classes`)."""
    summary = CohortSummary()
    summary.problems += [s.describe() + ": a typo? fix the label, or train with --classes"
                         for s in suspicious_classes(cohort.records)]
    for record in cohort.records:
        try:
            if record.is_video:
                info = video_info(record.path)
                frames, size = len(record.frames.indices(info.frames)), (info.width, info.height)
                report = scan_video(record.path)
                if report.decoded == 0:
                    raise UnreadableFileError(f"{record.path}: no frame of the video could be decoded "
                                              f"({report.describe()})")
                if report.damaged:
                    summary.problems.append(f"row {record.row}: {record.path}: video is damaged — "
                                            f"{report.describe()}")
            else:
                image = read_image(record.path)
                frames, size = 1, (image.shape[1], image.shape[0])
        except UnreadableFileError as error:
            summary.unreadable.append(f"row {record.row}: {error}")
            continue
        summary.files_per_label[record.label] += 1
        summary.frames_per_label[record.label] += frames
        summary.patients_per_label[record.label].add(record.patient)
        summary.frames_per_region[record.region] += frames
        summary.sizes[size] += 1
    return summary
