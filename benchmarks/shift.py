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


def sharpen(img, amount):
    """Unsharp masking: the edge enhancement many X-ray consoles apply."""
    soft = np.asarray(Image.fromarray(img.astype(np.uint8)).filter(ImageFilter.GaussianBlur(2)), dtype=float)
    return img + amount * (img - soft)


def rotate(img, degrees):
    return np.asarray(Image.fromarray(img.astype(np.uint8)).rotate(degrees, resample=Image.BILINEAR), dtype=float)


def look(*steps):
    """A hospital's acquisition look: several degradations in a row, each parameter drawn per image around the
    look's own value (one scanner, one protocol, some variation between images)."""
    def apply(img, rng):
        for fn, centre, spread in steps:
            value = centre + spread * rng.uniform(-1, 1)
            img = fn(np.clip(img, 0, 255), value, rng) if fn is noise else fn(np.clip(img, 0, 255), value)
        return img
    return apply


def jpeg_q(img, quality):
    return jpeg(img, int(round(quality)))


def resolution_px(img, size):
    return resolution(img, int(round(size)))


COVARIATE = {
    "gamma 0.6": lambda x, rng: gamma(x, 0.6), "gamma 1.6": lambda x, rng: gamma(x, 1.6),
    "contrast 0.6": lambda x, rng: contrast(x, 0.6), "blur sigma 1.5": lambda x, rng: blur(x, 1.5),
    "blur sigma 3": lambda x, rng: blur(x, 3), "noise sd 15": lambda x, rng: noise(x, 15, rng),
    "JPEG quality 10": lambda x, rng: jpeg(x, 10), "resolution 64 px": lambda x, rng: resolution(x, 64),
    "crop 75%": lambda x, rng: crop(x, 0.75),
}
# Shifts that move the score distribution the way a new hospital does: a different acquisition look, several
# changes at once (intensity curve, contrast, edge enhancement, framing, noise, compression), never one alone.
ACQUISITION = {
    "look A: bright, sharpened, tight framing": look((gamma, 0.8, 0.1), (contrast, 1.15, 0.05), (sharpen, 1.0, 0.3),
                                                     (crop, 0.88, 0.03)),
    "look B: dark, soft, compressed": look((gamma, 1.3, 0.1), (contrast, 0.8, 0.05), (blur, 1.0, 0.3),
                                           (resolution_px, 150, 20), (jpeg_q, 35, 10)),
    "look C: portable, noisy, rotated": look((contrast, 0.75, 0.05), (noise, 8, 2), (rotate, 0, 6), (crop, 0.85, 0.05),
                                             (sharpen, 0.5, 0.2)),
}


# Families of shifts, declared once (benchmarks/recipes.py chooses on one family and reports on the others):
# the intensity curve alone; image quality (blur, noise, compression, resolution, framing); and the combined
# "new hospital" looks. Together they hold every shift above exactly once.
FAMILIES = {
    "intensity": ["gamma 0.6", "gamma 1.6", "contrast 0.6"],
    "degradation": ["blur sigma 1.5", "blur sigma 3", "noise sd 15", "JPEG quality 10", "resolution 64 px",
                    "crop 75%"],
    "acquisition": list(ACQUISITION),
}
SHIFTS = {**COVARIATE, **ACQUISITION}
_IN_FAMILIES = [name for names in FAMILIES.values() for name in names]
assert sorted(_IN_FAMILIES) == sorted(SHIFTS), "FAMILIES must hold every shift of COVARIATE and ACQUISITION once"


def test_split(run: RunDir, split: str = "test") -> list[tuple[Path, str]]:
    """(image, label) of one of the run's splits (its splits.csv): "test" by default, or "val", "train"."""
    root = Path(run.read_config()["data"]["root"])
    return [(root / r["file"], r["label"]) for r in read_csv(run.splits) if r["split"] == split]


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


def evaluate_once(run_path: Path, folder: Path, name: str, **kwargs) -> dict:
    """evaluate(), or its saved eval-NAME.json when that is newer than the run's weights (--reuse)."""
    saved = Path(run_path) / f"eval-{name}.json"
    if REUSE and saved.exists() and saved.stat().st_mtime > RunDir(run_path).weights.stat().st_mtime:
        return json.loads(saved.read_text())
    return evaluate(run_path, data=folder, name=name, progress=False, **kwargs)


