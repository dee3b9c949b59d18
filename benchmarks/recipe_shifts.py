"""benchmarks/recipes.py --shifts: selection that does not fool itself (see recipes.py's help for the rule).

Every run is scored on degraded copies (benchmarks/shift.py, FAMILIES) of a fixed class-stratified subset of the
validation split, which choices are made on, and of the carved test split, which is only reported on; then, one
family of shifts at a time, the best variant on that family is judged on the other families.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shift import FAMILIES, SHIFTS, test_split, write_set  # noqa: E402  (the shift harness's degradations)

import transferlab as tl  # noqa: E402
from transferlab.analysis.ensemble_scoring import made_from, score_from_members  # noqa: E402

AUC_TIE = 0.001         # choosing: mean AUCs this close tie (then the lower validation loss wins)
SHIFT_IMAGES = 400      # default --shift-images: each degraded set is a class-stratified subset of this many images
SUBSET_SEED = 0         # the subset's draw: the same images for every variant and seed (paired comparisons)
N_BOOT = 20             # evaluate's bootstrap resamples per set (its CIs are not used here)
CLEAN = "clean"         # the same subset of the test split re-encoded, undegraded: the clean AUC beside the shifts
MIN_SEEDS = 3           # a default changes only on evidence from at least this many seeds (paired)
TARGET_AUC_DROP = 0.01  # the targets: mean shift AUC >= clean AUC - 0.01 ...
TARGET_ACC_GAIN = 0.05  # ... and worst-shift accuracy up by >= 5 points over today's default


def slug(name: str) -> str:
    """A variant's or a shift's name in a folder or file name ("lr 3e-4" -> "lr_3e-4", "crop 75%" -> "crop_75")."""
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")


def mean_ci(values: list[float]) -> tuple[float, float, float, float]:
    """mean, sd, and the 95% t-interval of the mean (a single value: sd None, printed as no CI, and the interval
    the point itself, so the rule's MIN_SEEDS is what stops a one-seed change)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None, mean, mean
    sd = statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * sd / len(values) ** 0.5
    return mean, sd, mean - half, mean + half


def stratified_subset(items: list[tuple[Path, str]], n: int | None, seed: int = SUBSET_SEED) -> list[tuple[Path, str]]:
    """At most n of the items with each class in its share (largest remainders), drawn with a fixed seed, in the
    items' order; all of them when n is None or not smaller."""
    if n is None or n >= len(items):
        return list(items)
    rng = np.random.default_rng(seed)
    by: dict[str, list[int]] = {}
    for i, (_, label) in enumerate(items):
        by.setdefault(label, []).append(i)
    exact = {c: n * len(ix) / len(items) for c, ix in sorted(by.items())}
    take = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: take[c] - exact[c])[:n - sum(take.values())]:
        take[c] += 1
    keep = sorted(i for c in sorted(by) for i in rng.choice(by[c], take[c], replace=False).tolist())
    return [items[i] for i in keep]


def set_names(items: list[tuple[Path, str]]) -> list[str]:
    """The files write_set makes of these items (degraded copies): LABEL/00000_STEM.png."""
    return [f"{label}/{i:05d}_{path.stem}.png" for i, (path, label) in enumerate(items)]


def shift_sets(args, runs: list[tl.RunDir]) -> dict[str, dict[str, Path]]:
    """{source: {shift: folder}}: degraded copies of a --shift-images subset of the validation split ("val": the
    sets every choice is made on) and of the carved test split ("test": the sets reported on, plus CLEAN), made
    once under --out/STRATEGY/shift-sets. Every run must have the same split (split seed 0)."""
    sources = {}
    for source in ("val", "test"):
        items = test_split(runs[0], source)
        for run in runs[1:]:
            if {str(p) for p, _ in test_split(run, source)} != {str(p) for p, _ in items}:
                sys.exit(f"error: {run.path} has another {source} split than {runs[0].path}; use another --out")
        if not items:
            sys.exit(f"error: {runs[0].path} has no {source} split (--shifts needs validation and a test split)")
        sources[source] = stratified_subset(items, args.shift_images)
    root = Path(args.out) / args.strategy / "shift-sets"
    sets: dict[str, dict[str, Path]] = {}
    for source, items in sources.items():
        transforms = dict(SHIFTS, **({CLEAN: lambda x, rng: x} if source == "test" else {}))
        for shift, transform in transforms.items():
            folder = root / f"{source}-{args.shift_images or 'all'}" / slug(shift)
            write_set(folder, items, transform)
            found = sorted(str(f.relative_to(folder)) for f in folder.rglob("*") if f.is_file())
            if found != sorted(set_names(items)):
                sys.exit(f"error: {folder} holds other images than this split's subset; delete it")
            sets.setdefault(source, {})[shift] = folder
    return sets


