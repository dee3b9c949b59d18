"""Command line: argument parsing only; every command calls the Python API."""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import get_args, get_origin, get_type_hints

from .config import (BATCHNORM, LR_FIND_RANGE, STRATEGIES, STRATEGY_DEFAULTS, TTA_HELP, UNFREEZE, TrainConfig, parse_lr,
                     read_settings)
from .distributed import is_global_zero
from .errors import TransferlabError
from .formatting import fmt
from .loggers import LOGGERS
from .models.spec import SOURCES

TRAIN_OPTIONS = {
    # field: (flags, help); "(default: ...)" is added from TrainConfig (DEFAULT_WORDS where it is None)
    "model": ("--model", "model name: any torchvision classification model, efficientnet_lite0/1/2, or "
                         "timm:NAME[.TAG] for a timm model (see `transferlab models [--source timm]`)"),
    "strategy": ("--strategy", "finetune: train the whole network; features: frozen backbone as a fixed "
                               "feature extractor, only the new head trains; lpft: features for --probe-epochs, "
                               "then finetune from that head (linear probing, then fine-tuning)"),
    "weights": ("--weights", "'default' (ImageNet weights), 'none' (random init: the no-transfer control), "
                             "or a torchvision weights name such as IMAGENET1K_V2"),
    "weights_dir": ("--weights-dir", "folder holding weight files for offline use: torchvision's files, timm's as "
                                     "DIR/timm/NAME.TAG/model.safetensors"),
    "epochs": ("--epochs", "maximum epochs (lpft: of phase 2, fine-tuning)"),
    "batch_size": ("--batch-size", "batch size (features: of the head's optimizer steps on cached features)"),
    "lr": ("--lr", "learning rate of the new head (AdamW, cosine schedule; lpft: in phase 2), or auto: the "
                   "suggestion of Lightning's LR finder (`transferlab lr-find`), run first and recorded in "
                   "config.json and lr_find.png"),
    "backbone_lr_factor": ("--backbone-lr-factor", "finetune, lpft: backbone learning rate = lr x this"),
    "probe_epochs": ("--probe-epochs", "lpft: epochs of phase 1, the head on cached features (all run, the best "
                                       "on validation kept)"),
    "probe_lr": ("--probe-lr", "lpft: learning rate of phase 1"),
    "unfreeze": ("--unfreeze", "finetune, lpft: none (every layer trains from the start) or gradual (the head "
                               "first, then one more backbone block every --unfreeze-every epochs, top down, each "
                               "block's learning rate --block-lr-decay x the one above it)"),
    "batchnorm": ("--batchnorm", "finetune, lpft: train (BatchNorm layers normalise with each batch's statistics and "
                                 "update their running ones, as usual) or frozen (they keep normalising with the "
                                 "pretrained running statistics; their scale and shift still train): lpft's phase 2 "
                                 "then starts exactly from the head phase 1 fitted (features: always frozen; "
                                 "--weights none: train, there are no pretrained statistics)"),
    "unfreeze_every": ("--unfreeze-every", "--unfreeze gradual: epochs between unfreezing one more block"),
    "block_lr_decay": ("--block-lr-decay", "--unfreeze gradual: learning rate of each deeper backbone block = this x "
                                           "the one above it (the top block: lr x --backbone-lr-factor)"),
    "weight_decay": ("--weight-decay", "AdamW weight decay"),
    "patience": ("--patience", "early stopping: epochs without improvement of --monitor on validation"),
    "monitor": ("--monitor", "validation metric for early stopping and best-epoch selection: "
                             "val_loss, val_auc or val_balanced_accuracy"),
    "balance": ("--balance", "class imbalance: weights (class-weighted loss), sampler (balanced batches), none"),
    "augment_strength": ("--augment-strength", "finetune: scale of the training augmentation's ranges (1: rotation "
                                               "10 degrees, shift 6%, zoom 10%, brightness/contrast 20%)"),
    "label_smoothing": ("--label-smoothing", "label smoothing of the training loss (validation loss is plain "
                                             "cross-entropy, comparable across recipes)"),
    "head_dropout": ("--head-dropout", "dropout on the new head's input while training"),
    "image_size": ("--image-size", "input resolution"),
    "val_fraction": ("--val-fraction", "share of train/ carved out as a stratified, patient-disjoint validation split"),
    "test_fraction": ("--test-fraction", "when the data has no test/ folder, carve a stratified, patient-disjoint "
                                         "test split of this share (0: no test split)"),
    "official_val": ("--official-val", "what to do with an official val/ folder: auto (keep it if it has >= 100 "
                                       "images, else merge it into train before carving), keep, merge, drop"),
    "patient_pattern": ("--patient-pattern", "regex with a named group 'patient' that finds the patient id in a "
                                             "file name (images without one are their own patient)"),
    "manifest": ("--manifest", "CSV of path,label[,patient_id][,split] (paths inside --data) instead of class folders"),
    "positive_class": ("--positive-class", "two classes only: the positive class (three or more classes are "
                                           "decided by the most probable class)"),
    "threshold_method": ("--threshold-method", "two classes: how the decision threshold is chosen on validation, "
                                               "youden or f1"),
    "seed": ("--seed", "seed for initialisation, data order and augmentation (and the splits, unless --split-seed)"),
    "split_seed": ("--split-seed", "seed for the validation/test split"),
    "device": ("--device", "auto (CUDA if available, else CPU), cpu, cuda or cuda:N"),
    "precision": ("--precision", "auto (mixed precision on CUDA, 32-bit on CPU) or a Lightning precision, e.g. 32-true"),
    "devices": ("--devices", "processes per node, one per GPU (or CPU processes with --device cpu): data parallel "
                             "(DDP) when devices x nodes > 1; --batch-size stays the global batch"),
    "num_nodes": ("--num-nodes", "machines (e.g. under Slurm's srun or torchrun), each running --devices processes"),
    "num_workers": ("--num-workers", "data-loading worker processes"),
    "threads": ("--threads", "CPU threads for torch; on a machine busy with other work, fewer threads than cores can "
                             "be several times faster"),
    "max_images": ("--max-images", "use at most this many images per split (quick trials)"),
    "cache_dir": ("--cache-dir", "cache of decoded images and features"),
    "logger": ("--logger", "experiment logs through Lightning's loggers, beside history.csv: tensorboard (RUN/logs/"
                           "tensorboard), csv (RUN/logs/csv), mlflow ($MLFLOW_TRACKING_URI, else "
                           "RUN/../mlflow.db) or wandb (offline unless WANDB_MODE or WANDB_API_KEY is set); "
                           "repeatable"),
    "experiment": ("--experiment", "experiment name the loggers file the run under (MLflow experiment, W&B project)"),
}
DEFAULT_WORDS = {   # what a None default means
    "weights_dir": "none: $TRANSFERLAB_WEIGHTS_DIR, then $TORCH_HOME/hub/checkpoints or, for timm, the Hugging "
                   "Face cache",
    "image_size": "the model's own, e.g. 224", "manifest": "none: class folders",
    "positive_class": "the class not called NORMAL", "split_seed": "--seed",
    "num_workers": "0 on CPU, where images are read from the memory-mapped cache; else up to 8",
    "threads": "torch's own count, reduced to the CPUs free when the run starts",
    "max_images": "all", "cache_dir": "$TRANSFERLAB_CACHE, else ~/.cache/transferlab",
    "logger": "none: history.csv only", "experiment": "transferlab",
}
FLAGS = {"skip_bad": ("--skip-bad", "skip unreadable images (listed in bad_files.csv) instead of stopping"),
         "augment": ("--no-augment", "finetune: no training augmentation"),
         "compile": ("--compile", "torch.compile the trained network (faster steps on a GPU after a slow first one)"),
         "resume": ("--resume", "continue an interrupted run from its last checkpoint"),
         "progress": ("--no-progress", "no progress bars")}


