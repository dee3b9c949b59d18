"""Find the images of a dataset: class folders (optionally under train/val/test) or a CSV manifest."""
from __future__ import annotations

import csv
import hashlib
import io
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path, PurePosixPath

from ..errors import DataError

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm", ".dicom"}
SPLIT_NAMES = ("train", "val", "test")
SPLIT_LOOKALIKES = {"training", "valid", "validation", "testing"}
# Kermany 2018 names: person123_bacteria_456 / person123_virus_7 -> person123, IM-0115-0001 -> IM-0115,
# NORMAL2-IM-1234-0001 -> NORMAL2-IM-1234. Searched in the path relative to the class folder.
DEFAULT_PATIENT_PATTERN = r"(?:^|/)(?P<patient>person\d+|(?:NORMAL\d+-)?IM-\d+)[-_.][^/]*$"


@dataclass(frozen=True)
class Sample:
    path: Path          # absolute (under the resolved root)
    label: int          # index into DatasetIndex.classes
    patient: str        # patient/group id: images of one patient never straddle two carved splits
    source_split: str   # "train" / "val" / "test" as found on disk; "all" without split folders
    patient_known: bool = True   # False: no patient id in the name (or manifest), so `patient` is the file stem


@dataclass
class DatasetIndex:
    root: Path
    classes: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]]   # (relative path, reason) of files left out at discovery

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.source_split == name]

    @property
    def source_splits(self) -> list[str]:
        found = {s.source_split for s in self.samples}
        return [name for name in (*SPLIT_NAMES, "all") if name in found]

    def relative(self, sample: Sample) -> str:
        """The sample's path relative to root, '/'-separated (or absolute if outside root)."""
        path = sample.path
        return path.relative_to(self.root).as_posix() if path.is_relative_to(self.root) else str(path)

    def fingerprint(self) -> str:
        """sha256 over (relative path, size, class, source split) of every sample; stats files, reads none."""
        h = hashlib.sha256()
        for s in self.samples:
            try:
                size = s.path.stat().st_size
            except OSError:
                size = -1
            h.update(f"{self.relative(s)}\t{size}\t{self.classes[s.label]}\t{s.source_split}\n".encode())
        return h.hexdigest()


@lru_cache(maxsize=16)
def _compile(pattern: str) -> re.Pattern:
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise DataError(f"--patient-pattern {pattern!r} is not a valid regular expression ({exc})") from None
    if "patient" not in regex.groupindex:
        raise DataError(f"--patient-pattern {pattern!r} needs a named group (?P<patient>...)")
    return regex


def patient_id(filename: str, pattern: str = DEFAULT_PATIENT_PATTERN) -> str:
    """The `patient` group of `pattern` searched in `filename` ('/'-separated path inside the class
    folder, or just the name); a file that does not match is its own group, named by its stem."""
    match = _compile(pattern).search(filename)
    return match.group("patient") if match and match.group("patient") else PurePosixPath(filename).stem


def has_patient_id(filename: str, pattern: str = DEFAULT_PATIENT_PATTERN) -> bool:
    """Whether `pattern` finds a patient id in `filename`; without one, equal file names in two folders say
    nothing about patients (image(12).jpg in every class folder), so no patient claim is made about it."""
    match = _compile(pattern).search(filename)
    return bool(match and match.group("patient"))