REUSE = False


def harness(run: RunDir, work: Path, classes: list[str], positive: str | None, seed: int,
            peers: list[RunDir] = ()) -> list[dict]:
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
    for name, fn in ACQUISITION.items():
        sets.append((name, "acquisition", items, fn))
    rows = []
    for name, kind, chosen, fn in sets:
        slug = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_")
        folder = write_set(work / slug, chosen, fn, seed)
        start = time.perf_counter()
        result = evaluate_once(run.path, folder, f"harness-{slug}", adapt="all", n_boot=200)
        rows.append(row(name, kind, result))
        rows[-1]["eval"] = f"harness-{slug}"
        for peer in peers:   # other runs on the same split, for the agreement-based estimators
            evaluate_once(peer.path, folder, f"harness-{slug}", shift=False, n_boot=0)
        from transferlab.analysis.agreement import agreement_estimates
        agreement = agreement_estimates([run.path, *[p.path for p in peers]], f"harness-{slug}").get(run.path.name)
        rows[-1]["headline"] = headline_check(rows[-1], result, agreement)
        rows[-1]["labels"] = labelled_analysis(run, rows[-1], classes, positive, seed)
        print(f"  {name}: n={result['n']} {time.perf_counter() - start:.0f} s; source shares "
              f"{ {c: round(v, 3) for c, v in shares.items()} }", file=sys.stderr, flush=True)
    return rows


# --- what a few labels buy, and what the label-free headline says (read from the runs' written predictions) ------

LABEL_BUDGET, DRAWS, RECAL_DRAWS = 50, 200, 50


def _predictions(run_path: Path, name: str, classes: list[str]):
    rows = read_csv(Path(run_path) / f"predictions-{name}.csv")
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])
    return (probs, np.array([classes.index(r["predicted"]) for r in rows]),
            np.array([classes.index(r["label"]) for r in rows]))


def labelled_analysis(run: RunDir, r: dict, classes: list[str], positive: str | None, seed: int) -> dict:
    """On one harness set: --label-budget 50 over DRAWS draws (interval coverage and half-width, against 50
    uniformly random labels), and --recalibrate with 50 labels over RECAL_DRAWS draws, scored on the other images,
    beside the best threshold that all the labels allow."""
    from sklearn.metrics import balanced_accuracy_score

    from transferlab.analysis.labelling import LabelDesign, design_weights, labelled_estimates, recalibrated_decisions
    from transferlab.metrics import choose_threshold

    probs, pred, y = _predictions(run.path, r["eval"], classes)
    pos = classes.index(positive) if positive else None
    truth = float((pred == y).mean())
    design = LabelDesign.fit(probs, pred)
    strata = design.strata(probs, pred)
    rng = np.random.default_rng(seed)
    covered, half, half_random, covered_random = [], [], [], []
    for d in range(DRAWS):
        chosen = design.choose(probs, pred, LABEL_BUDGET, seed=d)
        lo, hi = labelled_estimates(strata, pred, chosen, y[chosen], classes=classes, pos=pos, n_draws=1000,
                                    seed=d)["accuracy"]["ci"]
        covered.append(lo <= truth <= hi)
        half.append((hi - lo) / 2)
        at_random = np.sort(rng.choice(len(y), LABEL_BUDGET, replace=False))
        lo, hi = labelled_estimates(np.zeros(len(y), int), pred, at_random, y[at_random], classes=classes, pos=pos,
                                    n_draws=1000, seed=d)["accuracy"]["ci"]
        covered_random.append(lo <= truth <= hi)
        half_random.append((hi - lo) / 2)
    out = {"true_accuracy": truth, "coverage": float(np.mean(covered)), "half_width": float(np.mean(half)),
           "coverage_random": float(np.mean(covered_random)), "half_width_random": float(np.mean(half_random))}
    method = "youden"
    gains, gains_acc = [], []
    for d in range(RECAL_DRAWS):
        chosen = design.choose(probs, pred, LABEL_BUDGET, seed=1000 + d)
        others = np.setdiff1d(np.arange(len(y)), chosen)
        try:
            rule = recalibrated_decisions(probs, chosen, y[chosen], design_weights(strata, chosen), pos=pos,
                                          threshold_method=method, seed=d)
        except Exception:   # fewer than two labels of a class among the 50
            continue
        gains.append(balanced_accuracy_score(y[others], rule["decision"][others])
                     - balanced_accuracy_score(y[others], pred[others]))
        gains_acc.append(float((rule["decision"][others] == y[others]).mean() - (pred[others] == y[others]).mean()))
    before_ba = balanced_accuracy_score(y, pred)
    if pos is not None:   # the best threshold all the labels allow (a diagnosis, not a method)
        best = choose_threshold((y == pos).astype(int), probs[:, pos], method)
        oracle = balanced_accuracy_score(y, np.where(probs[:, pos] >= best, pos, 1 - pos))
    else:
        oracle = None
    out.update({"ba": float(before_ba), "ba_best_threshold": oracle, "recal_draws": len(gains),
                "recal_ba_gain_mean": float(np.mean(gains)) if gains else None,
                "recal_ba_gain_p05": float(np.quantile(gains, 0.05)) if gains else None,
                "recal_acc_gain_mean": float(np.mean(gains_acc)) if gains_acc else None})
    return out


