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

import codecs
import csv
import io
import json
import unicodedata
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from mucosa.data.readers import FrameSelection, is_image, is_video
from mucosa.errors import ConfigError, ManifestError, MucosaWarning
from mucosa.tables import original_cell, safe_cell

REQUIRED = ("path", "label", "patient")
RUN_RECORD = "run.json"  # written by training beside its split.csv (see recorded_origin)
UNLABELLED = "unlabelled"  # the one class of a manifest read with ``unlabelled=True``
OPTIONAL = ("region", "group", "frames", "split")
SPLITS = ("train", "val", "test")
REGIONS = ("rectum", "left colon", "transverse colon", "right colon", "terminal ileum")
# Labels read as "inflammation present" when the user does not name the positive class.
POSITIVE_WORDS = ("active", "active cd", "inflamed", "inflammation", "disease", "pathologic", "abnormal",
                   "cd", "positive", "1")
_NEGATIVE_WORDS = ("control", "normal", "healthy", "healed", "healing", "mucosal healing", "remission",
                   "inactive", "negative", "benign", "0")
_MAX_LISTED = 20
MAX_PATH_CHARS = 4096  # longest path a manifest row may give (Linux PATH_MAX)
MAX_NAME_CHARS = 255   # longest folder or file name in it (NAME_MAX)
_MAX_MANIFEST_BYTES = 256 * 2**20


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

    def parts(self, parts: list[str] | tuple[str, ...] | None) -> Cohort:
        """The rows whose split column is one of ``parts`` (e.g. ``["train", "val"]``); every row for None.

        Raises:
            ConfigError: ``parts`` empty or naming something other than :data:`SPLITS`, or no row in them.
        """
        if check_parts(parts) is None:
            return self
        records = [r for r in self.records if r.split in parts]
        if not records:
            raise ConfigError(f"{self.source}: no row has split {' or '.join(parts)} (--parts); the split column "
                              f"holds {', '.join(sorted({r.split or '(empty)' for r in self.records}))}")
        return Cohort(records, self.classes, self.source)

    def to_csv(self, path: str | Path) -> Path:
        """Write the manifest with paths relative to the new CSV's folder (forward slashes)."""
        return write_manifest(self.records, path)