def discover(root, *, patient_pattern: str = DEFAULT_PATIENT_PATTERN, manifest: str | Path | None = None,
             require_train: bool = True, min_classes: int = 2) -> DatasetIndex:
    """Index ROOT/{train,val,test}/CLASS/*, ROOT/CLASS/* or a manifest CSV (path,label[,patient_id][,split]).
    For a set that is only scored (an external test set), `require_train=False` also accepts split folders
    without train/ (e.g. ROOT/test/CLASS/*) and `min_classes=1` a single class."""
    root = _root(root)
    _compile(patient_pattern)
    if manifest is not None:
        return _from_manifest(root, Path(manifest).expanduser(), patient_pattern, min_classes, require_train)

    skipped: list[tuple[str, str]] = []
    entries = _entries(root)
    lookalike = [e.name for e in entries if e.is_dir() and e.name.lower() in SPLIT_LOOKALIKES]
    if lookalike:
        raise DataError(f"{root / lookalike[0]}: looks like a split folder; rename it to train, val or test")
    folders = {e.name.lower(): Path(e.path) for e in entries if e.is_dir() and e.name.lower() in SPLIT_NAMES}
    if folders and "train" not in folders and require_train:
        raise DataError(f"{root}: has {', '.join(f.name + '/' for f in folders.values())} but no train/ folder")
    skipped += [(e.name + "/" * e.is_dir(), "outside train/, val/ and test/")
                for e in entries if folders and Path(e.path) not in folders.values()]
    folders = folders or {"all": root}
    found = {name: _scan_classes(root, folder, skipped) for name, folder in folders.items()}

    reference = sorted(found["train" if "train" in found else "all" if "all" in found else next(iter(found))])
    for name, classes in found.items():
        if sorted(classes) != reference:
            missing, extra = sorted(set(reference) - set(classes)), sorted(set(classes) - set(reference))
            diff = "; ".join(f"{what} {', '.join(c)}" for what, c in (("lacks", missing), ("has extra", extra)) if c)
            raise DataError(f"{root}: class folders differ between splits: {name}/ {diff} (compared with train/)")
    _check_classes(root, reference, min_classes=min_classes)

    samples = []
    for split, classes in found.items():
        for label, name in enumerate(reference):
            class_dir = folders[split] / name
            for path in classes[name]:
                rel = path.relative_to(class_dir).as_posix()
                samples.append(Sample(path, label, patient_id(rel, patient_pattern), split,
                                      has_patient_id(rel, patient_pattern)))
    samples.sort(key=lambda s: s.path)
    return DatasetIndex(root, reference, samples, skipped)


def discover_unlabelled(root) -> DatasetIndex:
    """Every image under ROOT (recursively), without labels (label -1, no classes): a set to predict and to
    measure shift on."""
    root = _root(root)
    skipped: list[tuple[str, str]] = []
    samples = [Sample(path, -1, path.stem, "all", False) for path in _images_in(root, root, skipped)]
    if not samples:
        raise DataError(f"{root}: no images found")
    return DatasetIndex(root, [], samples, skipped)


def has_class_folders(root) -> bool:
    """Whether ROOT holds (non-hidden) sub-folders, i.e. is laid out as class or split folders."""
    return any(e.is_dir() and not _hidden(e.name) for e in _entries(_root(root)))


def _root(root) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (--data must be a folder of class folders)")
    return root.resolve()


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return sorted(it, key=lambda e: e.name)


def _hidden(name: str) -> bool:
    return name.startswith(".") or name == "__MACOSX"


def _scan_classes(root: Path, folder: Path, skipped: list) -> dict[str, list[Path]]:
    """Class folder name -> its image files (recursive); anything else goes to `skipped`."""
    classes = {}
    for entry in _entries(folder):
        rel = Path(entry.path).relative_to(root).as_posix()
        if _hidden(entry.name):
            skipped.append((rel + "/" * entry.is_dir(), "hidden"))
        elif entry.is_dir():
            classes[entry.name] = _images_in(root, Path(entry.path), skipped)
        else:
            skipped.append((rel, "not inside a class folder"))
    if not classes:
        raise DataError(f"{folder}: no class folders found (expected {folder}/<class name>/<images>)")
    empty = [name for name, files in classes.items() if not files]
    if empty:
        raise DataError(f"{folder}: class folder{'s' * (len(empty) > 1)} without images: {', '.join(empty)}")
    return classes


def _images_in(root: Path, class_dir: Path, skipped: list) -> list[Path]:
    images = []
    for dirpath, dirnames, filenames in os.walk(class_dir):
        here = Path(dirpath)
        for name in [d for d in dirnames if _hidden(d)]:
            dirnames.remove(name)
            skipped.append(((here / name).relative_to(root).as_posix() + "/", "hidden"))
        dirnames.sort()
        for name in sorted(filenames):
            path = here / name
            suffix = path.suffix.lower()
            if _hidden(name):
                skipped.append((path.relative_to(root).as_posix(), "hidden"))
            elif suffix in IMAGE_EXTENSIONS or (not suffix and name != "DICOMDIR" and _has_dicom_magic(path)):
                images.append(path)
            else:
                skipped.append((path.relative_to(root).as_posix(), f"not an image file ({suffix or 'no extension'})"))
    return images