CHOICES = {"strategy": STRATEGIES, "monitor": ("val_loss", "val_auc", "val_balanced_accuracy"),
           "balance": ("weights", "sampler", "none"), "official_val": ("auto", "keep", "merge", "drop"),
           "threshold_method": ("youden", "f1"), "logger": tuple(LOGGERS), "unfreeze": UNFREEZE,
           "batchnorm": BATCHNORM}


def _lr_arg(text: str) -> float | str:
    try:
        return parse_lr(text)
    except TransferlabError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


TYPES = {"lr": _lr_arg}   # where the annotation's first type is not the argument's


def _field_type(field: str) -> type:
    """int for `int | None`, etc.: argument types come from TrainConfig's annotations."""
    hint = get_type_hints(TrainConfig)[field]
    return next((t for t in get_args(hint) if t is not type(None)), hint)


def default_text(field: str) -> str:
    """TrainConfig's default of `field` as --help shows it: per strategy where they differ, words for None."""
    if field in STRATEGY_DEFAULTS["features"]:
        values = {s: STRATEGY_DEFAULTS[s][field] for s in STRATEGIES}
        if len(set(values.values())) == 1:
            return str(values[STRATEGIES[0]])
        return ", ".join(f"{s} {v}" for s, v in values.items())
    value = getattr(TrainConfig(), field)
    return DEFAULT_WORDS[field] if value is None else str(value)