def score(run: tl.RunDir, data: Path, name: str) -> dict:
    """ROC-AUC and accuracy at the run's threshold on one set: evaluate(), or its eval-NAME.json when that is
    newer than what it was made from (the run's weights; an ensemble's members' results) and scored as many
    images (an interrupted benchmark continues). An ensemble is scored from its members' results on the set
    (score_from_members), so its members must have been scored first."""
    ensemble = run.is_ensemble()
    sources = made_from(run, name) if ensemble else [run.weights]
    saved = run.evaluation(name)
    result = None
    if saved.exists() and all(p.exists() and saved.stat().st_mtime > p.stat().st_mtime for p in sources):
        result = json.loads(saved.read_text())
        if result.get("n") != sum(1 for f in Path(data).rglob("*") if f.is_file()):
            result = None
    if result is None and ensemble:
        result = score_from_members(run, name, n_boot=N_BOOT)
    elif result is None:
        result = tl.evaluate(run, data=data, name=name, shift=False, n_boot=N_BOOT, progress=False)
    return {"roc_auc": result["roc_auc"], "accuracy": result.get("at_threshold", result)["accuracy"]}


def score_shifts(args, rows: list[dict], runs: list[tl.RunDir]) -> None:
    """Adds row["shifts"] = {source: {shift: {"roc_auc", "accuracy"}}} to every run's row (`runs`: their folders)."""
    sets = shift_sets(args, runs)
    for row, run in zip(rows, runs):
        row["shifts"] = {source: {shift: score(run, folder, f"shift-{source}-{args.shift_images or 'all'}-{slug(shift)}")
                                  for shift, folder in by_shift.items()}
                         for source, by_shift in sets.items()}
        print(f"{row['variant']:22s} seed {row['seed']}: mean AUC over the shifts: validation copies "
              f"{shift_mean(row, 'val', list(SHIFTS)):.4f}, test copies {shift_mean(row, 'test', list(SHIFTS)):.4f}; "
              f"worst test accuracy {min(row['shifts']['test'][s]['accuracy'] for s in SHIFTS):.4f}", flush=True)


def by_variant(rows: list[dict], *, ensembles: bool = True) -> dict[str, dict[int, dict]]:
    """{variant: {seed: row}} in the rows' order; without ensembles (rows with "members"), the candidates a
    default can be chosen from."""
    out: dict[str, dict[int, dict]] = {}
    for r in rows:
        if ensembles or "members" not in r:
            out.setdefault(r["variant"], {})[r["seed"]] = r
    return out


def shift_mean(row: dict, source: str, shifts: list[str], key: str = "roc_auc") -> float:
    """One run's mean of `key` over these shifts' copies of `source` ("val" or "test")."""
    return statistics.fmean(row["shifts"][source][s][key] for s in shifts)


def paired(mine: dict[int, dict], base: dict[int, dict], value) -> tuple[float, float, float, float] | None:
    """mean_ci of value(mine) - value(base) over the seeds both have (None when they share none)."""
    seeds = sorted(set(mine) & set(base))
    return mean_ci([value(mine[s]) - value(base[s]) for s in seeds]) if seeds else None


def worst_shift(runs: dict[int, dict], shifts: list[str], source: str = "test") -> tuple[str, tuple]:
    """The shift with the lowest seed-mean accuracy at the runs' thresholds, and mean_ci of the accuracy there."""
    accs = {s: [r["shifts"][source][s]["accuracy"] for r in runs.values()] for s in shifts}
    shift = min(shifts, key=lambda s: statistics.fmean(accs[s]))
    return shift, mean_ci(accs[shift])


