"""Train / validation / test splits that do (or, for the paper's protocol, visibly do not) keep patients apart.

Modes:

- ``within-patient``: the paper's protocol: 80/20 of each patient's images, stratified by label. The same
  patients are on both sides, so the test figure measures recognition of known patients; every report of
  it carries a warning.
- ``patient``: grouped hold-out, stratified by label (scikit-learn's StratifiedGroupKFold, one fold).
- ``kfold``: StratifiedGroupKFold with ``k`` folds; ``fold`` picks the test fold.
- ``lopo``: leave one patient out; ``fold`` picks the patient (in sorted order).
- ``none``: everything is training data (a validation part may still be carved out).
- ``manifest``: keep the ``split`` column as the user wrote it (warns when its val or test rows lack a class).

A validation part is carved out of the training part the same way (within-patient for ``within-patient``,
grouped otherwise), never out of the test part. Grouped parts hold every class (a part without one cannot
judge a model: its ROC AUC is undefined): when scikit-learn's folds do not manage it, each class's patients
are dealt out directly, and a cohort with too few patients of a class for the parts asked for is a
ConfigError that counts the patients of each class.
"""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from mucosa.data.manifest import Cohort, Record
from mucosa.data.readers import runs_to_selections
from mucosa.data.video import video_info
from mucosa.errors import ConfigError, MucosaWarning

MODES = ("within-patient", "patient", "kfold", "lopo", "none", "manifest")


@dataclass
class SplitResult:
    """A cohort with its ``split`` column filled in, and the lines that describe the split."""

    cohort: Cohort
    report: str
    leaked_patients: list[str]


def holdout_patients(labels: np.ndarray, patients: np.ndarray, fraction: float, seed: int,
                     part: str = "test") -> np.ndarray:
    """Boolean mask of the units whose patient is held out; stratified by label, grouped by patient.

    Both sides hold every class. Of scikit-learn's StratifiedGroupKFold folds (as many as the fraction
    implies, fewer when the cohort is small), the first that leaves every class on both sides is taken;
    when none does, the patients of each class (by their majority label) are shuffled and about
    ``fraction`` of them, at least one and never all, are held out.

    Raises:
        ConfigError: a class has fewer than two patients (naming the patients of each class).
    """
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"hold-out fraction {fraction} must be between 0 and 1")
    counts = patients_per_class(labels, patients)
    if min(counts.values(), default=0) < 2:
        raise ConfigError(f"a {part} part that holds every class needs at least 2 patients of each class (one on "
                          f"each side); {_cohort_counts(counts, patients, part)}")
    classes = set(counts)
    units = Counter(labels.tolist())
    n_splits = min(max(2, round(1.0 / fraction)), len(set(patients.tolist())), max(units.values()))
    for fold in _sklearn_folds(labels, patients, n_splits, seed):
        mask = np.zeros(len(labels), dtype=bool)
        mask[fold] = True
        if _classes_in(labels, mask) == classes == _classes_in(labels, ~mask):
            return mask
    chosen = _deal_holdout(labels, patients, fraction, seed)
    mask = np.isin(patients, list(chosen))
    if not _classes_in(labels, mask) == classes == _classes_in(labels, ~mask):
        raise ConfigError(f"no {part} part holds every class while leaving every class for training (a class is "
                          f"carried by patients of another majority label); {_cohort_counts(counts, patients, part)}")
    return mask