def add_train_options(parser: argparse.ArgumentParser, *, for_study: bool = False,
                      defaults: dict[str, str] | None = None, skip: tuple[str, ...] = ()) -> None:
    """Every TrainConfig setting as an option; unset options keep TrainConfig's (per-strategy) defaults.
    `defaults`: the default text of options whose default the caller sets itself (a study's split seed);
    `skip`: settings the command does not use."""
    for field, (flag, help_text) in TRAIN_OPTIONS.items():
        if (for_study and field in ("model", "strategy", "seed", "devices", "num_nodes")) or field in skip:
            continue
        shown = (defaults or {}).get(field) or default_text(field)
        kind = _field_type(field)
        repeatable = get_origin(kind) is list   # a list setting: the option once per item
        parser.add_argument(flag, dest=field, type=TYPES.get(field) or (get_args(kind)[0] if repeatable else kind),
                            action="append" if repeatable else "store", choices=CHOICES.get(field),
                            default=argparse.SUPPRESS, help=f"{help_text} (default: {shown})".replace("%", "%%"))
    for field, (flag, help_text) in FLAGS.items():
        if (for_study and field == "resume") or field in skip:
            continue
        store = "store_false" if flag.startswith("--no-") else "store_true"
        parser.add_argument(flag, dest=field, action=store, default=argparse.SUPPRESS, help=help_text)


class DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to every option that has a default and does not state it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "(default" not in text and action.default is not argparse.SUPPRESS
                and action.default is not None and not isinstance(action.default, bool)):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="transferlab",
        description="Which ImageNet-pretrained ConvNet, and which transfer strategy, works best on your "
                    "medical images - and why.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("train", help="train one model with one strategy into a run directory",
                       description="Train one model with one transfer strategy. Writes config.json, splits.csv, "
                                   "history.csv, metrics.json, predictions.csv and model.safetensors to --out.")
    p.add_argument("--config", default=argparse.SUPPRESS,
                   help="YAML or JSON file of these settings (e.g. one that `study --plan` wrote); options given here "
                        "override it (default: none)")
    p.add_argument("--data", default=argparse.SUPPRESS, help="dataset folder: ROOT/{train,val,test}/CLASS/* or "
                                                             "ROOT/CLASS/* (required, here or in --config)")
    p.add_argument("--out", default=argparse.SUPPRESS, help="run directory to write (required, here or in --config)")
    add_train_options(p)

    min_lr, max_lr, steps = LR_FIND_RANGE
    p = sub.add_parser("lr-find", help="Lightning's learning-rate range test: a suggested --lr for train",
                       description="From the model as `train` would start it (lpft: after its phase 1), each "
                                   "training step raises the learning rate exponentially from --min-lr to --max-lr "
                                   "until the loss diverges; prints the learning rate where the loss fell fastest "
                                   "(Lightning's suggestion) and writes lr_find.png, lr_find.csv and lr_find.json "
                                   "to --out. `train --lr auto` does the same before it trains.")
    p.add_argument("--config", default=argparse.SUPPRESS,
                   help="YAML or JSON file of training settings; options given here override it (default: none)")
    p.add_argument("--data", default=argparse.SUPPRESS, help="dataset folder (required, here or in --config)")
    p.add_argument("--out", default=argparse.SUPPRESS, help="folder for lr_find.png, lr_find.csv and lr_find.json "
                                                            "(required, here or in --config)")
    p.add_argument("--min-lr", type=float, default=min_lr, help="learning rate of the first step")
    p.add_argument("--max-lr", type=float, default=max_lr, help="learning rate of the last step")
    p.add_argument("--steps", type=int, default=steps, help="training steps (batches) at most; fewer when the loss "
                                                            "diverges")
    add_train_options(p, skip=("lr", "epochs", "patience", "threshold_method", "logger", "experiment", "resume",
                               "unfreeze_every", "devices", "num_nodes"))

    p = sub.add_parser("study", help="Tasks B-E: every model x strategy x seed, compared, in one HTML report",
                       description="Runs every model under every strategy and seed through `train`, then writes "
                                   "results.csv, summary.csv, report.html and report.md. Run the same command "
                                   "again to continue an interrupted study: finished runs are kept.")
    from .study import add_study_arguments
    add_study_arguments(p)

    p = sub.add_parser("evaluate", help="a finished run on its own split or on any other set of images, with "
                                        "label-free shift estimates",
                       description="Score a finished run. Without --data, the run's own --split (default test) is "
                                   "rebuilt from its settings and seed, whole (a run trained with --max-images is "
                                   "scored on all of that split's images). With another --data, every image is scored "
                                   "(no carving): ROOT/CLASS/*, ROOT/test/CLASS/*, ROOT/{train,val,test}/CLASS/*, "
                                   "--manifest, or a flat folder of images (unlabelled). The decision threshold is "
                                   "the one chosen on the run's validation split. Also estimates, without the "
                                   "target's labels, its class proportions (BBSE, EM), whether its images differ "
                                   "from validation (domain classifier) and the accuracy to expect (ATC, DoC). "
                                   "Writes eval-NAME.json and predictions-NAME.csv into the run directory.")
    p.add_argument("run", help="run directory written by `transferlab train`")
    p.add_argument("--data", help="the set to score (default: the run's own data)")
    p.add_argument("--manifest", help="CSV of path,label[,patient_id][,split] inside --data")
    p.add_argument("--split", help="own data: the split to score (default: test); other data: score only this "
                                   "split folder (default: every image)")
    p.add_argument("--name", help="name in eval-NAME.json (default: from the folder name, or the split)")
    p.add_argument("--adapt", help="label-free adaptation reported beside the plain result: prior (EM-corrected "
                                   "posteriors and threshold), bn (BatchNorm statistics re-estimated on the target), "
                                   "bn+prior; a comma list, or all (default: none)")
    p.add_argument("--tta", type=int, default=1, metavar="N", help=TTA_HELP)
    p.add_argument("--unlabelled", action="store_true", help="treat --data as unlabelled images even if it has "
                                                             "sub-folders (e.g. one folder per patient)")
    p.add_argument("--no-shift", dest="shift", action="store_false", help="skip the shift estimates")
    p.add_argument("--json", action="store_true", help="print the whole result as JSON")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--no-progress", dest="progress", action="store_false")

    p = sub.add_parser("ensemble", help="average the probabilities of the K runs best on validation",
                       description="An ensemble of finished runs (a study's, or run directories named one by one): "
                                   "the mean of the K best runs' probabilities, ranked on validation AUC (then "
                                   "validation loss; never test), with its decision threshold chosen on validation, "
                                   "scored like a run and tested against its best member (McNemar). The runs must "
                                   "share their split, as a study's do. Writes an ensemble directory that "
                                   "`predict` accepts.")
    p.add_argument("runs", nargs="+", help="a study folder, or run directories")
    p.add_argument("--k", type=int, default=3, help="how many runs (default: 3)")
    p.add_argument("--out", help="the ensemble directory (default: STUDY/ensemble-topK for a study; required "
                                 "for run directories)")

    p = sub.add_parser("models", help="Task A: the model catalogue, measured on this machine",
                       description="Parameters, GFLOPs, ImageNet accuracy, weights file and (with --measure) latency, "
                                   "throughput, training-step time and peak memory, measured here. Writes "
                                   "catalog.csv, catalog.json and catalog.png with --out.")
    p.add_argument("names", nargs="*", help="model names (default: every model of --source)")
    p.add_argument("--source", choices=SOURCES, help="models to list when no names are given: timm = every "
                                                     "pretrained timm:NAME.TAG (default: torchvision and "
                                                     "efficientnet_lite)")
    p.add_argument("--filter", help="keep models whose name (without timm:) matches this shell pattern, e.g. "
                                    "'convnext*' (default: all)")
    p.add_argument("--measure", action="store_true", help="time inference and training steps (random weights: "
                                                          "same cost, works offline)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--batch-size", type=int, default=32, help="batch size for throughput and training steps")
    p.add_argument("--repeats", type=int, default=10, help="timed calls per measurement (latency: the fastest, with "
                                                           "the median and 90th percentile as its spread; throughput "
                                                           "and training steps: the median)")
    p.add_argument("--threads", type=int, help="torch CPU threads for every measurement (default: torch's own count)")
    p.add_argument("--image-size", type=int, help="resolution (default: each model's own)")
    p.add_argument("--max-latency-ms", type=float, help="keep models with batch-1 latency at most this")
    p.add_argument("--max-params", type=float, help="keep models with at most this many parameters (e.g. 3e7)")
    p.add_argument("--classes", type=int, default=2, help="classes of the new head: its parameters and the "
                                                          "training-step timings depend on it (default: 2)")
    p.add_argument("--sort", default="acc1", help="column to sort by, e.g. acc1, latency_ms, params_total, gflops")
    p.add_argument("--out", help="folder for catalog.csv, catalog.json and catalog.png")
    p.add_argument("--no-progress", dest="progress", action="store_false")

    p = sub.add_parser("check-data", help="scan a dataset folder and report every problem at once",
                       description="Reads every image; reports class counts, unreadable files, image sizes, "
                                   "duplicates (identical bytes) and patients shared between splits.",
                       epilog=CHECK_DATA_EXIT_CODES)
    p.add_argument("--data", required=True, help="dataset folder: ROOT/{train,val,test}/CLASS/* or ROOT/CLASS/*")
    p.add_argument("--manifest", help="CSV of path,label[,patient_id][,split] instead of class folders")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    from .demo import add_demo_arguments
    from .exporting import add_export_arguments
    from .prediction import add_predict_arguments
    for add_arguments in (add_demo_arguments, add_predict_arguments, add_export_arguments):
        add_arguments(sub)
    for command in sub.choices.values():
        command.formatter_class = DefaultsFormatter
    return parser