def qualifies(mine: dict[int, dict], default: dict[int, dict]) -> bool:
    """May be chosen: clean validation AUC not below the default's beyond seed noise (the paired difference's
    95% interval reaches 0 or above). The default itself always qualifies."""
    if mine is default:
        return True
    diff = paired(mine, default, lambda r: r["val_roc_auc"])
    return diff is not None and diff[3] >= 0


def choose_on(rows: list[dict], shifts: list[str]) -> str:
    """Among the variants that qualify, the best mean AUC over these shifts' VALIDATION copies (seed mean);
    within AUC_TIE of it, the lowest validation loss (as `choose`). No test image takes part; ensembles are
    compared in the tables, never chosen."""
    runs = by_variant(rows, ensembles=False)
    default = runs["default"]
    scores = {name: (statistics.fmean(shift_mean(r, "val", shifts) for r in mine.values()),
                     statistics.fmean(r["val_loss"] for r in mine.values()))
              for name, mine in runs.items() if qualifies(mine, default)}
    best = max(auc for auc, _ in scores.values())
    return min((name for name, (auc, _) in scores.items() if auc >= best - AUC_TIE), key=lambda n: scores[n][1])


def fold(rows: list[dict], family: str, families: dict[str, list[str]] = FAMILIES) -> dict:
    """Choose on one family (validation copies), then report the choice against the default on every other
    family (test copies): mean AUC over those shifts, its paired difference, worst-shift accuracy, clean test
    accuracy. `helps`: a variant other than the default whose held-out AUC difference has its 95% interval above 0."""
    runs = by_variant(rows)
    default = runs["default"]
    chosen = choose_on(rows, families[family])
    mine = runs[chosen]
    held_out = [f for f in families if f != family]
    shifts = [s for f in held_out for s in families[f]]

    def held(r):
        return shift_mean(r, "test", shifts)

    diff = None if chosen == "default" else paired(mine, default, held)
    return {"family": family, "chosen": chosen, "held_out": held_out, "seeds": len(set(mine) & set(default)),
            "held_auc": mean_ci([held(r) for r in mine.values()]),
            "default_held_auc": mean_ci([held(r) for r in default.values()]),
            "held_auc_vs_default": diff,
            "worst_acc": worst_shift(mine, shifts), "default_worst_acc": worst_shift(default, shifts),
            "clean_test_acc": mean_ci([r["test_accuracy"] for r in mine.values()]),
            "clean_acc_vs_default": None if chosen == "default" else paired(mine, default, lambda r: r["test_accuracy"]),
            "helps": bool(diff is not None and diff[2] > 0)}


def why_not(folds: list[dict], min_seeds: int = MIN_SEEDS) -> str:
    """Why the variant chosen in these folds (all of them for one variant) may NOT become the default; "" when it
    may: in every fold it is chosen in, it helps on the held-out families (95% interval of the paired AUC
    difference above 0) and its clean test accuracy is not lower beyond its CI (paired difference's upper 95%
    bound >= 0), on at least min_seeds paired seeds."""
    if not folds:
        return "never chosen"
    if any(f["chosen"] == "default" for f in folds):
        return "is the default"
    reasons = []
    missed = [f["family"] for f in folds if not f["helps"]]
    if missed:
        reasons.append("no gain on the families held out from " + ", ".join(missed))
    if any(f["clean_acc_vs_default"] is None or f["clean_acc_vs_default"][3] < 0 for f in folds):
        reasons.append("lower clean test accuracy beyond its CI")
    if min(f["seeds"] for f in folds) < min_seeds:
        reasons.append(f"fewer than {min_seeds} seeds")
    return "; ".join(reasons)


def recommend(folds: list[dict], min_seeds: int = MIN_SEEDS) -> str:
    """The new default, or "default": among the variants chosen in at least one fold that pass `why_not`, the
    one chosen in the most folds, then the best mean held-out AUC over its folds."""
    chosen: dict[str, list[dict]] = {}
    for f in folds:
        if f["chosen"] != "default":
            chosen.setdefault(f["chosen"], []).append(f)
    ok = [name for name, fs in chosen.items() if not why_not(fs, min_seeds)]
    if not ok:
        return "default"
    return max(ok, key=lambda n: (len(chosen[n]), statistics.fmean(f["held_auc"][0] for f in chosen[n])))


