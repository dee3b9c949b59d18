#!/usr/bin/env python
"""Which recipe should a strategy's defaults be? Evidence chosen on validation only, over several seeds.

    python benchmarks/recipes.py --strategy features --seeds 3 --out /scratch/recipes
    python benchmarks/recipes.py --strategy finetune --seeds 3 --max-images 600 --image-size 128 --out /scratch/recipes
    python benchmarks/recipes.py --strategy features --seeds 3 --shifts --out /scratch/recipes

For one model and strategy it trains the default recipe and one-setting-at-a-time variants of it (learning rate,
epochs, augmentation, preprocessing, label smoothing, head dropout, image size, model, weight averaging,
mixup/cutmix, BatchNorm statistics, gradual unfreezing; `--variants` picks some), each with
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

--shifts: selection that does not fool itself. Every run (all variants, all seeds) is also scored, through
`transferlab.evaluate(run, data=SET)`, on the shift harness's degraded copies (benchmarks/shift.py FAMILIES:
intensity = gamma 0.6/1.6, contrast 0.6; degradation = blur, noise, JPEG, resolution, crop; acquisition = the
three "new hospital" looks) of a class-stratified subset (--shift-images N, default 400, the same images for
every run) of the VALIDATION split, used to choose, and of the carved TEST split, used to report; the sets are
made once under --out/STRATEGY/shift-sets and finished evaluations are reused. Leave one family out: for each
family, among the variants whose clean validation AUC is not below the default's beyond seed noise (paired over
seeds, 95% t-interval), choose the best mean AUC on that family's validation copies (ties within 0.001: lower
validation loss), and report it against the default on the OTHER families' test copies (mean AUC, paired
difference with its 95% interval, worst-shift accuracy at the run's threshold, clean test accuracy). A variant
becomes the recommended default only when, in every fold it is chosen in, its held-out AUC difference has its
95% interval above 0 and its clean test accuracy is not lower beyond its CI (paired upper bound >= 0), on at
least 3 seeds; several: the one chosen in most folds, then the best held-out AUC. Prints and writes
recipes-<strategy>-shifts.md/.json (every per-run number) and, after SUMMARY, a last line:
  SHIFTS strategy=<s> recommended=<variant|default> change_default=<yes|no> default_mean_shift_auc=<m>
         default_worst_acc=<m> recommended_mean_shift_auc=<m> recommended_worst_acc=<m>
A variant that sets its own model (efficientnet_lite1/2) runs at that model's native image size; --image-size
applies to the others. Variants naming settings this transferlab lacks are refused before anything trains.
An ensemble variant ("ensemble lite0+1+2" for features, "ensemble lite0+1" for finetune; its members are run with
it) is the mean of its member variants' runs of the same seed (`transferlab.ensemble`, threshold chosen on
validation), scored on the shift sets from its members' results; it is compared with each member, paired over
seeds, and never chosen as a default (a default is one model's recipe). With one seed no interval is printed and
--shifts recommends no change (it needs 3 seeds).

--first-seed K runs seeds K..K+N-1; --reuse FILE takes the runs (and their shift scores) of an earlier
recipes-<strategy>[-shifts].json of this script, made with the same model, strategy and budget, for the variant
and seed pairs not run now, so that seeds trained in another session count without training them again.
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_shifts import AUC_TIE, SHIFT_IMAGES, cell, delta, mean_ci, slug, under_shifts  # noqa: E402

import transferlab as tl  # noqa: E402
from transferlab.config import STRATEGY_DEFAULTS  # noqa: E402
from transferlab.settings import changed_settings  # noqa: E402

# One setting changed from the default at a time: (name, settings). Learning rates bracket the default.
VARIANTS = {
    "features": [
        ("default", {}),
        ("lr 3e-4", {"lr": 3e-4}), ("lr 1e-3", {"lr": 1e-3}), ("lr 1e-2", {"lr": 1e-2}),
        ("epochs 60", {"epochs": 60, "patience": 15}),
        ("label smoothing 0.1", {"label_smoothing": 0.1}),
        ("head dropout 0.3", {"head_dropout": 0.3}),
        ("image size 288", {"image_size": 288}),
        ("feature views 1", {"feature_views": 1}),   # the default until 2026-12-05: no augmented views
        ("preprocess equalize", {"preprocess": "equalize"}), ("preprocess clahe", {"preprocess": "clahe"}),
        ("efficientnet_lite1", {"model": "efficientnet_lite1"}), ("efficientnet_lite2", {"model": "efficientnet_lite2"}),
        ("ensemble lite0+1+2", {"ensemble": ["default", "efficientnet_lite1", "efficientnet_lite2"]}),
    ],
    "finetune": [
        ("default", {}),
        ("lr 3e-4", {"lr": 3e-4}), ("lr 3e-3", {"lr": 3e-3}),
        ("augment 0", {"augment_strength": 0.0}), ("augment 2", {"augment_strength": 2.0}),
        ("label smoothing 0.1", {"label_smoothing": 0.1}),
        ("head dropout 0.3", {"head_dropout": 0.3}),
        ("batchnorm train", {"batchnorm": "train"}),
        ("augment xray", {"augment": "xray"}), ("preprocess clahe", {"preprocess": "clahe"}),
        ("weight averaging ema", {"weight_averaging": "ema"}), ("weight averaging swa", {"weight_averaging": "swa"}),
        ("mixup 0.2", {"mixup": 0.2}), ("cutmix 1.0", {"cutmix": 1.0}),
        ("efficientnet_lite1", {"model": "efficientnet_lite1"}),
        ("ensemble lite0+1", {"ensemble": ["default", "efficientnet_lite1"]}),
    ],
    "lpft": [   # phase 2's settings; the probe (phase 1) is the features recipe at --probe-lr
        ("default", {}),
        ("lr 3e-5", {"lr": 3e-5}), ("lr 3e-4", {"lr": 3e-4}),
        ("gradual unfreezing", {"unfreeze": "gradual"}),
        ("batchnorm train", {"batchnorm": "train"}),
        ("augment xray", {"augment": "xray"}), ("weight averaging ema", {"weight_averaging": "ema"}),
    ],
}
METRICS = [("val", "roc_auc"), ("val", "accuracy"), ("test", "roc_auc"), ("test", "accuracy")]
LOSS_GAIN = 0.05   # choosing on validation: a loss this much lower is a gain (AUC_TIE: AUCs that tie)
# --shifts
def run_folder(args, name: str, seed: int) -> Path:
    return Path(args.out) / args.strategy / slug(name) / f"seed{seed}"


def variant_options(args, settings: dict, seed: int, out: Path) -> dict:
    """tl.train's settings for one variant and seed. --image-size applies to every variant except one that sets
    its own image_size or model (that model runs at its own native size unless the variant says otherwise)."""
    own_size = "image_size" in settings or "model" in settings
    options = dict(data=args.data, model=args.model, strategy=args.strategy, seed=seed, split_seed=0,
                   max_images=args.max_images, image_size=None if own_size else args.image_size,
                   threads=args.threads, progress=False, resume=True, out=str(out))
    if args.epochs:
        options["epochs"] = args.epochs
    options.update(settings)
    return options


def unknown_settings(args, variants: list[tuple[str, dict]]) -> list[str]:
    """'variant: why' for each variant this transferlab cannot run (a setting it does not have or a value it
    does not allow), checked before anything is trained. An ensemble's members are variants checked on their own."""
    bad = []
    for name, settings in variants:
        if "ensemble" in settings:
            continue
        try:
            tl.TrainConfig(**variant_options(args, settings, 0, run_folder(args, name, 0)))
        except (TypeError, tl.TransferlabError) as e:
            bad.append(f"{name}: {e}")
    return bad


