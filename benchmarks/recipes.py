#!/usr/bin/env python
"""Which recipe should a strategy's defaults be? Evidence chosen on validation only, over several seeds.

    python benchmarks/recipes.py --strategy features --seeds 3 --out /scratch/recipes
    python benchmarks/recipes.py --strategy finetune --seeds 3 --max-images 600 --image-size 128 --out /scratch/recipes

For one model and strategy it trains the default recipe and one-setting-at-a-time variants of it (learning rate,
epochs, augmentation strength, label smoothing, head dropout, image size, BatchNorm statistics, gradual
unfreezing; `--variants` picks some), each with
`--seeds` seeds on ONE patient-disjoint split (split seed 0: validation and a carved 15% test split of
`train/`), through the real API (`transferlab.train`). Then it prints, per variant, validation and test ROC-AUC
and accuracy (at the threshold chosen on validation) as mean ± sd over seeds with a 95% t-interval of the mean,
and the paired difference in validation AUC against the default (same split, same seeds). The recipe it
recommends is the one with the best mean validation AUC (ties within 0.001: the lower validation loss), and it
says to change the default only when that recipe beats it beyond seed noise (AUC higher by more than 0.001, or
validation loss at least 5% lower); test numbers are printed beside it and never used to choose. Finished runs in --out are reused, so an interrupted
benchmark continues where it stopped. Last line:
  SUMMARY strategy=<s> chosen=<variant> change_default=<yes|no> val_auc=<m> test_auc=<m> test_acc=<m> default_test_auc=<m>
Writes recipes-<strategy>.json and .md into --out.

--shifts also scores the default and the chosen recipe's runs on the shift harness's degraded copies of the test
split (benchmarks/shift.py: gamma, contrast, blur, noise, JPEG quality, resolution, cropping; made once under
--out), through `transferlab.evaluate(run, data=SET)`, and prints a table of test AUC and accuracy per shift.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shift import COVARIATE, test_split, write_set  # noqa: E402  (the shift harness's degradations)

import transferlab as tl  # noqa: E402
from transferlab.config import STRATEGY_DEFAULTS  # noqa: E402

# One setting changed from the default at a time: (name, settings). Learning rates bracket the default.
VARIANTS = {
    "features": [
        ("default", {}),
        ("lr 3e-4", {"lr": 3e-4}), ("lr 1e-3", {"lr": 1e-3}), ("lr 1e-2", {"lr": 1e-2}),
        ("epochs 60", {"epochs": 60, "patience": 15}),
        ("label smoothing 0.1", {"label_smoothing": 0.1}),
        ("head dropout 0.3", {"head_dropout": 0.3}),
        ("image size 288", {"image_size": 288}),
        ("xray 4 views", {"augment": "xray", "feature_views": 4}),
        ("preprocess equalize", {"preprocess": "equalize"}), ("preprocess clahe", {"preprocess": "clahe"}),
    ],
    "finetune": [
        ("default", {}),
        ("lr 3e-4", {"lr": 3e-4}), ("lr 3e-3", {"lr": 3e-3}),
        ("augment 0", {"augment_strength": 0.0}), ("augment 2", {"augment_strength": 2.0}),
        ("label smoothing 0.1", {"label_smoothing": 0.1}),
        ("head dropout 0.3", {"head_dropout": 0.3}),
        ("batchnorm train", {"batchnorm": "train"}),
    ],
    "lpft": [   # phase 2's settings; the probe (phase 1) is the features recipe at --probe-lr
        ("default", {}),
        ("lr 3e-5", {"lr": 3e-5}), ("lr 3e-4", {"lr": 3e-4}),
        ("gradual unfreezing", {"unfreeze": "gradual"}),
        ("batchnorm train", {"batchnorm": "train"}),
    ],
}
METRICS = [("val", "roc_auc"), ("val", "accuracy"), ("test", "roc_auc"), ("test", "accuracy")]


def run_variant(args, name: str, settings: dict, seed: int) -> dict:
    out = Path(args.out) / args.strategy / name.replace(" ", "_") / f"seed{seed}"
    options = dict(data=args.data, model=args.model, strategy=args.strategy, seed=seed, split_seed=0,
                   max_images=args.max_images, image_size=args.image_size, threads=args.threads,
                   progress=False, resume=True, out=str(out))
    if args.epochs:
        options["epochs"] = args.epochs
    options.update(settings)
    run = tl.train(**options)   # a finished run is reused as it is: check it is this recipe
    saved, wanted = run.read_config()["settings"], tl.TrainConfig(**options).to_dict()
    # features: the backbone's BatchNorm is frozen whatever `batchnorm` says (older runs recorded "train")
    ignored = {"out", "resume", "progress", "threads"} | ({"batchnorm"} if args.strategy == "features" else set())
    differ = [k for k in wanted if k in saved and k not in ignored and saved[k] != wanted[k]]
    if differ:
        sys.exit(f"error: {out} holds a run with other settings ({', '.join(differ)}); delete it or use another --out")
    metrics = run.read_metrics()
    row = {"variant": name, "seed": seed, "seconds": round(metrics["seconds"]["total"], 1),
           "val_loss": metrics["val"]["loss"], "best_epoch": metrics["best_epoch"]}
    # accuracy at the run's decision threshold (binary: chosen on validation; metrics[split] itself is at 0.5)
    row.update({f"{split}_{key}": metrics[split].get("at_threshold", metrics[split])[key] for split, key in METRICS})
    return row


def mean_ci(values: list[float]) -> tuple[float, float, float, float]:
    """mean, sd, and the 95% t-interval of the mean (sd and interval 0 for a single value)."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, 0.0, mean, mean
    sd = statistics.stdev(values)
    half = stats.t.ppf(0.975, len(values) - 1) * sd / len(values) ** 0.5
    return mean, sd, mean - half, mean + half