def shift_table(rows: list[dict], families: dict[str, list[str]] = FAMILIES) -> list[dict]:
    """Per variant: clean validation and test numbers, test AUC over all shifts and per family, the clean AUC on
    the shift sets' own images, and the worst shift's test accuracy (each mean_ci over seeds)."""
    shifts = [s for names in families.values() for s in names]
    table = []
    for name, mine in by_variant(rows).items():
        runs = list(mine.values())
        entry = {"variant": name, "seeds": len(runs),
                 "clean_val_auc": mean_ci([r["val_roc_auc"] for r in runs]),
                 "clean_test_auc": mean_ci([r["test_roc_auc"] for r in runs]),
                 "clean_test_acc": mean_ci([r["test_accuracy"] for r in runs]),
                 "subset_clean_auc": mean_ci([r["shifts"]["test"][CLEAN]["roc_auc"] for r in runs]),
                 "shift_auc": mean_ci([shift_mean(r, "test", shifts) for r in runs]),
                 "family_auc": {f: mean_ci([shift_mean(r, "test", names) for r in runs]) for f, names in families.items()},
                 "worst_acc": worst_shift(mine, shifts)}
        table.append(entry)
    return table


def cell(stat) -> str:
    mean, sd, lo, hi = stat
    return f"{mean:.4f} (one seed: no CI)" if sd is None else f"{mean:.4f} ± {sd:.4f} [{lo:.4f}, {hi:.4f}]"


def delta(stat) -> str:
    if stat is None:
        return "—"
    return f"{stat[0]:+.4f} (one seed: no CI)" if stat[1] is None else f"{stat[0]:+.4f} [{stat[2]:+.4f}, {stat[3]:+.4f}]"


def target_lines(table: list[dict], rows: list[dict], recommended: str) -> list[str]:
    """The issue's targets, for the default and the recommended variant."""
    entries = {e["variant"]: e for e in table}
    runs = by_variant(rows)
    lines = []
    for name in dict.fromkeys(["default", recommended]):
        e = entries[name]
        auc, clean = e["shift_auc"][0], e["subset_clean_auc"][0]
        lines.append(f"- {name}: mean shift AUC >= clean AUC - {TARGET_AUC_DROP}: "
                     f"{'yes' if auc >= clean - TARGET_AUC_DROP else 'no'} ({auc:.4f} vs {clean:.4f}, the same test images)")
    if recommended != "default":
        e, d = entries[recommended], entries["default"]
        gain = e["worst_acc"][1][0] - d["worst_acc"][1][0]
        acc = paired(runs[recommended], runs["default"], lambda r: r["test_accuracy"])
        lines.append(f"- {recommended}: worst-shift accuracy {100 * gain:+.1f} points vs default "
                     f"(target >= +{100 * TARGET_ACC_GAIN:.0f}: {'yes' if gain >= TARGET_ACC_GAIN else 'no'}); "
                     f"clean test accuracy not lower beyond its CI: {'yes' if acc[3] >= 0 else 'no'} (Δ {delta(acc)})")
    else:
        lines.append("- no variant qualifies as the new default: worst-shift accuracy +0.0 points vs default")
    return lines


def ensemble_lines(rows: list[dict], families: dict[str, list[str]] = FAMILIES) -> list[str]:
    """Each ensemble against each of its members, paired over seeds: mean test AUC over all shifts, worst-shift
    test accuracy, clean test accuracy."""
    shifts = [s for names in families.values() for s in names]
    runs = by_variant(rows)
    lines = []
    for name, mine in runs.items():
        members = next(iter(mine.values())).get("members")
        if not members:
            continue
        lines += ["", f"{name} (mean of {', '.join(members)}; {len(members)}x the cost of one) against each member, "
                      f"paired over seeds:", ""]
        for member in members:
            auc = paired(mine, runs[member], lambda r: shift_mean(r, "test", shifts))
            worst = paired(mine, runs[member], lambda r: min(r["shifts"]["test"][s]["accuracy"] for s in shifts))
            clean = paired(mine, runs[member], lambda r: r["test_accuracy"])
            lines.append(f"- vs {member}: mean shift AUC Δ {delta(auc)}, each run's worst-shift accuracy Δ {delta(worst)}, "
                         f"clean test accuracy Δ {delta(clean)}")
    return lines


