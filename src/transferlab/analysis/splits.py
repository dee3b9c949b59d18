"""The data behind the runs: class balance, leakage (files and patients in two splits) and image-statistics
shift between the run's own splits."""
from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..rundir import RunDir, read_csv
from .domain import (DOMAIN_AUC_FLAG, DOMAIN_P_FLAG, IMAGE_STATISTICS, domain_classifier, file_statistics,
                     statistics_matrix, statistics_shift)
from .runs import SPLITS, Run


def splits_table(run: Run) -> list[dict]:
    """splits.csv rows: split, file (relative to the data root), label, patient."""
    return read_csv(RunDir(run.path).splits)


def same_splits(runs: list[Run]) -> dict:
    """Whether every run used the same images in every split (what makes paired tests valid)."""
    digests = {r.name: hashlib.sha256(RunDir(r.path).splits.read_bytes()).hexdigest() for r in runs}
    reference = next(iter(digests.values()))
    different = [name for name, d in digests.items() if d != reference]
    test_sets = {r.name: tuple(sorted(r.predictions["test"].files)) for r in runs if "test" in r.predictions}
    n_test = len(next(iter(test_sets.values()))) if test_sets else 0
    return {"runs": len(runs), "different": different, "same_test_images": len(set(test_sets.values())) <= 1,
            "n_test": n_test}


def leakage(root: str | Path, rows: list[dict]) -> dict:
    """Identical image bytes in two splits (sha1 of every file) and patients present in two splits."""
    root = Path(root)
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(lambda r: _sha1(root / r["file"]), rows))
    by_hash = defaultdict(list)
    for row, digest in zip(rows, digests):
        if digest:
            by_hash[digest].append(row)
    groups = [g for g in by_hash.values() if len(g) > 1]
    across = [g for g in groups if len({r["split"] for r in g}) > 1]
    # splits.csv leaves the patient empty where the file name carries no id: no claim is made about those
    patients = {s: {r["patient"] for r in rows if r["split"] == s and r.get("patient")} for s in SPLITS}
    present = {s for s in SPLITS if any(r["split"] == s for r in rows)}
    overlap = {f"{a}/{b}": sorted(patients[a] & patients[b]) if patients[a] and patients[b] else None
               for a, b in itertools.combinations(SPLITS, 2) if a in present and b in present}
    return {"files_hashed": sum(d is not None for d in digests), "duplicate_groups": len(groups),
            "duplicate_groups_across_splits": len(across),
            "examples_across_splits": [[f"{r['file']} ({r['split']})" for r in g] for g in across[:5]],
            "patients": {s: len(p) for s, p in patients.items()},
            "patient_overlap": {k: None if v is None else len(v) for k, v in overlap.items()},
            "patient_overlap_examples": {k: v[:5] for k, v in overlap.items() if v}}


def _sha1(path: Path) -> str | None:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return None


def image_statistics(root: str | Path, rows: list[dict], *, seed: int = 0) -> dict:
    """domain.file_statistics of each split's images (at most domain.STATISTICS_LIMIT a split, sampled)."""
    out = {}
    for split in SPLITS:
        stats = file_statistics([Path(root) / r["file"] for r in rows if r["split"] == split], seed=seed)
        if len(stats["mean"]):
            out[split] = stats
    return out


def distribution_shift(stats: dict, seed: int = 0) -> dict:
    """The one domain-shift test (analysis.domain) between the run's own splits: KS tests of each image statistic
    for each pair of splits, and a domain classifier on those statistics, training vs test images."""
    out = {"summary": {s: {k: {"mean": float(v[k].mean()), "sd": float(v[k].std()), "n": len(v[k])}
                           for k in IMAGE_STATISTICS} for s, v in stats.items()},
           "ks": {f"{a}/{b}": statistics_shift(stats[a], stats[b])
                  for a, b in (("train", "val"), ("train", "test"), ("val", "test")) if a in stats and b in stats}}
    if "train" in stats and "test" in stats:
        out["domain"] = domain_classifier(statistics_matrix(stats["train"]), statistics_matrix(stats["test"]),
                                          seed=seed)
    return out


