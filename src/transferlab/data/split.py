"""Train/val/test splits that are stratified by class and disjoint by patient."""
from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from ..errors import DataError
from .discover import DatasetIndex, Sample

OFFICIAL_VAL = ("auto", "keep", "merge", "drop")


@dataclass
class Splits:
    train: list[Sample]
    val: list[Sample]
    test: list[Sample]
    method: dict   # JSON-able: how each split was made, counts per split and class, patients per split


def patient_overlap(a: list[Sample], b: list[Sample]) -> set[str] | None:
    """Patients found in both lists; None when either side has no patient id to compare (could not check)."""
    known_a, known_b = {s.patient for s in a if s.patient_known}, {s.patient for s in b if s.patient_known}
    if not known_a or not known_b:
        return None
    return known_a & known_b


def _count(found: set | None) -> int | None:
    return None if found is None else len(found)


def file_digest(path: Path) -> str | None:
    """sha1 of a file's bytes (None when it cannot be read)."""
    try:
        return hashlib.sha1(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def shared_with_train(train: list[Sample], other: list[Sample], digest=file_digest, against: str = "train") -> dict:
    """What `other` (a val or test split) shares with `train` (the images a model learns or is chosen from, named
    by `against`): patients (ids found in both), images (of `other`, from those patients) and identical (images
    of `other` whose bytes equal one of `train`). Only files whose size matches a file on the other side are
    hashed; `digest(path)` may give known hashes (check-data)."""
    patients = patient_overlap(train, other)
    unchecked = patients is None
    patients = set() if unchecked else patients

    def size(sample: Sample) -> int:
        try:
            return sample.path.stat().st_size
        except OSError:
            return -1
    train_sizes, other_sizes = {s.path: size(s) for s in train}, {s.path: size(s) for s in other}
    common = (set(train_sizes.values()) & set(other_sizes.values())) - {-1, 0}
    train_hashes = {digest(p) for p, n in train_sizes.items() if n in common} - {None}
    identical = sum(n in common and digest(p) in train_hashes for p, n in other_sizes.items())
    return {"against": against, "patients": None if unchecked else len(patients),
            "images": sum(s.patient_known and s.patient in patients for s in other), "identical": identical,
            "of": len(other)}


def leakage_warning(split: str, shared: dict, how: str) -> str | None:
    """One line about a split that shares patients or identical images with train (None when it shares none);
    `how` says how the split was made, e.g. "the official test/ folder, used as given"."""
    if shared["patients"] is None and not shared["identical"]:
        return (f"{split} ({how}): whether it shares patients with {shared['against']} could not be checked: the file "
                f"names carry no patient id (give --patient-pattern, or a manifest with a patient_id column)")
    if not shared["patients"] and not shared["identical"]:
        return None
    parts = []
    if shared["patients"]:
        parts.append(f"{shared['patients']} patient{'s' * (shared['patients'] != 1)} with {shared['against']} "
                     f"({shared['images']} of its {shared['of']} images)")
    if shared["identical"]:
        parts.append(f"{shared['identical']} image{'s' * (shared['identical'] != 1)} byte-identical to "
                     f"{shared['against']} images")
    return f"{split} ({how}) shares {' and '.join(parts)}: its scores may be optimistic"


def split_leakage(splits: Splits) -> dict[str, dict]:
    """What val shares with train, and test with train + val (the images the model was fitted and chosen on).
    Carved splits share no patient by construction, but may still hold byte-identical copies."""
    out = {}
    if splits.val:
        out["val"] = shared_with_train(splits.train, splits.val)
    if splits.test:
        out["test"] = shared_with_train(splits.train + splits.val, splits.test, against="train/val")
    return out


def how_made(splits: Splits, name: str) -> str:
    """'the official val/ folder, used as given' or 'carved from train'."""
    official = splits.method.get(name, "").startswith("official")
    return f"the official {name}/ folder, used as given" if official else "carved from the training pool"


def make_splits(index: DatasetIndex, *, val_fraction: float = 0.15, test_fraction: float = 0.0, seed: int = 0,
                official_val: str = "auto", min_official_val: int = 100) -> Splits:
    """Official test/ if present, else carve test (test_fraction > 0) from the pool first; then val.

    The pool is train/ (or all images without split folders). official_val decides what happens to a val/
    folder: "auto" keeps it when it has at least min_official_val images and merges it into the pool
    otherwise (Kermany's val/ has 16 images: too few to choose a threshold or stop early on)."""
    if official_val not in OFFICIAL_VAL:
        raise DataError(f"--official-val must be one of {', '.join(OFFICIAL_VAL)}, not {official_val!r}")
    if not 0 <= test_fraction < 1:
        raise DataError(f"--test-fraction must be in [0, 1), not {test_fraction}")
    pool, official, test = index.split("train") + index.split("all"), index.split("val"), index.split("test")
    source = "train" if index.split("train") else "all images"
    method: dict = {"seed": seed}

    n = len(official)
    keep = bool(official) and (official_val == "keep" or official_val == "auto" and n >= min_official_val)
    if not official:
        method["official_val"] = "none"
    elif keep:
        method["official_val"] = f"kept as the validation split ({n} images" + (
            f" >= {min_official_val})" if official_val == "auto" else ", --official-val keep)")
    elif official_val == "drop":
        method["official_val"] = f"dropped ({n} images unused, --official-val drop)"
    else:
        pool = sorted(pool + official, key=lambda s: s.path)
        source = "train + official val"
        method["official_val"] = f"merged into the training pool ({n} images" + (
            f" < {min_official_val})" if official_val == "auto" else ", --official-val merge)")

    if test:
        method["test"] = "official test/ folder"
    elif test_fraction > 0:
        pool, test, how = _carve(pool, test_fraction, seed, "--test-fraction", "test", index.classes)
        method["test"] = f"carved from {source}: {how}"
    else:
        method["test"] = "none"
    if keep:
        val = official
        method["val"] = "official val/ folder"
    else:
        pool, val, how = _carve(pool, val_fraction, seed, "--val-fraction", "val", index.classes)
        method["val"] = f"carved from {source}" + (" (after test)" if "carved" in method["test"] else "") + f": {how}"

    splits = {"train": pool, "val": val, "test": test}
    method["counts"] = {name: {c: sum(s.label == i for s in ss) for i, c in enumerate(index.classes)}
                        for name, ss in splits.items()}
    method["patients"] = {name: len({s.patient for s in ss}) for name, ss in splits.items()}
    method["patient_overlap"] = {f"{a}/{b}": _count(patient_overlap(splits[a], splits[b]))
                                 for a, b in (("train", "val"), ("train", "test"), ("val", "test"))}
    return Splits(pool, val, test, method)


def _carve(samples: list[Sample], fraction: float, seed: int, option: str, name: str,
           classes: list[str]) -> tuple[list[Sample], list[Sample], str]:
    """Split off one StratifiedGroupKFold fold (about `fraction` of the images): (rest, carved, description)."""
    folds = round(1 / fraction) if fraction > 0 else 0
    if not 0 < fraction < 1 or folds < 2:
        raise DataError(f"{option} must be above 0 and at most 0.66, not {fraction}")
    labels = np.array([s.label for s in samples])
    groups = np.array([s.patient for s in samples])
    none = " (or --test-fraction 0: no test split)" if name == "test" else ""
    n_groups = len(set(groups.tolist()))
    if n_groups < folds:
        raise DataError(f"{option} {fraction}: cannot carve a {name} split from {len(samples)} images of "
                        f"{n_groups} patients (needs at least {folds}); use a larger {option}{none} or add images")
    present = set(labels.tolist())
    if all(np.sum(labels == c) < folds for c in present):   # StratifiedGroupKFold's own limit
        raise DataError(f"{option} {fraction}: cannot carve a {name} split (1 of {folds} folds) from {len(samples)} "
                        f"images with fewer than {folds} per class; use a larger {option}{none} or add images")
    with warnings.catch_warnings():
        # sklearn warns when a class has fewer patients than folds; the check below decides instead.
        warnings.simplefilter("ignore", UserWarning)
        for rest, carved in StratifiedGroupKFold(folds, shuffle=True, random_state=seed).split(labels, labels, groups):
            # the first fold holding every class on both sides (usually the very first fold)
            if set(labels[rest].tolist()) == present and set(labels[carved].tolist()) == present:
                how = (f"stratified, patient-disjoint, {len(carved) / len(samples):.1%} "
                       f"(1 of {folds} folds for {option} {fraction}), seed {seed}")
                return [samples[i] for i in rest], [samples[i] for i in carved], how
    rarest = min(present, key=lambda c: len(set(groups[labels == c].tolist())))
    n_rare = len(set(groups[labels == rarest].tolist()))
    raise DataError(f"{option} {fraction}: class {classes[rarest]} has only {n_rare} patient(s), too few to put "
                    f"some in both the {name} split and the rest; add images of it or provide a {name}/ folder{none}")