CHECK_DATA_EXIT_CODES = ("exit codes: 0 every image is readable and no leakage was found; 1 unreadable images "
                         "(training stops on them unless --skip-bad); 2 the folder cannot be checked (error: ...); "
                         "3 all readable, but possible leakage: identical files in two splits or two classes, or "
                         "patients in more than one split")


def _train_settings(args, leave_out: tuple[str, ...] = ()) -> TrainConfig:
    """The training settings of `args` over those of its --config file; --data and --out required."""
    settings = {k: v for k, v in vars(args).items() if k not in ("command", *leave_out)}
    if "config" in settings:
        settings = {**read_settings(settings.pop("config")), **settings}
    for key in ("data", "out"):
        if not settings.get(key):
            raise TransferlabError(f"--{key} is required (on the command line or in --config)")
    return TrainConfig.from_dict(settings)


def run_train(args) -> None:
    from .training import train

    run = train(_train_settings(args))
    if not is_global_zero():   # DDP: the other processes have nothing new to say
        return
    print(f"run directory: {run.path}")
    print_scores(run)


def print_scores(run) -> None:
    """Validation and test at the run's decision rule, one line each."""
    metrics = run.read_metrics()
    test_split = run.read_config()["data"]["splits"].get("test", "")
    if test_split.startswith("carved"):   # the data has no test/ folder
        print(f"test split {test_split} (the data has no test/ folder; --test-fraction 0 for none)")
    for split in ("val", "test"):
        if split not in metrics:
            continue
        m = metrics[split]
        at = m.get("at_threshold", m)
        line = f"{split:>5}: accuracy {at['accuracy']:.3f}  balanced {fmt(at['balanced_accuracy'])}  "
        if metrics["threshold"] is None:   # three or more classes: the most probable class, no threshold
            print(line + f"macro F1 {m['f1']:.3f}  macro AUC {fmt(m['roc_auc'])}  (n={m['n']}, argmax)")
        else:
            print(line + f"AUC {fmt(m['roc_auc'])}  (n={m['n']}, threshold {metrics['threshold']:.3f} chosen on val)")


