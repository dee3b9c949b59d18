"""`check-data`: read every image of a dataset once and report what training would meet."""
from __future__ import annotations

import hashlib
import itertools
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..console import progress_bar
from ..errors import DataError
from .. import formatting
from .discover import DEFAULT_PATIENT_PATTERN, discover
from .images import ImageError, decode_image, read_bytes
from .split import leakage_warning, patient_overlap, shared_with_train

SMALL_VAL = 100   # make_splits' default min_official_val


@dataclass
class DataReport:
    root: str
    fingerprint: str
    classes: list[str]
    counts: dict[str, dict[str, int]]          # source split -> class -> images
    patients: dict[str, int]                   # source split -> patients
    skipped: list[tuple[str, str]]             # (relative path, reason) left out at discovery
    bad: list[tuple[str, str]]                 # (relative path, reason) of every unreadable image
    sizes: dict[str, dict[str, float]]         # "width"/"height" -> min, median, max (pixels, as stored)
    formats: dict[str, int]                    # "JPEG RGB", "PNG I;16", "DICOM MONOCHROME1 12-bit" -> images
    duplicates: list[list[str]]                # groups of byte-identical files (relative paths)
    duplicates_across_splits: int              # groups whose files sit in more than one source split
    duplicates_across_classes: int             # groups whose files carry more than one class
    patient_overlap: dict[str, list[str] | None]   # "train/val" -> patients in both source splits (None: no ids)
    shared_with_train: dict[str, dict]         # "val"/"test" folder -> patients, images, identical it shares with train
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    def exit_code(self) -> int:
        """`transferlab check-data`'s exit code: 0 clean, 1 unreadable images, 3 possible leakage (2: errors)."""
        if self.bad:
            return 1
        if self.duplicates_across_splits or self.duplicates_across_classes or any(self.patient_overlap.values()):
            return 3
        return 0

    def to_text(self) -> str:
        width = max(len(c) for c in self.classes) + 2
        lines = [f"data: {self.root}  (fingerprint {self.fingerprint[:12]})", "",
                 f"{'split':<8}" + "".join(f"{c:>{width}}" for c in self.classes) + f"{'total':>8}{'patients':>10}"]
        for split, counts in self.counts.items():
            lines.append(f"{split:<8}" + "".join(f"{counts[c]:>{width}}" for c in self.classes)
                         + f"{sum(counts.values()):>8}{formatting.fmt(self.patients[split], ''):>10}")
        lines.append("")
        if self.sizes:
            lines.append("image size (min/median/max): " + ", ".join(
                f"{k} {v['min']:g}/{v['median']:g}/{v['max']:g}" for k, v in self.sizes.items()))
        lines.append("formats: " + (", ".join(f"{k} ({v})" for k, v in self.formats.items()) or "none readable"))
        lines.append(f"skipped at discovery: {len(self.skipped)}")
        lines += [f"  {path}: {reason}" for path, reason in self.skipped[:10]]
        if len(self.skipped) > 10:
            lines.append(f"  ... and {len(self.skipped) - 10} more")
        lines.append(f"unreadable images: {len(self.bad)}")
        lines += [f"  {path}: {reason}" for path, reason in self.bad]
        lines.append(f"duplicate groups (identical bytes): {len(self.duplicates)}, "
                     f"{self.duplicates_across_splits} across splits, {self.duplicates_across_classes} across classes")
        lines += [f"  {' = '.join(group)}" for group in self.duplicates[:5]]
        if len(self.duplicates) > 5:
            lines.append(f"  ... and {len(self.duplicates) - 5} more groups")
        for pair, patients in self.patient_overlap.items():
            if patients is None:
                lines.append(f"patients in both {pair}: could not be checked (no patient id in the file names; "
                             f"--patient-pattern or a manifest's patient_id column gives one)")
                continue
            lines.append(f"patients in both {pair}: {len(patients)}"
                         + (f" (e.g. {', '.join(patients[:5])})" if patients else ""))
        if self.notes:
            lines += ["", "notes:"] + [f"  - {note}" for note in self.notes]
        return "\n".join(lines)