def summarise(rows: list[dict], names: list[str]) -> list[dict]:
    default = {r["seed"]: r for r in rows if r["variant"] == "default"}
    table = []
    for name in names:
        mine = [r for r in rows if r["variant"] == name]
        entry = {"variant": name, "seeds": len(mine), "val_loss": statistics.fmean(r["val_loss"] for r in mine),
                 "seconds": statistics.fmean(r["seconds"] for r in mine)}
        for split, key in METRICS:
            entry[f"{split}_{key}"] = mean_ci([r[f"{split}_{key}"] for r in mine])
        paired = [r["val_roc_auc"] - default[r["seed"]]["val_roc_auc"] for r in mine if r["seed"] in default]
        entry["val_auc_vs_default"] = mean_ci(paired) if paired and name != "default" else None
        table.append(entry)
    return table


AUC_TIE, LOSS_GAIN = 0.001, 0.05


def choose(table: list[dict]) -> dict:
    """The best mean validation AUC; among those within AUC_TIE of it, the lowest validation loss."""
    best = max(e["val_roc_auc"][0] for e in table)
    close = [e for e in table if e["val_roc_auc"][0] >= best - AUC_TIE]
    return min(close, key=lambda e: e["val_loss"])


def beats_default(chosen: dict, default: dict) -> bool:
    """Worth changing the default for: validation AUC higher by more than the tie margin, or as good with a
    validation loss at least LOSS_GAIN lower. Smaller differences are seed noise on one split."""
    if chosen is default:
        return False
    return (chosen["val_roc_auc"][0] > default["val_roc_auc"][0] + AUC_TIE
            or chosen["val_loss"] <= (1 - LOSS_GAIN) * default["val_loss"])