def run_lr_find(args) -> None:
    from .lrfind import FILES
    from .training import lr_find

    cfg = _train_settings(args, leave_out=("min_lr", "max_lr", "steps"))
    finding = lr_find(cfg, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps)
    print(f"suggested learning rate: {finding.suggested_lr:.3g}  ({cfg.model} {cfg.strategy}, {finding.steps_run} "
          f"steps from {finding.min_lr:g} to at most {finding.max_lr:g}, {finding.seconds:.1f} s)")
    print(f"written: {', '.join(str(Path(cfg.out) / name) for name in FILES.values())}")
    print(f"use it: transferlab train ... --lr {finding.suggested_lr:.3g}  (or --lr auto)")


def run_ensemble(args) -> None:
    from .ensembles import candidate_runs, ensemble

    candidates, study = candidate_runs(args.runs)
    if not args.out and study is None:
        raise TransferlabError("ensemble: --out is required when the runs are named one by one")
    run = ensemble(candidates, args.out or study / f"ensemble-top{args.k}", k=args.k)
    config, metrics = run.read_config(), run.read_metrics()
    print(f"ensemble of the {args.k} runs best on validation (of {config['ensemble']['candidates']}): {run.path}")
    for m in config["ensemble"]["members"]:
        print(f"  {m['run']}  val AUC {fmt(m['val_roc_auc'])}")
    print_scores(run)
    if "vs_best_run" in metrics:
        t = metrics["vs_best_run"]["test_mcnemar"]
        print(f"test, against its best member: McNemar p = {t['p_value']:.3g} (only the ensemble right on "
              f"{t['only_a_correct']} images, only the member on {t['only_b_correct']})")


def run_evaluate(args) -> None:
    from .analysis.external import evaluate, summary_lines

    result = evaluate(args.run, data=args.data, split=args.split, manifest=args.manifest, name=args.name,
                      adapt=args.adapt, unlabelled=args.unlabelled, shift=args.shift, device=args.device,
                      progress=args.progress, tta=args.tta)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    print("\n".join(summary_lines(result)))
    print(f"written: {result['run']}/eval-{result['name']}.json and predictions-{result['name']}.csv")


def run_study(args) -> None:
    from .study import run_study_command

    run_study_command(args)


def run_models(args) -> None:
    from . import model_catalog as cat
    from .models.registry import list_models, matches

    names = ([n for n in args.names if matches(n, args.filter)] if args.names
             else list_models(args.source, args.filter))
    if not names:
        raise TransferlabError(f"no model matches --filter {args.filter!r}")
    entries = cat.catalog(names, measure=args.measure, device=args.device, batch_size=args.batch_size,
                          repeats=args.repeats, image_size=args.image_size, progress=args.progress,
                          threads=args.threads, num_classes=args.classes)
    budget = dict(max_latency_ms=args.max_latency_ms, max_params=args.max_params)
    shown = cat.sort_entries(cat.filter_entries(entries, **budget), args.sort)
    print(cat.format_table(shown))
    print("\n".join(cat.recommend(entries, **budget)))
    if args.out:
        for path in cat.write_catalog(shown, args.out):
            print(f"wrote {path}")


def run_check_data(args) -> None:
    from .data.check import check_data

    report = check_data(args.data, manifest=args.manifest)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return report.exit_code()


def run_demo(args) -> None:
    from .demo import run_demo_command

    run_demo_command(args)


def run_predict(args) -> None:
    from .prediction import run_predict as run

    run(args)


def run_export(args) -> None:
    from .exporting import run_export as run

    run(args)


COMMANDS = {"lr-find": run_lr_find, "demo": run_demo, "predict": run_predict, "export": run_export, "train": run_train, "study": run_study, "evaluate": run_evaluate, "ensemble": run_ensemble, "models": run_models, "check-data": run_check_data}


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=UserWarning)
    args = build_parser().parse_args(argv)
    try:
        code = COMMANDS[args.command](args)
    except TransferlabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        again = ("run the same command again to continue (finished runs are kept)" if args.command in ("study", "demo")
                 else "run the same command with --resume to continue from the last checkpoint")
        print(f"interrupted: {again}", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
