"""The Kermany chest X-rays as three classes, NORMAL / BACTERIA / VIRUS, as a manifest CSV (no image is copied).

    python scripts/make_3class.py [--source ../shared/data/chest_xray] [--out chest_xray_3class.csv]
    transferlab train --data ../shared/data/chest_xray --manifest chest_xray_3class.csv ...

The label of a PNEUMONIA image comes from its file name (person12_bacteria_34.jpeg -> BACTERIA,
person12_virus_56.jpeg -> VIRUS); NORMAL images keep their folder's label. The patient id is the one training
would find (person12, IM-0115, NORMAL2-IM-1234), so the carved splits stay patient-disjoint even for patients
with both bacterial and viral images. The split column keeps the folder each image came from (train/val/test),
except that a val/ lacking a class is listed as train (Kermany's 16 val images have no viral one; training
merges a val/ that small into train anyway and carves a patient-disjoint validation split).
Paths are relative to --source, as `--manifest` expects.
"""
from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

from transferlab.data.discover import discover
from transferlab.rundir import write_csv

REPO = Path(__file__).resolve().parents[1]
KIND = re.compile(r"_(bacteria|virus)_", re.I)


def three_class_rows(source: Path) -> list[dict]:
    index = discover(source)
    if index.classes != ["NORMAL", "PNEUMONIA"]:
        raise SystemExit(f"{source}: expected the classes NORMAL and PNEUMONIA, found {index.classes}")
    rows = []
    for s in index.samples:
        label = index.classes[s.label]
        if label == "PNEUMONIA":
            kind = KIND.search(s.path.name)
            if kind is None:
                raise SystemExit(f"{s.path}: a PNEUMONIA image whose name says neither bacteria nor virus")
            label = kind.group(1).upper()
        rows.append({"path": index.relative(s), "label": label, "patient_id": s.patient, "split": s.source_split})
    labels = {r["label"] for r in rows}
    val = [r for r in rows if r["split"] == "val"]
    if val and {r["label"] for r in val} != labels:
        print(f"val/ lacks {', '.join(sorted(labels - {r['label'] for r in val}))}: its {len(val)} images are "
              f"listed as train")
        for r in val:
            r["split"] = "train"
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO.parent / "shared" / "data" / "chest_xray",
                        help="the Kermany folder with train/{NORMAL,PNEUMONIA} (default: ../shared/data/chest_xray)")
    parser.add_argument("--out", type=Path, default=Path("chest_xray_3class.csv"), help="manifest CSV to write")
    args = parser.parse_args()
    rows = three_class_rows(args.source)
    write_csv(args.out, rows)
    counts = Counter((r["split"], r["label"]) for r in rows)
    print(f"wrote {args.out}: {len(rows)} images, " + ", ".join(
        f"{split} " + "/".join(f"{label} {counts[split, label]}" for label in ("NORMAL", "BACTERIA", "VIRUS"))
        for split in sorted({r["split"] for r in rows})))


if __name__ == "__main__":
    main()
