"""Shift harness: how good are transferlab's label-free shift estimates and adaptations, on shifts made on purpose?

Without the hidden external test sets, we make shifted sets from data we have, with a known truth:
    1. train a run (default: EfficientNet-Lite0, fixed features) with a carved, patient-disjoint test split;
    2. from that test split build target sets: the same images resampled to other prevalences (pure label
       shift), and degraded copies (gamma, contrast, blur, noise, JPEG quality, resolution, cropping:
       covariate shift) at the original prevalence;
    3. score every set through the public API, `evaluate(run, data=SET, adapt="all")`, exactly as a user
       would, and put each estimate beside the truth;
    4. the same for a 3-class version of the chest X-rays (NORMAL / BACTERIA / VIRUS, from the file names).

    python benchmarks/shift.py --data ../shared/data/chest_xray --work /tmp/shift-harness \
        --out benchmarks/results/shift.json        # prints the Markdown tables of BENCHMARKS.md

Images of the made sets go to --work (hundreds of MB); only the JSON with every number goes to --out.
"""
from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from transferlab import train
from transferlab.analysis.external import evaluate
from transferlab.rundir import RunDir, read_csv, write_csv

PREVALENCES = (0.3, 0.5, 0.9)


def gamma(img, g):
    return 255 * (img / 255) ** g


def contrast(img, c):
    return img.mean() + c * (img - img.mean())


def blur(img, sigma):
    return np.asarray(Image.fromarray(img.astype(np.uint8)).filter(ImageFilter.GaussianBlur(sigma)), dtype=float)


def noise(img, sd, rng):
    return img + rng.normal(0, sd, img.shape)


def jpeg(img, quality):
    buf = io.BytesIO()
    Image.fromarray(img.astype(np.uint8)).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(buf), dtype=float)


def resolution(img, size):
    small = Image.fromarray(img.astype(np.uint8)).resize((size, size), Image.BILINEAR)
    return np.asarray(small.resize(img.shape[::-1], Image.BILINEAR), dtype=float)


def crop(img, keep):
    h, w = img.shape
    dh, dw = int(h * (1 - keep) / 2), int(w * (1 - keep) / 2)
    part = Image.fromarray(img[dh:h - dh, dw:w - dw].astype(np.uint8))
    return np.asarray(part.resize((w, h), Image.BILINEAR), dtype=float)


COVARIATE = {
    "gamma 0.6": lambda x, rng: gamma(x, 0.6), "gamma 1.6": lambda x, rng: gamma(x, 1.6),
    "contrast 0.6": lambda x, rng: contrast(x, 0.6), "blur sigma 1.5": lambda x, rng: blur(x, 1.5),
    "blur sigma 3": lambda x, rng: blur(x, 3), "noise sd 15": lambda x, rng: noise(x, 15, rng),
    "JPEG quality 10": lambda x, rng: jpeg(x, 10), "resolution 64 px": lambda x, rng: resolution(x, 64),
    "crop 75%": lambda x, rng: crop(x, 0.75),
}


def test_split(run: RunDir) -> list[tuple[Path, str]]:
    root = Path(run.read_config()["data"]["root"])
    return [(root / r["file"], r["label"]) for r in read_csv(run.splits) if r["split"] == "test"]


def write_set(folder: Path, items: list[tuple[Path, str]], transform=None, seed: int = 0) -> Path:
    """ROOT/CLASS/* of the items: links to the originals, or degraded PNG copies."""
    if folder.exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    rng = np.random.default_rng(seed)
    for i, (path, label) in enumerate(items):
        (tmp / label).mkdir(parents=True, exist_ok=True)
        if transform is None:
            (tmp / label / f"{i:05d}_{path.name}").symlink_to(path)
        else:
            img = np.asarray(Image.open(path).convert("L"), dtype=float)
            out = np.clip(transform(img, rng), 0, 255).astype(np.uint8)
            Image.fromarray(out).save(tmp / label / f"{i:05d}_{path.stem}.png")
    tmp.rename(folder)
    return folder