def run_variant(args, name: str, settings: dict, seed: int) -> dict:
    if "ensemble" in settings:
        return run_ensemble(args, name, settings["ensemble"], seed)
    out = run_folder(args, name, seed)
    options = variant_options(args, settings, seed, out)
    run = tl.train(**options)   # a finished run is reused as it is: check it is this recipe
    saved, wanted = run.read_config()["settings"], tl.TrainConfig(**options).to_dict()
    # as --resume and a study compare runs (settings newer than the run: what it ran with); features: the
    # backbone's BatchNorm is frozen whatever `batchnorm` says (older runs recorded "train")
    differ = [c for c in changed_settings(saved, wanted)
              if not (args.strategy == "features" and c.startswith("batchnorm "))]
    if differ:
        sys.exit(f"error: {out} holds a run with other settings ({', '.join(differ)}); delete it or use another --out")
    return result_row(name, seed, run.read_metrics())


def run_ensemble(args, name: str, members: list[str], seed: int) -> dict:
    """The mean of the member variants' runs of this seed (tl.ensemble: its threshold chosen on validation), made
    again when a member finished after it. Compared with single models; never a candidate default."""
    runs = [run_folder(args, member, seed) for member in members]
    out = tl.RunDir(run_folder(args, name, seed))
    if not out.metrics.exists() or any(out.metrics.stat().st_mtime < tl.RunDir(r).metrics.stat().st_mtime
                                       for r in runs):
        tl.ensemble(runs, out.path, k=len(runs))
    return {**result_row(name, seed, out.read_metrics()), "members": members}


