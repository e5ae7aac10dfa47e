"""Train / validation / test splits that do (or, for the paper's protocol, visibly do not) keep patients apart.

Modes:

- ``within-patient``: the paper's protocol: 80/20 of each patient's images, stratified by label. The same
  patients are on both sides, so the test figure measures recognition of known patients; every report of
  it carries a warning.
- ``patient``: grouped hold-out, stratified by label (scikit-learn's StratifiedGroupKFold, one fold).
- ``kfold``: StratifiedGroupKFold with ``k`` folds; ``fold`` picks the test fold.
- ``lopo``: leave one patient out; ``fold`` picks the patient (in sorted order).
- ``none``: everything is training data (a validation part may still be carved out).
- ``manifest``: keep the ``split`` column as the user wrote it.

A validation part is carved out of the training part the same way (within-patient for ``within-patient``,
grouped otherwise), never out of the test part.
"""

from __future__ import annotations

import warnings
from collections import Counter
from dataclasses import dataclass, replace

import numpy as np

from mucosa.data.manifest import Cohort, Record
from mucosa.data.readers import runs_to_selections, video_info
from mucosa.errors import ConfigError, MucosaWarning

MODES = ("within-patient", "patient", "kfold", "lopo", "none", "manifest")


@dataclass
class SplitResult:
    """A cohort with its ``split`` column filled in, and the lines that describe the split."""

    cohort: Cohort
    report: str
    leaked_patients: list[str]


def holdout_patients(labels: np.ndarray, patients: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of the units whose patient is held out; stratified by label, grouped by patient.

    Of the StratifiedGroupKFold folds, the first that leaves every class on both sides is taken; failing
    that, one that leaves every class in the remaining (training) part (small cohorts can make the first
    fold single-class).
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"hold-out fraction {fraction} must be between 0 and 1")
    n_patients = len(set(patients))
    n_splits = max(2, round(1.0 / fraction))
    if n_patients < n_splits:
        n_splits = n_patients
    if n_patients < 2:
        raise ConfigError(f"a patient-grouped split needs at least 2 patients; the cohort has {n_patients}")
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    classes = set(labels.tolist())
    best, held = (-1, -1), None
    for _, fold in splitter.split(np.zeros(len(labels)), labels, patients):
        rest = np.ones(len(labels), dtype=bool)
        rest[fold] = False
        score = (set(labels[rest].tolist()) == classes, set(labels[fold].tolist()) == classes)
        if score > best:
            best, held = score, fold
    mask = np.zeros(len(labels), dtype=bool)
    mask[held] = True
    return mask