def headline_check(r: dict, result: dict, agreement: dict | None) -> dict:
    """The headline `evaluate` gives for this set (recomputed from its saved shift block, with the runs'
    agreement added when there are peers), and whether it holds the truth."""
    from transferlab.analysis import shift as sh

    shift = json.loads(json.dumps(result["shift"]))
    if agreement:
        shift["accuracy"].update({k: v for k, v in agreement.items() if k in sh.AGREEMENT_ESTIMATORS})
    h = sh.accuracy_headline(shift)
    truth = r["true_accuracy"]
    if h["kind"] == "estimate":
        ok, shown = abs(h["accuracy"] - truth) <= 0.06, f"{h['accuracy']:.3f}"
    else:
        low = h["low"] if h["low"] is not None else 0.0
        ok, shown = low <= truth <= h["high"], (f"{h['low']:.2f}-{h['high']:.2f}" if h["low"] is not None
                                                 else f"<= {h['high']:.2f} (not shown)")
    return {"kind": h["kind"], "shown": shown, "holds": bool(ok),
            "gde": (agreement or {}).get("gde"), "aline_d": (agreement or {}).get("aline_d")}


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


def labels_table(rows: list[dict]) -> str:
    head = ("| shift | acc true | without labels: headline | holds | GDE | ALine-D | 50 chosen labels: coverage / "
            "half-width | 50 random: coverage / half-width | BA | BA, best threshold | --recalibrate (50): BA gain mean "
            "/ 5th pct |")
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        h, lab = r["headline"], r["labels"]
        err = lambda v: "–" if v is None else f"{v:.3f} ({v - r['true_accuracy']:+.3f})"
        best = "–" if lab["ba_best_threshold"] is None else f"{lab['ba_best_threshold']:.3f}"
        gain = ("–" if lab["recal_ba_gain_mean"] is None
                else f"{lab['recal_ba_gain_mean']:+.3f} / {lab['recal_ba_gain_p05']:+.3f}")
        out.append(f"| {r['shift']} | {r['true_accuracy']:.3f} | {h['shown']} | {'yes' if h['holds'] else 'NO'} | "
                   f"{err(h['gde'])} | {err(h['aline_d'])} | {lab['coverage']:.2f} / {lab['half_width']:.3f} | "
                   f"{lab['coverage_random']:.2f} / {lab['half_width_random']:.3f} | {lab['ba']:.3f} | {best} | {gain} |")
    return "\n".join(out)