def check_parts(parts: list[str] | tuple[str, ...] | None) -> list[str] | tuple[str, ...] | None:
    """``parts`` (split parts such as ``["train", "val"]``, or None for every row), refused with a ConfigError
    when empty or naming something other than :data:`SPLITS`."""
    if parts is not None and (not parts or not set(parts) <= set(SPLITS)):
        raise ConfigError(f"--parts {','.join(parts)!r}: name split parts among {', '.join(SPLITS)} (e.g. train "
                          "or train,val); leave --parts out to use every row")
    return parts


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
                  check_files: bool = True, require_all: bool = True, unlabelled: bool = False) -> Cohort:
    """Read and validate a manifest; every problem is reported at once with its row.

    Args:
        path: the CSV.
        classes: expected class names (e.g. from a checkpoint): other labels are errors, and with
            ``require_all`` a class without images is an error too.
        positive: the positive class for binary tasks (see :func:`order_classes`).
        check_files: report missing files (they are always resolved relative to the CSV).
        require_all: with ``classes``, every class must have images (off to evaluate a one-class cohort).
        unlabelled: read the frames only (self-supervised pretraining): only ``path`` is required, the
            ``label`` column is never read (every record gets the label :data:`UNLABELLED`), and a missing
            ``patient`` defaults to the row's path.

    Raises:
        ManifestError: naming the file, the row and the problem for each error found.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    header, rows, errors = read_table(path)
    rows = [(line, {key: original_cell(value) for key, value in row.items()}) for line, row in rows]
    required = ("path",) if unlabelled else REQUIRED
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(f"{path}: missing column(s) {', '.join(missing)}; the header is "
                            f"{clip(','.join(header), 200) or '(empty)'} and must include {','.join(required)}")
    if unlabelled:  # the labels are never read: every row gets the same placeholder
        rows = [(line, {**row, "label": UNLABELLED, "patient": row.get("patient") or row.get("path", "")})
                for line, row in rows]
        classes, require_all = None, False
    records, row_errors = _parse_rows(rows, path, set(classes) if classes else None, check_files)
    errors = sorted(errors + row_errors, key=_row_of)
    if not records and not errors:
        errors.append(f"{path}: the manifest has no rows")
    if classes and require_all:
        present = {r.label for r in records}
        errors += [f"{path}: class {c!r} has no images" for c in classes if c not in present]
    if errors:
        shown = "\n  ".join(errors[:_MAX_LISTED])
        more = f"\n  ... and {len(errors) - _MAX_LISTED} more" if len(errors) > _MAX_LISTED else ""
        raise ManifestError(f"{path}: {len(errors)} problem(s) in the manifest:\n  {shown}{more}")
    if unlabelled:
        return Cohort(records, [UNLABELLED], path)
    _warn_mixed_patients(records, path)
    _warn_patient_ids(records, path)
    names = list(classes) if classes else order_classes({r.label for r in records}, positive)
    return Cohort(records, names, path)


def _parse_rows(rows: list[tuple[int, dict[str, str]]], path: Path, classes: set[str] | None,
                check_files: bool) -> tuple[list[Record], list[str]]:
    records, errors, seen = [], [], {}
    bases = [path.parent, *recorded_origin(path)]
    for line, row in rows:
        where = f"{path.name} row {line}"
        rel = row.get("path", "").replace("\\", "/")
        problems = []
        if not rel:
            problems.append("empty path")
        if not row.get("label"):
            problems.append("empty label")
        elif classes is not None and row["label"] not in classes:
            problems.append(f"unknown label {clip(row['label'])!r} (expected one of {sorted(classes)})")
        if not row.get("patient"):
            problems.append("empty patient")
        if row.get("split") and row["split"] not in SPLITS:
            problems.append(f"split {clip(row['split'])!r} is not one of {', '.join(SPLITS)} or empty")
        target, problem = locate_first(rel, bases, check_files) if rel else (None, None)
        if problem:
            problems.append(problem)
        if target is not None and not (is_image(target) or is_video(target)):
            problems.append(f"{clip(rel)}: not an image or video file type")
        try:
            frames = FrameSelection.parse(row.get("frames"))
        except ValueError as error:
            problems.append(clip(str(error), 200))
            frames = FrameSelection()
        if target is not None and not frames.is_all and not is_video(target):
            problems.append(f"frames {clip(row['frames'])!r} given for an image (only videos have frames)")
        key = (target, frames)
        if target is not None and key in seen:
            problems.append(f"duplicate of row {seen[key]} ({clip(rel)}, frames {frames})")
        seen.setdefault(key, line)
        if problems:
            errors += [f"{where}: {p}" for p in problems]
            continue
        extra = {k: v for k, v in row.items() if k not in REQUIRED + OPTIONAL and k}
        records.append(Record(target, row["label"], row["patient"], row.get("region", ""),
                              row.get("group", ""), frames, row.get("split", ""), line, extra))
    return records, errors


def locate(rel: str, base: Path, check_file: bool = True) -> tuple[Path | None, str | None]:
    """``(absolute path, None)`` for a manifest path relative to ``base``, or ``(None, problem)``.

    A path longer than 4096 characters, a name longer than 255, control characters or a path the system
    refuses are problems, not exceptions; with ``check_file`` a missing file is one too.
    """
    longest = max((len(part) for part in rel.split("/")), default=0)
    if len(rel) > MAX_PATH_CHARS:
        return None, f"path is {len(rel)} characters long (at most {MAX_PATH_CHARS}): {clip(rel)}"
    if longest > MAX_NAME_CHARS:
        return None, f"a folder or file name in the path is {longest} characters long (at most {MAX_NAME_CHARS})"
    if has_control(rel):
        return None, f"path {clip(rel)!r} holds control characters"
    try:
        target = (base / rel).resolve()
        if check_file and not target.is_file():
            return None, f"file not found: {clip(rel)}"
    except (OSError, ValueError) as error:
        return None, f"path {clip(rel)!r} cannot be used ({getattr(error, 'strerror', None) or error})"
    return target, None


def recorded_origin(path: Path) -> list[Path]:
    """The folder a run's manifest was written in (``run_folder`` of the ``run.json`` beside it), when it has
    moved since; an empty list otherwise. A run folder moved alone then still finds its data there."""
    try:
        recorded = json.loads((path.parent / RUN_RECORD).read_text(encoding="utf-8")).get("run_folder")
    except (OSError, ValueError, AttributeError):  # no run.json, unreadable, or not an object
        return []
    if not isinstance(recorded, str) or not recorded or has_control(recorded):
        return []
    origin = Path(recorded)
    return [origin] if origin.is_absolute() and origin != path.parent.resolve() else []


def locate_first(rel: str, bases: list[Path], check_file: bool = True) -> tuple[Path | None, str | None]:
    """:func:`locate` relative to the first of ``bases`` where the file is (the first's problem otherwise)."""
    first = locate(rel, bases[0], check_file)
    for base in bases[1:] if first[0] is None else []:
        found = locate(rel, base, check_file)
        if found[0] is not None:
            return found
    return first


def clip(text: str, limit: int = 80) -> str:
    """``text`` cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


CONTROL_CATEGORIES = ("Cc", "Cf", "Zl", "Zp")  # control and format characters, line and paragraph separators


def has_control(text: str, allowed: str = "") -> bool:
    """Whether ``text`` holds a character that is invisible or moves the text around (Unicode Cc, Cf, Zl, Zp: a
    NUL, U+0085, a right-to-left override U+202E, U+2028...), other than those ``allowed``."""
    return any(unicodedata.category(ch) in CONTROL_CATEGORIES and ch not in allowed for ch in text)


def _row_of(message: str) -> int:
    """The row number in a 'NAME row N: ...' message, for sorting problems by row."""
    head = message.split(": ", 1)[0]
    tail = head.rsplit(" row ", 1)[-1]
    return int(tail) if tail.isdigit() else 0


# --------------------------------------------------------------------------------------------------
# Reading a CSV: any common encoding, clear errors for malformed rows
# --------------------------------------------------------------------------------------------------

_BOMS = ((codecs.BOM_UTF32_LE, "utf-32", "UTF-32"), (codecs.BOM_UTF32_BE, "utf-32", "UTF-32"),
         (codecs.BOM_UTF8, "utf-8-sig", "UTF-8"), (codecs.BOM_UTF16_LE, "utf-16", "UTF-16"),
         (codecs.BOM_UTF16_BE, "utf-16", "UTF-16"))


def read_table(path: str | Path) -> tuple[list[str], list[tuple[int, dict[str, str]]], list[str]]:
    """Header, rows and row problems of a CSV, read whatever its encoding.

    UTF-8 (with or without BOM), UTF-16 and UTF-32 (BOM, or UTF-16 recognised by its zero bytes) are read
    as such; other bytes are read as Windows-1252 (or Latin-1) with a ``MucosaWarning``. Values and
    column names are stripped; blank lines are skipped; a short row is filled with empty values.

    Returns:
        ``(header, [(line, {column: value})], problems)``: ``line`` is the row's line in the file (header = 1);
        a row with more (non-empty) fields than the header is not returned but listed in ``problems``.

    Raises:
        ManifestError: the file cannot be decoded, holds NUL characters, or a field is over the CSV module's
            size limit (128 KiB): one line naming the file and row.
    """
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: file not found")
    reader = csv.reader(io.StringIO(_decode(path), newline=""))
    rows, problems, header = [], [], None
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as error:
            raise ManifestError(f"{path} row {reader.line_num}: {_csv_problem(error)}") from None
        if header is None:
            header = [name.strip() for name in fields]
            _check_header(path, header)
            continue
        if not any(value.strip() for value in fields):
            continue
        if any(value.strip() for value in fields[len(header):]):  # empty trailing fields are harmless
            problems.append(f"{path.name} row {reader.line_num}: {len(fields)} fields but the header has "
                            f"{len(header)} columns (a comma inside a value? put the value in double quotes)")
            continue
        values = [value.strip() for value in fields[: len(header)]] + [""] * (len(header) - len(fields))
        rows.append((reader.line_num, dict(zip(header, values))))
    return header or [], rows, problems


def _check_header(path: Path, header: list[str]) -> None:
    doubled = sorted(name for name, n in Counter(h for h in header if h).items() if n > 1)
    if doubled:
        raise ManifestError(f"{path}: column(s) {', '.join(clip(d) for d in doubled)} appear more than once in "
                            "the header")


def _csv_problem(error: csv.Error) -> str:
    if "field larger than field limit" in str(error):
        return (f"a field is longer than {csv.field_size_limit()} characters (a missing closing quote, or not "
                "a manifest?)")
    return f"not a readable CSV row ({error})"


def _decode(path: Path) -> str:
    """The file's text: by its byte-order mark, as UTF-16 when it looks like it, as UTF-8, else Windows-1252."""
    size = path.stat().st_size
    if size > _MAX_MANIFEST_BYTES:
        raise ManifestError(f"{path}: {size / 2**20:.0f} MiB is too large for a manifest (is it a CSV?)")
    data = path.read_bytes()
    for bom, codec, name in _BOMS:
        if data.startswith(bom):
            return _checked(path, _strict(path, data, codec, name))
    sample = data[:4096]
    if sample.count(0) > len(sample) // 4:  # text with every other byte zero: UTF-16 without a BOM
        codec = "utf-16-le" if sample[1::2].count(0) > sample[0::2].count(0) else "utf-16-be"
        return _checked(path, _strict(path, data, codec, "UTF-16"))
    try:
        return _checked(path, data.decode("utf-8"))
    except UnicodeDecodeError as error:
        line = data[: error.start].count(b"\n") + 1
        try:
            text, name = data.decode("cp1252"), "Windows-1252"
        except UnicodeDecodeError:
            text, name = data.decode("latin-1"), "Latin-1"
        warnings.warn(f"{path}: not UTF-8 (first odd byte on line {line}); read as {name}: check accented names, "
                      "and save the manifest as UTF-8", MucosaWarning, stacklevel=4)
        return _checked(path, text)


def _strict(path: Path, data: bytes, codec: str, name: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError as error:
        raise ManifestError(f"{path}: looks like {name} but byte {error.start} is not valid {name}; save the "
                            "manifest again as UTF-8") from None


def _checked(path: Path, text: str) -> str:
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        raise ManifestError(f"{path} row {line}: holds NUL characters (a binary file, not a CSV?)")
    return text


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


def _warn_patient_ids(records: list[Record], path: Path) -> None:
    """Warn about patient ids that differ only in case (``p01``/``P01``) or hold control characters."""
    spellings = defaultdict(set)
    for r in records:
        spellings[r.patient.casefold()].add(r.patient)
    variants = sorted(sorted(v) for v in spellings.values() if len(v) > 1)
    if variants:
        listed = "; ".join("/".join(v) for v in variants[:_MAX_LISTED])
        warnings.warn(f"{path}: {len(variants)} patient id(s) differ only in case ({listed}): they count as different "
                      "patients, so a grouped split may put one patient on two sides; write each id one way",
                      MucosaWarning, stacklevel=3)
    odd = sorted({r.patient for r in records if has_control(r.patient)})
    if odd:
        listed = ", ".join(repr(clip(p, 40)) for p in odd[:_MAX_LISTED])
        warnings.warn(f"{path}: {len(odd)} patient id(s) hold control characters ({listed}), invisible in most "
                      "viewers: check that they name the patients you mean", MucosaWarning, stacklevel=3)


def write_manifest(records: list[Record], path: str | Path) -> Path:
    """Write records as a manifest CSV; paths become relative to the CSV's folder. A value a spreadsheet would
    run as a formula (a patient ``=1+1``, a region ``@SUM(A1)``) is written as text (:func:`mucosa.tables.safe_cell`),
    and :func:`load_manifest` reads back the value itself."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    extras = list(dict.fromkeys(k for r in records for k in r.extra))
    columns = list(REQUIRED + OPTIONAL) + extras
    base = path.parent.resolve()
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, columns, lineterminator="\n")
        writer.writeheader()
        for r in records:
            row = {"path": _relative(r.path, base), "label": r.label, "patient": r.patient, "region": r.region,
                   "group": r.group, "frames": "" if r.frames.is_all else str(r.frames), "split": r.split, **r.extra}
            writer.writerow({key: safe_cell(value) for key, value in row.items()})
    return path


def _relative(target: Path, base: Path) -> str:
    import os

    return Path(os.path.relpath(target, base)).as_posix()


def with_splits(records: list[Record], splits: list[str]) -> list[Record]:
    """Copies of ``records`` with their ``split`` set."""
    return [replace(r, split=s) for r, s in zip(records, splits, strict=True)]


def label_counts(records: list[Record]) -> Counter:
    return Counter(r.label for r in records)
