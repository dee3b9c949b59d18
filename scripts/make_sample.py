"""Rebuild the bundled sample, src/transferlab/sample/chest_xray_sample, from the Kermany chest X-rays.

    python scripts/make_sample.py [--source ../shared/data/chest_xray] [--seed 0]

Patients are sampled, not images: each patient lands in exactly one of train/val/test, with at most
--train-per-patient images in train and one image in val and test (independent test images for the
bootstrap CIs). Byte-identical duplicates are never both taken. Files are copied byte for byte (the source
JPEGs are already 224x224, about 6-7 KB each). The same source and seed always give the same sample.
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
from pathlib import Path

import numpy as np

from transferlab.data.discover import discover
from transferlab.rundir import write_csv

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "src" / "transferlab" / "sample"
# images per split and class: about 1:1.5 NORMAL:PNEUMONIA; val has 100 so that official_val "auto" keeps it
COUNTS = {"test": {"NORMAL": 60, "PNEUMONIA": 90}, "val": {"NORMAL": 40, "PNEUMONIA": 60},
          "train": {"NORMAL": 120, "PNEUMONIA": 180}}

LICENCE = """\
# Licence and attribution of the bundled sample (chest_xray_sample/)

The images in `chest_xray_sample/` are a small sample of the pediatric chest X-rays of

> Kermany D, Zhang K, Goldbaum M. Labeled Optical Coherence Tomography (OCT) and Chest X-Ray Images for
> Classification. Mendeley Data, v2, 2018. doi:10.17632/rscbjbr9sj.2

licensed under Creative Commons Attribution 4.0 International (CC BY 4.0,
https://creativecommons.org/licenses/by/4.0/). Please also cite Kermany DS et al., Identifying Medical
Diagnoses and Treatable Diseases by Image-Based Deep Learning, Cell 172(5):1122-1131, 2018.

Changes: the images were resized to 224x224 (aspect ratio not preserved) and saved as JPEG by a third party
(the public GitHub repository waliatushar/ai-pneumonia-detection, commit 362d6d1b). This sample keeps those
files byte for byte (not re-encoded) and their original names and labels; it selects {n} of them
({patients} patients) and assigns them to new train/val/test folders: patient-disjoint, seed {seed}, made by
`scripts/make_sample.py`. `chest_xray_sample.csv` lists every file with its patient, source path and SHA-1.
These folders are not the dataset's official splits.
"""


def sha1(path: Path) -> str:
    return hashlib.sha1(path.read_bytes()).hexdigest()


def make_sample(source: Path, out: Path = SAMPLE, seed: int = 0, train_per_patient: int = 2) -> list[dict]:
    index = discover(source)
    rng = np.random.default_rng(seed)
    rows = []
    for label, name in enumerate(index.classes):
        by_patient: dict[str, list[Path]] = {}
        for s in index.split("train"):   # the official train/ (its 16 val images come from another copy)
            if s.label == label:
                by_patient.setdefault(s.patient, []).append(s.path)
        order = [sorted(by_patient)[i] for i in rng.permutation(len(by_patient))]
        for split in ("test", "val", "train"):
            need, per_patient = COUNTS[split][name], train_per_patient if split == "train" else 1
            while need:
                patient = order.pop(0)
                files = sorted(by_patient[patient])
                picked, seen = [], set()
                for i in rng.permutation(len(files)):
                    digest = sha1(files[i])
                    if digest not in seen and len(picked) < min(per_patient, need):
                        seen.add(digest)
                        picked.append((files[i], digest))
                for path, digest in sorted(picked):
                    rows.append({"split": split, "file": f"{split}/{name}/{path.name}", "label": name,
                                 "patient": patient, "source": path.relative_to(index.root).as_posix(), "sha1": digest})
                need -= len(picked)
    data = out / "chest_xray_sample"
    if data.exists():
        shutil.rmtree(data)
    for row in rows:
        target = data / row["file"]
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(index.root / row["source"], target)
    rows.sort(key=lambda r: r["file"])
    write_csv(out / "chest_xray_sample.csv", rows)
    patients = len({r["patient"] for r in rows})
    (out / "LICENSE.md").write_text(LICENCE.format(n=len(rows), patients=patients, seed=seed))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "chest_xray",
                        help="the Kermany chest_xray folder (train/ and val/)")
    parser.add_argument("--out", type=Path, default=SAMPLE, help="the package's sample folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-per-patient", type=int, default=2)
    args = parser.parse_args()
    rows = make_sample(args.source, args.out, args.seed, args.train_per_patient)
    size = sum((args.out / "chest_xray_sample" / r["file"]).stat().st_size for r in rows)
    for split in ("train", "val", "test"):
        part = [r for r in rows if r["split"] == split]
        counts = {c: sum(r["label"] == c for r in part) for c in COUNTS[split]}
        print(f"{split}: {len(part)} images {counts}, {len({r['patient'] for r in part})} patients")
    print(f"{len(rows)} images, {size / 2**20:.1f} MB in {args.out / 'chest_xray_sample'}")


if __name__ == "__main__":
    main()