def label_targets(rows: list[dict], binary: bool) -> list[str]:
    shifted = [r for r in rows if r["kind"] in ("covariate", "acquisition")]
    wrong = [r["shift"] for r in shifted if not r["headline"]["holds"]]
    points = [abs(float(r["headline"]["shown"]) - r["true_accuracy"]) for r in rows if r["headline"]["kind"] == "estimate"]
    coverage = min(r["labels"]["coverage"] for r in rows)
    half = max(r["labels"]["half_width"] for r in rows)
    narrower = np.mean([1 - r["labels"]["half_width"] / r["labels"]["half_width_random"] for r in rows])
    lowered = [r["shift"] for r in rows if r["labels"]["recal_ba_gain_p05"] is not None and
               r["labels"]["recal_ba_gain_p05"] < -1.96 * np.sqrt(r["labels"]["ba"] * (1 - r["labels"]["ba"]) / r["n"])]
    cause = [r for r in shifted if r["labels"]["ba_best_threshold"] is not None
             and r["labels"]["ba_best_threshold"] - r["labels"]["ba"] > 0.02]
    recovered = [f"{r['shift']} {r['labels']['recal_ba_gain_mean'] / (r['labels']['ba_best_threshold'] - r['labels']['ba']):.0%}"
                 for r in cause if r["labels"]["recal_ba_gain_mean"] is not None]
    gde = [abs(r["headline"]["gde"] - r["true_accuracy"]) for r in shifted if r["headline"]["gde"] is not None]
    atc = [abs(r["accuracy_error"]["atc"]) for r in shifted]
    out = [f"headline on covariate and acquisition shifts: holds the truth on {len(shifted) - len(wrong)} of "
           f"{len(shifted)}" + (f" (not on {', '.join(wrong)})" if wrong else "") + "; point estimates given: "
           f"{len(points)}, worst error {max(points) if points else 0:.3f} (target: within 0.06, never off by > 0.10)",
           f"50 labels chosen by --label-budget: coverage of the 95% interval >= {coverage:.2f} on every set (target >= "
           f"0.90), half-width <= {half:.3f}" + (" (target <= 0.08, binary)" if binary else "")
           + f"; {narrower:.0%} narrower on average than 50 random labels",
           f"--recalibrate with 50 labels lowered balanced accuracy beyond its CI (5th percentile of the gain) on: "
           f"{', '.join(lowered) or 'no set'}; share of the best-threshold gain recovered where the threshold is "
           f"the cause (> 2 points): {', '.join(recovered) or 'no such set'}"]
    if gde:
        out.append(f"agreement between runs (GDE) on the shifted sets: mean |error| {np.mean(gde):.3f}, worst "
                   f"{max(gde):.3f}; ATC: mean {np.mean(atc):.3f}, worst {max(atc):.3f}")
    return out


def targets(rows: list[dict]) -> list[str]:
    """The issue's targets, checked on these rows."""
    prev = [r for r in rows if r["kind"] in ("prevalence", "none")]
    cov = [r for r in rows if r["kind"] in ("covariate", "acquisition")]
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
    p.add_argument("--peers", default="efficientnet_lite1,efficientnet_lite2,efficientnet_lite0@1",
                   help="other runs on the same split (MODEL or MODEL@SEED), scored on every binary set: the "
                        "agreement-based accuracy estimators need them ('' for none)")
    p.add_argument("--reuse", action="store_true", help="keep each eval-NAME.json newer than its run's weights")
    args = p.parse_args(argv)
    global REUSE
    REUSE = args.reuse
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
        peers = []
        for spec in (args.peers.split(",") if args.peers and not manifest else []):
            model, _, peer_seed = spec.partition("@")
            peer_common = dict(common, model=model, seed=int(peer_seed or args.seed), split_seed=args.seed)
            peers.append(train(data=str(data), out=str(work / f"run-{key}-{model}-{args.strategy}-seed{peer_common['seed']}"),
                               **peer_common))
        rows = harness(run, work / f"sets-{key}", classes, positive, args.seed, peers)
        report[key] = {"classes": classes, "rows": rows, "targets": targets(rows) + label_targets(rows, positive is not None),
                       "run": str(run.path), "peers": [str(r.path) for r in peers]}
        print(f"\n### {key} ({args.model}, {args.strategy}, seed {args.seed})\n")
        print(table(rows, classes, positive))
        print("\n" + labels_table(rows))
        print("\n" + "\n".join(f"- {t}" for t in report[key]["targets"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