def _has_dicom_magic(path: Path) -> bool:
    # DICOM exports often have no extension; the standard puts "DICM" after a 128-byte preamble.
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def _check_classes(root: Path, classes: list[str], where: Path | None = None, min_classes: int = 2) -> None:
    if not classes:
        raise DataError(f"{where or root}: no images found")
    if len(classes) < min_classes:
        only = root / classes[0]
        hint = f"; did you mean --data {only}?" if any((only / s).is_dir() for s in SPLIT_NAMES) else ""
        raise DataError(f"{where or root}: only one class ({classes[0]}); need at least two{hint}")


def _from_manifest(root: Path, manifest: Path, pattern: str, min_classes: int = 2,
                   require_train: bool = True) -> DatasetIndex:
    path = manifest if manifest.is_file() or manifest.is_absolute() else root / manifest
    if not path.is_file():
        raise DataError(f"{manifest}: manifest file not found")
    try:
        rows = list(csv.reader(io.StringIO(path.read_text(encoding="utf-8-sig"))))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the manifest ({exc})") from None
    header = [h.strip().lower() for h in rows[0]] if rows else []
    if "path" not in header or "label" not in header:
        raise DataError(f"{path}: the first row must be a header naming the columns path,label[,patient_id][,split]")
    col = {name: header.index(name) for name in ("path", "label", "patient_id", "split") if name in header}

    entries, seen, missing = [], {}, []
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        where = f"{path}, row {line}"
        if len(row) != len(header):
            raise DataError(f"{where}: expected {len(header)} columns, found {len(row)}")
        value = {name: row[i].strip() for name, i in col.items()}
        raw = value["path"]
        rel = PurePosixPath(raw.replace("\\", "/"))
        if not raw or not value["label"]:
            raise DataError(f"{where}: path and label must not be empty")
        if rel.is_absolute() or re.match(r"[A-Za-z]:", raw):
            raise DataError(f"{where}: {raw!r} is absolute; manifest paths must be relative to {root}")
        file = Path(os.path.normpath(root / rel))
        if not file.is_relative_to(root):
            raise DataError(f"{where}: {raw!r} points outside {root}")
        split = value["split"].lower() if "split" in col else "all"
        if "split" in col and split not in SPLIT_NAMES:
            raise DataError(f"{where}: split {value['split']!r} must be one of {', '.join(SPLIT_NAMES)}")
        if file in seen:
            raise DataError(f"{where}: {raw!r} is listed twice (also row {seen[file]})")
        seen[file] = line
        if not file.is_file():
            missing.append(raw)
        rel_posix = file.relative_to(root).as_posix()
        entries.append((file, value["label"], value.get("patient_id") or patient_id(rel_posix, pattern), split,
                        bool(value.get("patient_id")) or has_patient_id(rel_posix, pattern)))
    if missing:
        raise DataError(f"{path}: {len(missing)} of {len(entries)} listed files do not exist under {root}, "
                        f"e.g. {', '.join(missing[:3])}")

    by_split: dict[str, set[str]] = {}
    for _, label, _, split, _ in entries:
        by_split.setdefault(split, set()).add(label)
    if by_split and "all" not in by_split and "train" not in by_split and require_train:
        raise DataError(f"{path}: the split column names no train rows")
    classes = sorted(set().union(*by_split.values())) if by_split else []
    for split, labels in by_split.items():
        if len(by_split) > 1 and labels != set(classes):
            raise DataError(f"{path}: split {split} lacks class{'es' * (len(set(classes) - labels) > 1)} "
                            f"{', '.join(sorted(set(classes) - labels))} that other splits have")
    _check_classes(root, classes, path, min_classes)
    samples = sorted((Sample(f, classes.index(label), patient, split, known) for f, label, patient, split, known in entries),
                     key=lambda s: s.path)
    return DatasetIndex(root, classes, samples, [])