def patient_folds(labels: np.ndarray, patients: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of every unit; StratifiedGroupKFold, so a patient is in exactly one fold."""
    from sklearn.model_selection import StratifiedGroupKFold

    n_patients = len(set(patients))
    if not 2 <= k <= n_patients:
        raise ConfigError(f"k={k} folds needs 2 <= k <= number of patients ({n_patients})")
    folds = np.full(len(labels), -1)
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    for index, (_, held) in enumerate(splitter.split(np.zeros(len(labels)), labels, patients)):
        folds[held] = index
    return folds


def within_patient(labels: np.ndarray, patients: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask holding out ``fraction`` of each patient's units of each label (the paper's split)."""
    rng = np.random.default_rng(seed)
    mask = np.zeros(len(labels), dtype=bool)
    for patient in sorted(set(patients)):
        for label in sorted(set(labels[patients == patient])):
            members = np.flatnonzero((patients == patient) & (labels == label))
            n_held = int(round(fraction * len(members))) if len(members) > 1 else 0
            mask[rng.permutation(members)[:n_held]] = True
    return mask


def assign(labels: np.ndarray, patients: np.ndarray, mode: str, test: float = 0.2, val: float = 0.0,
           k: int = 5, fold: int = 0, seed: int = 0) -> np.ndarray:
    """Split units into ``train`` / ``val`` / ``test`` (an array of those strings).

    Args:
        labels, patients: one entry per unit (image or video frame).
        mode: one of MODES except ``manifest``.
        test: test fraction for ``patient`` and ``within-patient``.
        val: fraction of the training part carved out for validation (0 = none).
        k, fold: number of folds and test fold for ``kfold``; the patient index for ``lopo``.
        seed: makes the split reproducible.
    """
    labels, patients = np.asarray(labels), np.asarray(patients)
    if mode == "within-patient":
        is_test = within_patient(labels, patients, test, seed)
    elif mode == "patient":
        is_test = holdout_patients(labels, patients, test, seed)
    elif mode == "kfold":
        if not 0 <= fold < k:
            raise ConfigError(f"fold {fold} is not in 0..{k - 1}")
        is_test = patient_folds(labels, patients, k, seed) == fold
    elif mode == "lopo":
        order = sorted(set(patients))
        if not 0 <= fold < len(order):
            raise ConfigError(f"lopo fold {fold} is not in 0..{len(order) - 1} (one fold per patient)")
        is_test = patients == order[fold]
    elif mode == "none":
        is_test = np.zeros(len(labels), dtype=bool)
    else:
        raise ConfigError(f"split mode {mode!r} is not one of {', '.join(MODES)}")
    out = np.where(is_test, "test", "train").astype(object)
    if val > 0:
        train = np.flatnonzero(~is_test)
        carve = within_patient if mode == "within-patient" else holdout_patients
        out[train[carve(labels[train], patients[train], val, seed + 1)]] = "val"
    return out


def _frame_units(records: list[Record]) -> list[tuple[int, int | None]]:
    """(record index, frame index) for every frame of every video, (record index, None) for images."""
    units = []
    for i, record in enumerate(records):
        if record.is_video:
            units += [(i, f) for f in record.frames.indices(video_info(record.path).frames)]
        else:
            units.append((i, None))
    return units


def _records_from_units(records: list[Record], units: list[tuple[int, int | None]],
                        sides: np.ndarray) -> list[Record]:
    """Rebuild manifest rows: a video whose frames fell on several sides becomes one row per run."""
    out: list[Record] = []
    by_record: dict[int, list[tuple[int | None, str]]] = {}
    for (index, frame), side in zip(units, sides):
        by_record.setdefault(index, []).append((frame, side))
    for index, items in by_record.items():
        record = records[index]
        if not record.is_video or len({s for _, s in items}) == 1:
            out.append(replace(record, split=items[0][1]))
            continue
        for side in ("train", "val", "test"):
            frames = sorted(f for f, s in items if s == side)
            out += [replace(record, frames=sel, split=side)
                    for sel in runs_to_selections(frames, record.frames.step)]
    return out


def split_cohort(cohort: Cohort, mode: str, test: float = 0.2, val: float = 0.0, k: int = 5,
                 fold: int = 0, seed: int = 0) -> SplitResult:
    """Fill the cohort's ``split`` column and describe the result (class counts, leakage).

    ``within-patient`` works on frames (a patient's single video is split 80/20 by frames); grouped modes
    work on manifest rows, which keeps every frame of a patient together.
    """
    records = cohort.records
    if mode == "manifest":
        missing = [r.row for r in records if not r.split]
        if missing:
            raise ConfigError(f"split mode 'manifest' but {len(missing)} row(s) have no split "
                              f"(first rows: {missing[:5]})")
        split_records = records
    elif mode == "within-patient":
        units = _frame_units(records)
        sides = assign([records[i].label for i, _ in units], [records[i].patient for i, _ in units],
                       mode, test, val, k, fold, seed)
        split_records = _records_from_units(records, units, sides)
    else:
        sides = assign([r.label for r in records], [r.patient for r in records], mode, test, val, k, fold, seed)
        split_records = [replace(r, split=s) for r, s in zip(records, sides)]
    result = Cohort(split_records, cohort.classes, cohort.source)
    leaked = leaked_patients(split_records)
    return SplitResult(result, describe(result, mode, leaked), leaked)


def leaked_patients(records: list[Record]) -> list[str]:
    """Patients with frames on more than one side of the split."""
    sides: dict[str, set] = {}
    for r in records:
        sides.setdefault(r.patient, set()).add(r.split)
    return sorted(p for p, s in sides.items() if len(s) > 1)


def _frames_of(record: Record) -> int:
    if not record.is_video:
        return 1
    if record.frames.stop is not None:
        return len(range(record.frames.start, record.frames.stop + 1, record.frames.step))
    return len(record.frames.indices(video_info(record.path).frames))


def describe(cohort: Cohort, mode: str, leaked: list[str]) -> str:
    """Class counts (frames and patients) per side and the leakage line."""
    lines = [f"split mode: {mode}"]
    for side in ("train", "val", "test"):
        part = [r for r in cohort.records if r.split == side]
        if not part:
            continue
        frames = Counter()
        for r in part:
            frames[r.label] += _frames_of(r)
        patients = {label: len({r.patient for r in part if r.label == label}) for label in cohort.classes}
        counts = ", ".join(f"{c} {frames[c]} frames/{patients[c]} patients" for c in cohort.classes)
        lines.append(f"  {side:<5}: {counts}")
    if leaked:
        lines.append(f"  leakage: {len(leaked)} patient(s) on more than one side "
                     f"({', '.join(leaked[:10])}{', ...' if len(leaked) > 10 else ''})")
        if mode == "within-patient":
            lines.append("  WARNING: within-patient split (the paper's protocol): the same patients are in "
                         "training and test, so test figures overstate performance on new patients.")
    else:
        lines.append("  leakage: none (no patient on more than one side)")
    return "\n".join(lines)


SELECTIONS = ("auto", "test", "val", "all")


def select_parts(cohort: Cohort, info: dict, split: str) -> tuple[Cohort, Cohort | None, str]:
    """The part to evaluate and the validation part (for threshold rules), with a sentence saying why.

    ``auto``: the manifest's split column if it has one, else the test patients the checkpoint recorded
    when they are in this cohort, else every row (an unseen cohort).
    """
    if split not in SELECTIONS:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(SELECTIONS)}")
    records = cohort.records
    recorded = info.get("split", {}).get("patients", {})
    trained = set(recorded.get("train", []))
    sides = {r.split for r in records if r.split}
    if split == "all":
        part, val, why = records, [], "all rows of the manifest"
    elif sides and split in ("auto", "test", "val"):
        side = "test" if split == "auto" else split
        part = [r for r in records if r.split == side]
        val = [r for r in records if r.split == "val"]
        why = f"rows whose split column is '{side}'"
    elif split in ("auto", "test", "val") and set(recorded.get(split if split != "auto" else "test", [])) & {
            r.patient for r in records}:
        side = "test" if split == "auto" else split
        part = [r for r in records if r.patient in set(recorded[side])]
        val = [r for r in records if r.patient in set(recorded.get("val", []))]
        why = f"the {len({r.patient for r in part})} {side} patients recorded in the checkpoint"
    elif split == "auto":
        part, val, why = records, [], "all rows (none of these patients were used in training)"
    else:
        raise ConfigError(f"--split {split}: the manifest has no split column and the checkpoint records no "
                          f"{split} patients that are in it")
    if not part:
        raise ConfigError(f"nothing to evaluate: {why} selects no rows")
    leaked = sorted({r.patient for r in part} & trained)
    if leaked:
        warnings.warn(f"{len(leaked)} evaluated patient(s) were used to train this model ({', '.join(leaked[:8])}"
                      f"{', ...' if len(leaked) > 8 else ''}): figures will overstate performance on new patients",
                      MucosaWarning, stacklevel=2)
    subset = Cohort(part, cohort.classes, cohort.source)
    return subset, (Cohort(val, cohort.classes, cohort.source) if val else None), why