def check_data(root, *, manifest=None, patient_pattern: str = DEFAULT_PATIENT_PATTERN,
               progress: bool = True, threads: int | None = None) -> DataReport:
    """Discover the dataset, then decode every image (in `threads` threads, default one per CPU up to 8) to find
    unreadable files, sizes and duplicates."""
    if threads is not None and threads < 1:
        raise DataError(f"--threads must be at least 1, not {threads}")
    index = discover(root, patient_pattern=patient_pattern, manifest=manifest)
    with ThreadPoolExecutor(threads or min(8, os.cpu_count() or 1)) as pool:
        results = list(progress_bar(pool.map(_inspect, [s.path for s in index.samples]), progress=progress,
                                    total=len(index.samples), desc="check"))

    bad, shapes, formats, by_hash, digests = [], [], Counter(), defaultdict(list), {}
    for sample, (digest, shape, fmt, reason) in zip(index.samples, results):
        digests[sample.path] = digest
        if digest:
            by_hash[digest].append(sample)
        if reason:
            bad.append((index.relative(sample), reason))
        else:
            shapes.append(shape)
            formats[fmt] += 1
    groups = [g for g in by_hash.values() if len(g) > 1]
    splits = index.source_splits
    counts = {sp: {c: 0 for c in index.classes} for sp in splits}
    for s in index.samples:
        counts[s.source_split][index.classes[s.label]] += 1
    sizes = {}
    if shapes:
        hw = np.array(shapes)
        sizes = {name: {"min": int(col.min()), "median": float(np.median(col)), "max": int(col.max())}
                 for name, col in (("width", hw[:, 1]), ("height", hw[:, 0]))}
    report = DataReport(
        root=str(index.root), fingerprint=index.fingerprint(), classes=index.classes, counts=counts,
        patients={sp: len({s.patient for s in index.split(sp) if s.patient_known}) or None for sp in splits},
        skipped=index.skipped, bad=bad, sizes=sizes, formats=dict(formats.most_common()),
        duplicates=[[index.relative(s) for s in g] for g in groups],
        duplicates_across_splits=sum(len({s.source_split for s in g}) > 1 for g in groups),
        duplicates_across_classes=sum(len({s.label for s in g}) > 1 for g in groups),
        patient_overlap={f"{a}/{b}": None if (found := patient_overlap(index.split(a), index.split(b))) is None
                         else sorted(found) for a, b in itertools.combinations(splits, 2)},
        shared_with_train=_shared(index, digests.get))
    report.notes = _notes(report)
    return report


def _shared(index, digest) -> dict[str, dict]:
    """val/ against train/, test/ against train/ + val/ (as split_leakage does for the splits training uses)."""
    train, val, test = index.split("train"), index.split("val"), index.split("test")
    out = {}
    if train and val:
        out["val"] = shared_with_train(train, val, digest)
    if train and test:
        out["test"] = shared_with_train(train + val, test, digest, "train/val" if val else "train")
    return out


def _inspect(path: Path) -> tuple[str | None, tuple[int, int] | None, str | None, str | None]:
    """(sha1 of the bytes, (height, width), format, reason it is unusable)."""
    digest = None
    try:
        data = read_bytes(path)
        digest = hashlib.sha1(data).hexdigest()
        arr, fmt = decode_image(data, path)
        return digest, arr.shape[:2], fmt, None
    except ImageError as exc:
        return digest, None, None, exc.reason


def _notes(r: DataReport) -> list[str]:
    notes = []
    if r.bad:
        notes.append(f"{len(r.bad)} unreadable images: fix or remove them, or train with --skip-bad")
    n_val = sum(r.counts.get("val", {}).values())
    if 0 < n_val < SMALL_VAL:
        notes.append(f"val/ has only {n_val} images: training merges it into the training pool and carves a "
                     f"patient-disjoint validation split (--official-val auto)")
    if "test" not in r.counts:
        notes.append("no test/ folder: use --test-fraction to carve a patient-disjoint test split")
    if r.duplicates_across_splits or r.duplicates_across_classes:
        notes.append(f"identical files across splits ({r.duplicates_across_splits} groups) or classes "
                     f"({r.duplicates_across_classes} groups): check for leakage or label errors")
    for split, shared in r.shared_with_train.items():   # one line each, the same as `train` prints
        if split == "val" and n_val < SMALL_VAL:
            continue   # merged into train by default, then a patient-disjoint validation split is carved
        line = leakage_warning(split, shared, f"the official {split}/ folder, used as given")
        if line:
            notes.append(f"warning: {line}")
    totals = {c: sum(counts[c] for counts in r.counts.values()) for c in r.classes}
    if max(totals.values()) > 2 * max(1, min(totals.values())):
        notes.append("classes are imbalanced (" + ", ".join(f"{c} {n}" for c, n in totals.items())
                     + "): training weights the loss by class (--balance weights)")
    return notes
