"""Building a manifest from the layouts people have, and checking a cohort before training.

Layouts understood by :func:`index_directory`:

- ``DIR/<label>/<patient>/<images or videos>`` (deeper folders allowed; a folder named like a region,
  e.g. ``terminal_ileum``, fills the region column);
- ``DIR/<label>/<videos>``: one case (patient) per video.

:func:`index_csv` reads an existing table with other column names, Windows separators and a stray path
prefix (e.g. ``data\\AIA\\C_00\\capture_10.jpg`` next to a ``C_00`` folder).
"""

from __future__ import annotations

import csv
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path, PureWindowsPath

from mucosa.data.manifest import REGIONS, Cohort, Record
from mucosa.data.readers import is_image, is_video, read_image, video_info
from mucosa.errors import ManifestError, UnreadableFileError

_MAX_LISTED = 20


def _media(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
                  and (is_image(p) or is_video(p)))


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
                for media in _media(item):
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
        if candidate is not None and candidate.is_file():
            return candidate.resolve(), k
    return None, skip


def index_csv(table: str | Path, path_col: str = "path", label_col: str = "label",
              patient_col: str = "patient", region_col: str | None = None, root: str | Path | None = None,
              label_map: dict[str, str] | None = None) -> list[Record]:
    """Records from an existing CSV with its own column names.

    Args:
        table: the CSV.
        path_col, label_col, patient_col, region_col: its column names.
        root: folder the paths are relative to (default: the CSV's folder).
        label_map: rename label values, e.g. ``{"0": "control", "1": "AIA"}``.

    Raises:
        ManifestError: missing columns, or rows whose file cannot be found (all listed with their row).
    """
    table = Path(table)
    base = Path(root) if root else table.parent
    with open(table, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        wanted = [c for c in (path_col, label_col, patient_col, region_col) if c]
        missing = [c for c in wanted if c not in header]
        if missing:
            raise ManifestError(f"{table}: no column(s) {', '.join(missing)}; its columns are "
                                f"{', '.join(h or '(unnamed)' for h in header)} — name them with "
                                "--path-col/--label-col/--patient-col")
        rows = list(reader)
    records, errors, skip = [], [], None
    for line, row in enumerate(rows, start=2):
        raw = (row.get(path_col) or "").strip()
        target, skip = _resolve(_path_parts(raw), base, skip) if raw else (None, skip)
        label = (row.get(label_col) or "").strip()
        label = (label_map or {}).get(label, label)
        patient = (row.get(patient_col) or "").strip()
        if target is None:
            errors.append(f"{table.name} row {line}: file not found: {raw or '(empty path)'} (under {base})")
        elif not label or not patient:
            errors.append(f"{table.name} row {line}: empty {'label' if not label else 'patient'}")
        else:
            region = (row.get(region_col) or "").strip() if region_col else ""
            records.append(Record(target, label, patient, region))
    if errors:
        listed = "\n  ".join(errors[:_MAX_LISTED])
        raise ManifestError(f"{table}: {len(errors)} row(s) could not be indexed:\n  {listed}")
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
# mucosa check
# --------------------------------------------------------------------------------------------------


@dataclass
class CohortSummary:
    """What ``mucosa check`` prints."""

    frames_per_label: Counter = field(default_factory=Counter)
    files_per_label: Counter = field(default_factory=Counter)
    patients_per_label: dict[str, set] = field(default_factory=lambda: defaultdict(set))
    frames_per_region: Counter = field(default_factory=Counter)
    sizes: Counter = field(default_factory=Counter)
    unreadable: list[str] = field(default_factory=list)

    def format(self, cohort: Cohort) -> str:
        lines = [f"cohort {cohort.source or ''}: {len(cohort.records)} files, {len(cohort.patients)} patients, "
                 f"classes {', '.join(cohort.classes)}"
                 + (f" (positive: {cohort.positive})" if cohort.positive else "")]
        lines.append(f"  {'label':<20} {'files':>7} {'frames':>8} {'patients':>9}")
        for label in cohort.classes:
            lines.append(f"  {label:<20} {self.files_per_label[label]:>7} {self.frames_per_label[label]:>8} "
                         f"{len(self.patients_per_label[label]):>9}")
        if any(self.frames_per_region):
            lines.append("  frames per region: " + ", ".join(
                f"{r or '(none)'} {n}" for r, n in sorted(self.frames_per_region.items())))
        lines.append("  image sizes (W x H): " + ", ".join(
            f"{w}x{h} ({n})" for (w, h), n in self.sizes.most_common(8)))
        lines.append(f"  unreadable files: {len(self.unreadable)}")
        lines += [f"    {u}" for u in self.unreadable[:_MAX_LISTED]]
        return "\n".join(lines)


def check_cohort(cohort: Cohort) -> CohortSummary:
    """Open every file once: count frames, collect sizes and list unreadable files."""
    summary = CohortSummary()
    for record in cohort.records:
        try:
            if record.is_video:
                info = video_info(record.path)
                frames, size = len(record.frames.indices(info.frames)), (info.width, info.height)
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