def patient_folds(labels: np.ndarray, patients: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) of every unit; a patient is in exactly one fold and every fold holds every class.

    StratifiedGroupKFold's folds are used when each holds every class; otherwise the patients of each
    class (by majority label) are dealt round the folds.

    Raises:
        ConfigError: ``k`` out of range, or a class with fewer than ``k`` patients.
    """
    n_patients = len(set(patients.tolist()))
    if not 2 <= k <= n_patients:
        raise ConfigError(f"k={k} folds needs 2 <= k <= number of patients ({n_patients})")
    counts = patients_per_class(labels, patients)
    if min(counts.values()) < k:
        raise ConfigError(f"a {k}-fold patient split needs at least {k} patients of each class, so that every test "
                          f"fold holds every class; {_cohort_counts(counts, patients)}. Lower --k (to "
                          f"{max(2, min(counts.values()))} at most) or add patients")
    folds = np.full(len(labels), -1)
    for index, held in enumerate(_sklearn_folds(labels, patients, k, seed)):
        folds[held] = index
    if all(_classes_in(labels, folds == f) == set(counts) for f in range(k)):
        return folds
    dealt = _deal(labels, patients, k, seed)
    return np.array([dealt[p] for p in patients.tolist()])


def patients_per_class(labels: np.ndarray, patients: np.ndarray) -> dict[str, int]:
    """Number of distinct patients with at least one unit of each label."""
    pairs = set(zip(labels.tolist(), patients.tolist()))
    return dict(sorted(Counter(label for label, _ in pairs).items()))


def _cohort_counts(counts: dict[str, int], patients: np.ndarray, part: str = "test") -> str:
    where = "the training part has" if part == "validation" else "the cohort has"
    listed = ", ".join(f"{n} {label}" for label, n in counts.items())
    return f"{where} {listed} patient(s) ({len(set(patients.tolist()))} in all)"


def _classes_in(labels: np.ndarray, mask: np.ndarray) -> set:
    return set(labels[mask].tolist())


def _sklearn_folds(labels: np.ndarray, patients: np.ndarray, n_splits: int, seed: int) -> list[np.ndarray]:
    """StratifiedGroupKFold's test folds (unit positions); empty when it cannot split this cohort."""
    from sklearn.model_selection import StratifiedGroupKFold

    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the least populated class has only N members"
        try:
            return [fold for _, fold in splitter.split(np.zeros(len(labels)), labels, patients)]
        except ValueError:
            return []


def _by_majority_label(labels: np.ndarray, patients: np.ndarray, seed: int) -> dict[str, list[str]]:
    """Patients grouped by their majority label (ties: the rarer label), shuffled within each group."""
    per_patient: dict[str, Counter] = {}
    for label, patient in zip(labels.tolist(), patients.tolist()):
        per_patient.setdefault(patient, Counter())[label] += 1
    overall = Counter(labels.tolist())
    groups: dict[str, list[str]] = {}
    for patient in sorted(per_patient):
        label = max(per_patient[patient].items(), key=lambda item: (item[1], -overall[item[0]]))[0]
        groups.setdefault(label, []).append(patient)
    rng = np.random.default_rng(seed)
    return {label: [members[i] for i in rng.permutation(len(members))] for label, members in sorted(groups.items())}


def _deal_holdout(labels: np.ndarray, patients: np.ndarray, fraction: float, seed: int) -> set[str]:
    """About ``fraction`` of each class's patients, at least one and never all of them."""
    chosen = set()
    for members in _by_majority_label(labels, patients, seed).values():
        held = min(max(1, round(fraction * len(members))), len(members) - 1)
        chosen.update(members[:held])
    return chosen