def result_row(name: str, seed: int, metrics: dict) -> dict:
    row = {"variant": name, "seed": seed, "seconds": round(metrics["seconds"]["total"], 1),
           "val_loss": metrics["val"]["loss"], "best_epoch": metrics["best_epoch"]}
    # accuracy at the run's decision threshold (binary: chosen on validation; metrics[split] itself is at 0.5)
    row.update({f"{split}_{key}": metrics[split].get("at_threshold", metrics[split])[key] for split, key in METRICS})
    return row


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
        entry["ensemble"] = any("members" in r for r in mine)
        table.append(entry)
    return table


def choose(table: list[dict]) -> dict:
    """The best mean validation AUC; among those within AUC_TIE of it, the lowest validation loss. Ensembles are
    compared, never chosen: a default is one model's recipe."""
    table = [e for e in table if not e["ensemble"]]
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
    lines = ["| recipe | seeds | val AUC | val acc | val loss | test AUC | test acc | Δ val AUC vs default | s/run |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        diff = e["val_auc_vs_default"]
        name = f"**{e['variant']}** (chosen)" if e is chosen else e["variant"]
        lines.append(f"| {name} | {e['seeds']} | {cell(e['val_roc_auc'])} | {cell(e['val_accuracy'])} | "
                     f"{e['val_loss']:.4f} | {cell(e['test_roc_auc'])} | {cell(e['test_accuracy'])} | "
                     f"{'' if diff is None else delta(diff)} | "
                     f"{e['seconds']:.0f} |")
    return "\n".join(lines)


REUSE_MUST_MATCH = ("model", "strategy", "epochs", "max_images", "image_size", "shift_images")


def reused_rows(args, parser) -> list[dict]:
    """The runs of --reuse, refused in one line when that file was made with another model, strategy or budget
    (or, with --shifts, has no shift scores)."""
    if args.reuse is None:
        return []
    try:
        earlier = json.loads(Path(args.reuse).read_text())
        rows, their = earlier["runs"], earlier["args"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        parser.error(f"--reuse {args.reuse}: not an output JSON of this script ({e})")
    differ = [k for k in REUSE_MUST_MATCH if their.get(k) != getattr(args, k)]
    if differ:
        parser.error(f"--reuse {args.reuse} was made with other {', '.join(differ)} "
                     f"({', '.join(f'{k}={their.get(k)!r}' for k in differ)})")
    if args.shifts and any("shifts" not in r for r in rows):
        parser.error(f"--reuse {args.reuse} has no shift scores (it was made without --shifts)")
    return rows


# --- --shifts: choose on one family of shifts (validation copies), report on the others (test copies) ---------------

def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/chest_xray"))
    parser.add_argument("--model", default="efficientnet_lite0")
    parser.add_argument("--strategy", default="features", choices=sorted(VARIANTS))
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="run seeds FIRST_SEED..FIRST_SEED+SEEDS-1")
    parser.add_argument("--reuse", help="an earlier output JSON of this script whose runs count too "
                                         "(same model, strategy and budget; see above)")
    parser.add_argument("--variants", help="comma list of variant names to run (default: all of the strategy's)")
    parser.add_argument("--epochs", type=int, help="the default recipe's epochs (default: the strategy's)")
    parser.add_argument("--max-images", type=int, help="at most this many images per split (default: all)")
    parser.add_argument("--image-size", type=int, help="default: the model's own")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", required=True, help="folder for the runs and the tables")
    parser.add_argument("--shifts", action="store_true",
                        help="also score every run on degraded copies of the validation and test splits and choose "
                             "leaving one family of shifts out (see above)")
    parser.add_argument("--shift-images", type=int, default=SHIFT_IMAGES,
                        help=f"at most this many images (class-stratified, the same for every run) per shift set "
                             f"(default {SHIFT_IMAGES})")
    args = parser.parse_args(argv)
    if args.shift_images is not None and args.shift_images < 2:
        parser.error("--shift-images must be at least 2")
    if args.first_seed < 0:
        parser.error("--first-seed must be 0 or more")
    args.command = "python benchmarks/recipes.py " + shlex.join(sys.argv[1:] if argv is None else argv)

    variants = VARIANTS[args.strategy]
    if args.variants:
        wanted = ["default", *[v.strip() for v in args.variants.split(",")]]
        unknown = sorted(set(wanted) - {name for name, _ in variants})
        if unknown:
            parser.error(f"unknown variants {unknown}; known: {[name for name, _ in variants]}")
        wanted += [m for name, settings in variants if name in wanted for m in settings.get("ensemble", [])]
        variants = [v for v in variants if v[0] in wanted]
    bad = unknown_settings(args, variants)
    if bad:
        parser.error("this transferlab cannot run " + "; ".join(bad) + " (leave them out with --variants)")
    models = [f"{name} ({settings['model']}, at {settings.get('image_size') or 'its own'} px)"
              for name, settings in variants if "model" in settings]
    print(f"{args.model} {args.strategy}: defaults {STRATEGY_DEFAULTS[args.strategy]}, {len(variants)} recipes x "
          f"{args.seeds} seeds, data {args.data}, max images {args.max_images or 'all'}, image size "
          f"{args.image_size or 'the model’s own'}"
          + (f"; variants with another model: {', '.join(models)}" if models else ""), flush=True)
    reused = reused_rows(args, parser)
    rows = []
    for name, settings in variants:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            row = run_variant(args, name, settings, seed)
            rows.append(row)
            print(f"{name:22s} seed {seed}: val AUC {row['val_roc_auc']:.4f} acc {row['val_accuracy']:.4f} | "
                  f"test AUC {row['test_roc_auc']:.4f} acc {row['test_accuracy']:.4f} ({row['seconds']:.0f} s of training)",
                  flush=True)
    ran = list(rows)
    names = [name for name, _ in variants]
    done = {(r["variant"], r["seed"]) for r in ran}
    rows += [r for r in reused if r["variant"] in names and (r["variant"], r["seed"]) not in done]
    rows.sort(key=lambda r: (names.index(r["variant"]), r["seed"]))
    table = summarise(rows, names)
    chosen = choose(table)
    text = markdown(table, chosen)
    print(text)
    out = Path(args.out)
    (out / f"recipes-{args.strategy}.md").write_text(text + "\n")
    (out / f"recipes-{args.strategy}.json").write_text(json.dumps(
        {"args": vars(args), "runs": rows, "table": table, "chosen": chosen["variant"]}, indent=2))
    default = next(e for e in table if e["variant"] == "default")
    runs = [tl.RunDir(run_folder(args, r["variant"], r["seed"])) for r in ran]
    shifts_line = under_shifts(args, rows, runs) if args.shifts else None
    print(f"SUMMARY strategy={args.strategy} chosen={chosen['variant'].replace(' ', '_')} "
          f"change_default={'yes' if beats_default(chosen, default) else 'no'} "
          f"val_auc={chosen['val_roc_auc'][0]:.4f} test_auc={chosen['test_roc_auc'][0]:.4f} "
          f"test_acc={chosen['test_accuracy'][0]:.4f} default_test_auc={default['test_roc_auc'][0]:.4f}")
    if shifts_line:
        print(shifts_line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