def shifts_markdown(table: list[dict], folds: list[dict], recommended: str, rows: list[dict], command: str,
                    families: dict[str, list[str]] = FAMILIES) -> str:
    fams = list(families)
    lines = [f"`{command}`", "",
             "Test copies of the carved test split (validation copies are only chosen on). Each cell: mean ± sd "
             "[95% CI of the mean] over seeds.", "",
             "| recipe | seeds | clean val AUC | clean test AUC | clean test acc | clean AUC, shift images | "
             "test AUC, all shifts | " + " | ".join(f"{f} AUC" for f in fams) + " | worst-shift test acc |",
             "|---|---|---|---|---|---|---|" + "---|" * len(fams) + "---|"]
    for e in table:
        name = e["variant"] + (" **(recommended)**" if e["variant"] == recommended != "default" else "")
        shift, acc = e["worst_acc"]
        lines.append(f"| {name} | {e['seeds']} | {cell(e['clean_val_auc'])} | {cell(e['clean_test_auc'])} | "
                     f"{cell(e['clean_test_acc'])} | {cell(e['subset_clean_auc'])} | {cell(e['shift_auc'])} | "
                     + " | ".join(cell(e["family_auc"][f]) for f in fams) + f" | {cell(acc)} ({shift}) |")
    lines += ["", "Leave one family out: chosen on one family's validation copies, reported on the other families' "
              "test copies.", "",
              "| chosen on | chosen variant | held-out mean AUC (default) | Δ vs default [95% CI] | "
              "worst-shift acc (default) | clean test acc Δ [95% CI] | helps on held-out? |",
              "|---|---|---|---|---|---|---|"]
    for f in folds:
        (ws, wa), (ds, da) = f["worst_acc"], f["default_worst_acc"]
        lines.append(f"| {f['family']} | {f['chosen']} | {f['held_auc'][0]:.4f} ({f['default_held_auc'][0]:.4f}) | "
                     f"{delta(f['held_auc_vs_default'])} | {wa[0]:.4f} {ws} ({da[0]:.4f} {ds}) | "
                     f"{delta(f['clean_acc_vs_default'])} | "
                     f"{'— (the default)' if f['chosen'] == 'default' else 'yes' if f['helps'] else 'no'} |")
    candidates = dict.fromkeys(f["chosen"] for f in folds if f["chosen"] != "default")
    verdicts = [f"{n}: {why_not([f for f in folds if f['chosen'] == n]) or 'qualifies'}" for n in candidates]
    lines += ["", f"Recommended default: **{recommended}**" + (f" ({'; '.join(verdicts)})" if verdicts else
                                                              " (the default was chosen in every fold)"), ""]
    return "\n".join(lines + target_lines(table, rows, recommended) + ensemble_lines(rows, families))


def under_shifts(args, rows: list[dict], runs: list[tl.RunDir]) -> str:
    """--shifts: score every run not scored yet (`runs`: their folders, in order; rows reused from an earlier output
    have their scores), run the folds, print and write the tables and the JSON; returns the SHIFTS line."""
    score_shifts(args, [r for r in rows if "shifts" not in r], runs)
    table = shift_table(rows)
    folds = [fold(rows, family) for family in FAMILIES]
    recommended = recommend(folds)
    text = shifts_markdown(table, folds, recommended, rows, args.command)
    print(text)
    out = Path(args.out)
    (out / f"recipes-{args.strategy}-shifts.md").write_text(text + "\n")
    (out / f"recipes-{args.strategy}-shifts.json").write_text(json.dumps(
        {"args": vars(args), "families": FAMILIES, "runs": rows, "table": table, "folds": folds,
         "recommended": recommended, "rule": {"min_seeds": MIN_SEEDS, "auc_tie": AUC_TIE}}, indent=2))
    entries = {e["variant"]: e for e in table}
    d, r = entries["default"], entries[recommended]
    return (f"SHIFTS strategy={args.strategy} recommended={recommended.replace(' ', '_')} "
            f"change_default={'yes' if recommended != 'default' else 'no'} "
            f"default_mean_shift_auc={d['shift_auc'][0]:.4f} default_worst_acc={d['worst_acc'][1][0]:.4f} "
            f"recommended_mean_shift_auc={r['shift_auc'][0]:.4f} recommended_worst_acc={r['worst_acc'][1][0]:.4f}")