def resample(items, weights: dict[str, float], seed: int):
    """The largest subset (without replacement) whose class shares are `weights`."""
    rng = np.random.default_rng(seed)
    by = {c: [it for it in items if it[1] == c] for c in weights}
    n = min(len(by[c]) / w for c, w in weights.items() if w > 0)
    out = []
    for c, w in weights.items():
        take = int(round(n * w))
        out += [by[c][i] for i in sorted(rng.choice(len(by[c]), take, replace=False))]
    return out


def row(name: str, kind: str, result: dict) -> dict:
    s, t = result["shift"], result["truth"]
    classes = result["classes"]
    out = {"shift": name, "kind": kind, "n": result["n"],
           "true_prevalence": t["prevalence"], "em": {c: s["prevalence"]["em"][c]["estimate"] for c in classes},
           "em_ci": {c: s["prevalence"]["em"][c]["ci"] for c in classes},
           "bbse": {c: s["prevalence"]["bbse"][c]["estimate"] for c in classes},
           "prevalence_error": t["prevalence_error"], "true_accuracy": t["accuracy"],
           "accuracy_estimates": {m: s["accuracy"][m] for m in ("atc", "doc", "average_confidence", "label_shift")},
           "accuracy_error": t["accuracy_error"],
           "domain_auc": s["domain"]["auc"], "domain_p": s["domain"]["p_value"],
           "flagged": s["domain"]["distinguishable"], "metrics": {}}
    for method, r in [("none", result)] + list(result.get("adapted", {}).items()):
        at = r.get("at_threshold", r)
        out["metrics"][method] = {"accuracy": at["accuracy"], "balanced_accuracy": at["balanced_accuracy"],
                                  "roc_auc": r.get("roc_auc"), "ci_accuracy": r["ci"].get("accuracy")}
    return out


def harness(run: RunDir, work: Path, classes: list[str], positive: str | None, seed: int) -> list[dict]:
    items = test_split(run)
    shares = {c: sum(lbl == c for _, lbl in items) / len(items) for c in classes}
    sets = [("as carved", "none", items, None)]
    if positive is not None:
        other = next(c for c in classes if c != positive)
        for p in PREVALENCES:
            sets.append((f"{positive} {p:.0%}", "prevalence", resample(items, {positive: p, other: 1 - p}, seed), None))
    else:
        for i, c in enumerate(classes):
            w = {d: (0.6 if d == c else 0.4 / (len(classes) - 1)) for d in classes}
            sets.append((f"{c} 60%", "prevalence", resample(items, w, seed + i), None))
        sets.append(("uniform", "prevalence", resample(items, {c: 1 / len(classes) for c in classes}, seed), None))
    for name, fn in COVARIATE.items():
        sets.append((name, "covariate", items, fn))
    rows = []
    for name, kind, chosen, fn in sets:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
        folder = write_set(work / slug, chosen, fn, seed)
        start = time.perf_counter()
        result = evaluate(run.path, data=folder, name=f"harness-{slug}", adapt="all", n_boot=200, progress=False)
        rows.append(row(name, kind, result))
        print(f"  {name}: n={result['n']} {time.perf_counter() - start:.0f} s; source shares "
              f"{ {c: round(v, 3) for c, v in shares.items()} }", file=sys.stderr, flush=True)
    return rows