def data_findings(balance: dict, leak: dict, shift: dict, same: dict, positive: str | None) -> list[str]:
    out = []
    if positive:
        shares = ", ".join(f"{s} {b['positive_share']:.1%} of {b['n']}" for s, b in balance.items())
        out.append(f"{positive} share per split: {shares}.")
    else:
        out.append("Class shares per split: " + "; ".join(
            f"{s} ({b['n']}): " + ", ".join(f"{c} {v:.1%}" for c, v in b["shares"].items()) for s, b in balance.items())
            + ".")
    if same["different"] or not same["same_test_images"]:
        out.append(f"Runs did NOT all use the same splits ({', '.join(same['different'][:3])} differ): paired "
                   f"comparisons between them are not valid.")
    else:
        out.append(f"All {same['runs']} runs used identical splits (the same {same['n_test']} test images), so paired "
                   f"McNemar tests between runs are valid.")
    if leak["duplicate_groups_across_splits"]:
        ex = "; ".join(" = ".join(g) for g in leak["examples_across_splits"][:2])
        out.append(f"LEAKAGE: {leak['duplicate_groups_across_splits']} groups of byte-identical files span two "
                   f"splits (of {leak['files_hashed']} files hashed), e.g. {ex}.")
    else:
        out.append(f"No byte-identical file appears in two splits ({leak['files_hashed']} files hashed with SHA-1; "
                   f"{leak['duplicate_groups']} duplicate groups within a split).")
    overlapping = {k: v for k, v in leak["patient_overlap"].items() if v}
    unchecked = [k for k, v in leak["patient_overlap"].items() if v is None]
    patients = ", ".join(f"{s} {n}" for s, n in leak["patients"].items() if n)
    if unchecked and not overlapping:
        out.append(f"Whether a patient appears in two splits could not be checked ({', '.join(unchecked)}): the file "
                   f"names carry no patient id (--patient-pattern, or a manifest's patient_id column, gives one).")
    elif overlapping:
        out.append("LEAKAGE: patients in two splits: " + ", ".join(f"{k} {v}" for k, v in overlapping.items())
                   + f" (patients per split: {patients}).")
    else:
        out.append(f"No patient appears in two splits (patients per split: {patients}; patient ids from the file names).")
    for pair, tests in shift.get("ks", {}).items():
        if "test" not in pair:
            continue
        a, b = pair.split("/")
        parts = [f"{IMAGE_STATISTICS[k]} {t['source_mean']:.3g} vs {t['target_mean']:.3g} (KS D={t['ks']:.3f}, "
                 f"p={t['p_value']:.2g})" for k, t in tests.items()]
        shifted = [IMAGE_STATISTICS[k] for k, t in tests.items() if t["p_value"] < DOMAIN_P_FLAG]
        out.append(f"{a.capitalize()} vs {b}: " + "; ".join(parts) + ". "
                   + (f"Distributions differ (p < {DOMAIN_P_FLAG:g}) in {', '.join(shifted)}." if shifted
                      else f"No statistic differs at p < {DOMAIN_P_FLAG:g}."))
    domain = shift.get("domain") or {}
    if domain.get("auc") is not None:
        out.append(f"A logistic regression on these four image statistics tells test images from training images "
                   f"with cross-validated AUC {domain['auc']:.3f} (0.5 = indistinguishable; permutation p = "
                   f"{domain['p_value']:.2g}): "
                   + (f"the test images differ from the training images (AUC >= {DOMAIN_AUC_FLAG} and p < "
                      f"{DOMAIN_P_FLAG:g}, the rule external sets are flagged by)." if domain["distinguishable"]
                      else "not distinguishable by these statistics."))
    return out