def _deal(labels: np.ndarray, patients: np.ndarray, k: int, seed: int) -> dict[str, int]:
    """Fold of each patient: each class's patients dealt round the ``k`` folds in turn."""
    folds, offset = {}, 0
    for members in _by_majority_label(labels, patients, seed).values():
        for i, patient in enumerate(members):
            folds[patient] = (offset + i) % k
        offset += len(members)
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

    Grouped modes keep every class in every part (training, validation, test; a ``lopo`` test part is
    one patient), stratified by label at the patient level; a cohort too small for that is a ConfigError
    that counts the patients of each class and says what the split needs.

    Args:
        labels, patients: one entry per unit (image or video frame).
        mode: one of MODES except ``manifest``.
        test: test fraction for ``patient`` and ``within-patient``.
        val: fraction of the training part carved out for validation (0 = none).
        k, fold: number of folds and test fold for ``kfold``; the patient index for ``lopo``.
        seed: makes the split reproducible.
    """
    labels, patients = np.asarray(labels), np.asarray(patients)
    if mode not in MODES or mode == "manifest":
        raise ConfigError(f"split mode {mode!r} is not one of {', '.join(MODES)}")
    if mode == "within-patient":
        is_test = within_patient(labels, patients, test, seed)
    elif mode == "patient":
        _require(labels, patients, 2 + (val > 0), "a patient split with a test part"
                 + (" and a validation part" if val > 0 else ""),
                 "one each for training" + (", validation" if val > 0 else "") + " and test, so that every part "
                 "holds every class")
        is_test = holdout_patients(labels, patients, test, seed)
    elif mode == "kfold":
        if not 0 <= fold < k:
            raise ConfigError(f"fold {fold} is not in 0..{k - 1}")
        if val > 0 and k >= 2:  # each class: k or more patients, and two left beside the largest test fold
            _require(labels, patients, next(n for n in range(k, 10**6) if n - -(-n // k) >= 2),
                     f"a {k}-fold patient split with a validation part", "so that every test fold holds every "
                     "class and the rest still gives training and validation patients of each")
        is_test = patient_folds(labels, patients, k, seed) == fold
    elif mode == "lopo":
        order = sorted(set(patients.tolist()))
        if not 0 <= fold < len(order):
            raise ConfigError(f"lopo fold {fold} is not in 0..{len(order) - 1} (one fold per patient)")
        is_test = patients == order[fold]
        _require(labels[~is_test], patients[~is_test], 1 + (val > 0), f"leaving out patient {order[fold]!r}",
                 "for training" + (" and validation, so that both hold every class" if val > 0 else ""),
                 "the other patients are",
                 set(labels.tolist()))
    else:  # none
        _require(labels, patients, 1 + (val > 0), "training on every case"
                 + (" with validation cases held out" if val > 0 else ""),
                 "one for training" + (" and one for validation, so that both hold every class" if val > 0 else ""))
        is_test = np.zeros(len(labels), dtype=bool)
    out = np.where(is_test, "test", "train").astype(object)
    if val > 0:
        train = np.flatnonzero(~is_test)
        if mode == "within-patient":
            held = within_patient(labels[train], patients[train], val, seed + 1)
        else:
            held = holdout_patients(labels[train], patients[train], val, seed + 1, part="validation")
        out[train[held]] = "val"
    return out


def _require(labels: np.ndarray, patients: np.ndarray, need: int, what: str, why: str,
             whose: str = "the cohort has", classes: set | None = None) -> None:
    """Raise ConfigError unless every class (of ``classes``, default those in ``labels``) has ``need`` patients."""
    present = patients_per_class(labels, patients)
    counts = {c: present.get(c, 0) for c in sorted(set(present) | (classes or set()))}
    if counts and min(counts.values()) >= need:
        return
    listed = ", ".join(f"{n} {label}" for label, n in counts.items()) or "no"
    raise ConfigError(f"{what} needs at least {need} patients of each class ({why}); "
                      f"{whose} {listed} patient(s) ({len(set(patients.tolist()))} in all). Add "
                      "patients, hold out less (--val 0 trains without validation), or choose another --split")


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
        _warn_missing_classes(records, cohort.classes)
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


def _warn_missing_classes(records: list[Record], classes: list[str]) -> None:
    """A split written in the manifest whose validation or test part lacks a class cannot judge a model."""
    for side in ("val", "test"):
        present = {r.label for r in records if r.split == side}
        missing = [c for c in classes if c not in present]
        if present and missing:
            warnings.warn(f"the manifest's {side} rows hold no {', '.join(missing)} rows: "
                          f"{'validation AUC cannot be computed' if side == 'val' else 'test metrics miss a class'}",
                          MucosaWarning, stacklevel=3)


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


def select_parts(cohort: Cohort, info: dict, split: str, pseudonym: Callable[[str], str] | None = None
                 ) -> tuple[Cohort, Cohort | None, str]:
    """The part to evaluate and the validation part (for threshold rules), with a sentence saying why.

    ``auto``: the manifest's split column if it has one, else the test patients the checkpoint recorded
    when they are in this cohort, else every row (an unseen cohort). ``pseudonym``: the checkpoint records
    its patients as these pseudonyms (``data.pseudonyms``: a run trained with ``--pseudonymise``).
    """
    if split not in SELECTIONS:
        raise ConfigError(f"--split {split!r} is not one of {', '.join(SELECTIONS)}")
    records = cohort.records
    recorded = info.get("split", {}).get("patients", {})
    unknown = pseudonym is None and bool(info.get("split", {}).get("pseudonym_key_check"))
    if unknown:
        warnings.warn("the checkpoint records its patients as pseudonyms (trained with --pseudonymise): without "
                      "its key mucosa cannot tell which evaluated patients trained it; give --pseudonymise "
                      "--pseudonym-key with the key it was trained with", MucosaWarning, stacklevel=2)
    if pseudonym is not None:  # the recorded pseudonyms read back as this cohort's patient ids
        known = {pseudonym(p): p for p in {r.patient for r in records}}
        recorded = {side: [known[p] for p in ids if p in known] for side, ids in recorded.items()}
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
        part, val, why = records, [], ("all rows (whether these patients trained the model is unknown)" if unknown
                                       else "all rows (none of these patients were used in training)")
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