def three_class_manifest(data: Path, path: Path) -> Path:
    """NORMAL / BACTERIA / VIRUS from the Kermany file names (scripts/make_3class.py)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    from make_3class import three_class_rows

    write_csv(path, three_class_rows(data))
    return path


def table(rows: list[dict], classes: list[str], positive: str | None) -> str:
    shown = [positive] if positive else classes
    head = ("| shift | n | " + " | ".join(f"{c} true / EM / BBSE" for c in shown)
            + " | acc true | ATC | DoC | AC | LS | domain AUC (p) | flagged | acc / BA: none | prior | bn | bn+prior |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        prev = " | ".join(f"{r['true_prevalence'][c]:.3f} / {r['em'][c]:.3f} / {r['bbse'][c]:.3f}" for c in shown)
        est = " | ".join(f"{r['accuracy_estimates'][m]:.3f} ({r['accuracy_error'][m]:+.3f})"
                         for m in ("atc", "doc", "average_confidence", "label_shift"))
        mets = " | ".join(f"{r['metrics'][m]['accuracy']:.3f} / {r['metrics'][m]['balanced_accuracy']:.3f}"
                          for m in ("none", "prior", "bn", "bn+prior"))
        out.append(f"| {r['shift']} | {r['n']} | {prev} | {r['true_accuracy']:.3f} | {est} | "
                   f"{r['domain_auc']:.2f} ({r['domain_p']:.2g}) | {'yes' if r['flagged'] else 'no'} | {mets} |")
    return "\n".join(out)


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, checked on these rows."""
    prev = [r for r in rows if r["kind"] in ("prevalence", "none")]
    cov = [r for r in rows if r["kind"] == "covariate"]
    base = next(r for r in rows if r["kind"] == "none")["true_accuracy"]
    worst_prev = max(max(r["prevalence_error"].values()) for r in prev)
    atc_prev = max(abs(r["accuracy_error"]["atc"]) for r in prev)
    atc_cov = max(abs(r["accuracy_error"]["atc"]) for r in cov)
    ba_drop = [r["shift"] for r in prev if r["metrics"]["prior"]["balanced_accuracy"] < r["metrics"]["none"]["balanced_accuracy"] - 1e-9]
    missed = [r["shift"] for r in cov if abs(r["true_accuracy"] - base) > 0.03 and not r["flagged"]]
    false = [r["shift"] for r in prev if r["flagged"]]
    return [f"prevalence-only shifts: worst prevalence error (EM or BBSE, any class) {worst_prev:.3f} (target <= 0.05)",
            f"ATC accuracy error: worst {atc_prev:.3f} on prevalence shifts (target <= 0.03), {atc_cov:.3f} on covariate "
            f"shifts (target <= 0.06)",
            f"--adapt prior lowered balanced accuracy on prevalence shifts: {', '.join(ba_drop) or 'never'}",
            f"covariate shifts changing accuracy by > 3 points and not flagged: {', '.join(missed) or 'none'}; "
            f"prevalence shifts flagged: {', '.join(false) or 'none'}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/chest_xray")
    p.add_argument("--work", default="/tmp/shift-harness", help="runs and made image sets (large)")
    p.add_argument("--out", default="benchmarks/results/shift.json")
    p.add_argument("--model", default="efficientnet_lite0")
    p.add_argument("--strategy", default="features")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-3class", action="store_true")
    args = p.parse_args(argv)
    work, data = Path(args.work), Path(args.data).resolve()
    work.mkdir(parents=True, exist_ok=True)
    common = dict(model=args.model, strategy=args.strategy, test_fraction=0.15, seed=args.seed, progress=False,
                  resume=True)
    report = {"model": args.model, "strategy": args.strategy, "seed": args.seed, "data": str(data)}
    problems = [("binary", None)] + ([] if args.skip_3class else [("3class", "3class.csv")])
    for key, manifest in problems:
        out = work / f"run-{key}-{args.model}-{args.strategy}"
        if manifest:
            three_class_manifest(data, work / manifest)
            run = train(data=str(data), manifest=str(work / manifest), out=str(out), **common)
        else:
            run = train(data=str(data), out=str(out), **common)
        metrics = run.read_metrics()
        classes, positive = metrics["classes"], (metrics["positive_class"] if len(metrics["classes"]) == 2 else None)
        print(f"{key}: run {run.path}", file=sys.stderr, flush=True)
        rows = harness(run, work / f"sets-{key}", classes, positive, args.seed)
        report[key] = {"classes": classes, "rows": rows, "targets": targets(rows)}
        print(f"\n### {key} ({args.model}, {args.strategy}, seed {args.seed})\n")
        print(table(rows, classes, positive))
        print("\n" + "\n".join(f"- {t}" for t in report[key]["targets"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