def markdown(table: list[dict], chosen: dict) -> str:
    def cell(stat):
        mean, sd, lo, hi = stat
        return f"{mean:.4f} ± {sd:.4f} [{lo:.4f}, {hi:.4f}]"

    lines = ["| recipe | seeds | val AUC | val acc | val loss | test AUC | test acc | Δ val AUC vs default | s/run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        diff = e["val_auc_vs_default"]
        name = f"**{e['variant']}** (chosen)" if e is chosen else e["variant"]
        lines.append(f"| {name} | {e['seeds']} | {cell(e['val_roc_auc'])} | {cell(e['val_accuracy'])} | "
                     f"{e['val_loss']:.4f} | {cell(e['test_roc_auc'])} | {cell(e['test_accuracy'])} | "
                     f"{'' if diff is None else f'{diff[0]:+.4f} [{diff[2]:+.4f}, {diff[3]:+.4f}]'} | "
                     f"{e['seconds']:.0f} |")
    return "\n".join(lines)


def under_shifts(args, names: list[str]) -> str:
    """Test AUC and accuracy of these variants' runs on every degraded copy of the test split (mean ± sd)."""
    folder = Path(args.out) / args.strategy
    runs = {name: [tl.RunDir(folder / name.replace(" ", "_") / f"seed{seed}") for seed in range(args.seeds)]
            for name in names}
    items = test_split(next(iter(runs.values()))[0])
    cells = {}
    for shift, degrade in COVARIATE.items():
        slug = shift.replace(" ", "_").replace("%", "pct")
        data = write_set(folder / "shift-sets" / slug, items, degrade)
        for name, seeds in runs.items():
            scores = [tl.evaluate(run, data=data, name=f"shift-{slug}", shift=False, n_boot=20, progress=False)
                      for run in seeds]
            cells[shift, name] = [(r["roc_auc"], r.get("at_threshold", r)["accuracy"]) for r in scores]
        print(f"shift {shift}: " + "; ".join(f"{name} AUC {statistics.fmean(a for a, _ in cells[shift, name]):.4f}"
                                            for name in names), flush=True)
    lines = ["| shift | " + " | ".join(f"{name}: test AUC / accuracy" for name in names) + " |",
             "|---|" + "---|" * len(names)]
    for shift in COVARIATE:
        row = []
        for name in names:
            aucs, accs = zip(*cells[shift, name])
            row.append(f"{statistics.fmean(aucs):.4f} ± {statistics.pstdev(aucs):.4f} / "
                       f"{statistics.fmean(accs):.4f} ± {statistics.pstdev(accs):.4f}")
        lines.append(f"| {shift} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/chest_xray"))
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--strategy", default="features", choices=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--variants", help="comma list of variant names to run (default: all of the strategy's)")
    parser.add_argument("--epochs", type=int, help="the default recipe's epochs (default: the strategy's)")
    parser.add_argument("--max-images", type=int, help="at most this many images per split (default: all)")
    parser.add_argument("--image-size", type=int, help="default: the model's own")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", required=True, help="folder for the runs and the tables")
    parser.add_argument("--shifts", action="store_true",
                        help="also score the default and the chosen recipe on degraded copies of the test split")
    args = parser.parse_args(argv)

    variants = VARIANTS[args.strategy]
    if args.variants:
        wanted = ["default", *[v.strip() for v in args.variants.split(",")]]
        unknown = sorted(set(wanted) - {name for name, _ in variants})
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {[name for name, _ in variants]}")
        variants = [v for v in variants if v[0] in wanted]
    print(f"{args.model} {args.strategy}: defaults {STRATEGY_DEFAULTS[args.strategy]}, {len(variants)} recipes x "
          f"{args.seeds} seeds, data {args.data}, max images {args.max_images or 'all'}", flush=True)
    rows = []
    for name, settings in variants:
        for seed in range(args.seeds):
            row = run_variant(args, name, settings, seed)
            rows.append(row)
            print(f"{name:22s} seed {seed}: val AUC {row['val_roc_auc']:.4f} acc {row['val_accuracy']:.4f} | "
                  f"test AUC {row['test_roc_auc']:.4f} acc {row['test_accuracy']:.4f} ({row['seconds']:.0f} s of training)",
                  flush=True)
    table = summarise(rows, [name for name, _ in variants])
    chosen = choose(table)
    text = markdown(table, chosen)
    print(text)
    out = Path(args.out)
    (out / f"recipes-{args.strategy}.md").write_text(text + "\n")
    (out / f"recipes-{args.strategy}.json").write_text(json.dumps(
        {"args": vars(args), "runs": rows, "table": table, "chosen": chosen["variant"]}, indent=2))
    default = next(e for e in table if e["variant"] == "default")
    if args.shifts:
        shifted = under_shifts(args, list(dict.fromkeys(["default", chosen["variant"]])))
        print(shifted)
        (out / f"recipes-{args.strategy}-shifts.md").write_text(shifted + "\n")
    print(f"SUMMARY strategy={args.strategy} chosen={chosen['variant'].replace(' ', '_')} "
          f"change_default={'yes' if beats_default(chosen, default) else 'no'} "
          f"val_auc={chosen['val_roc_auc'][0]:.4f} test_auc={chosen['test_roc_auc'][0]:.4f} "
          f"test_acc={chosen['test_accuracy'][0]:.4f} default_test_auc={default['test_roc_auc'][0]:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
