"""Command line: argument parsing only; every command calls the Python API (`study`'s options: cli/study.py)."""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import warnings
from pathlib import Path

from ..config import LR_FIND_RANGE, MODEL_BUDGET_S, TTA_HELP, TrainConfig, read_settings
from ..distributed import is_global_zero
from ..errors import TransferlabError
from ..formatting import fmt
from ..models.spec import SOURCES
from ..settings import add_flag, add_options, at_least, command_line


class DefaultsFormatter(argparse.HelpFormatter):
    """Adds "(default: X)" to every option that has a default and does not state it already."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and "(default" not in text and action.default is not argparse.SUPPRESS
                and action.default is not None and not isinstance(action.default, bool)):
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

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
    add_options(p)

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
    add_options(p, skip=("lr", "epochs", "patience", "threshold_method", "logger", "experiment", "resume",
                         "overwrite", "unfreeze_every", "devices", "num_nodes"))

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
    p.add_argument("run", help="run directory written by `transferlab train`, or an ensemble directory (each member "
                               "evaluated, then the mean of their probabilities scored)")
    p.add_argument("--data", help="the set to score (default: the run's own data)")
    p.add_argument("--manifest", help="CSV of path,label[,patient_id][,split] inside --data")
    p.add_argument("--split", help="own data: the split to score (default: test); other data: score only this "
                                   "split folder (default: every image)")
    p.add_argument("--name", help="name in eval-NAME.json (default: from the folder name, or the split)")
    p.add_argument("--adapt", help="label-free adaptation reported beside the plain result: prior (EM-corrected "
                                   "posteriors and threshold), bn (BatchNorm statistics re-estimated on the target), "
                                   "bn+prior; a comma list, or all (default: none)")
    p.add_argument("--tta", type=at_least(1, "--tta"), default=1, metavar="N", help=TTA_HELP)
    p.add_argument("--label-budget", type=at_least(1, "--label-budget"), metavar="K",
                   help="choose the K images of --data whose labels tell most about the whole set (stratified by "
                        "predicted class and confidence) and write RUN/to-label-NAME.csv with an empty label column "
                        "to fill in (default: none)")
    p.add_argument("--labels", metavar="FILE",
                   help="that file (or any CSV of path,label) with labels filled in for some images: accuracy, "
                        "balanced accuracy, sensitivity, specificity and AUC estimated for the whole set, with 95%% "
                        "intervals valid for how the images were chosen")
    p.add_argument("--recalibrate", action="store_true",
                   help="with --labels: re-choose the decision threshold (two classes) and the temperature on the "
                        "labelled images, cross-fitted so that no image is scored by a rule its own label chose")
    p.add_argument("--unlabelled", action="store_true", help="treat --data as unlabelled images even if it has "
                                                             "sub-folders (e.g. one folder per patient)")
    p.add_argument("--no-shift", dest="shift", action="store_false", help="skip the shift estimates")
    add_flag(p, "skip_bad")
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
    p.add_argument("--budget-s", dest="model_budget_s", type=float, default=MODEL_BUDGET_S,
                   help="--measure: seconds to spend measuring each model, warm-up included; when they are spent "
                        "its remaining timings are skipped and the table says which (0 = no limit)")
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
    p.add_argument("--threads", type=at_least(1, "--threads"),
                   help="threads reading the images (default: one per CPU, up to 8)")

    from ..demo import add_demo_arguments
    from ..exporting import add_export_arguments
    from ..prediction import add_predict_arguments
    for add_arguments in (add_demo_arguments, add_predict_arguments, add_export_arguments):
        add_arguments(sub)
    for command in sub.choices.values():
        command.formatter_class = DefaultsFormatter
        if not any(action.dest == "threads" for action in command._actions):   # main() sets them
            command.add_argument("--threads", type=at_least(1, "--threads"),
                                 help="CPU threads for torch (default: torch's own count)")
            command.set_defaults(torch_threads=True)
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
    from ..training import train

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
    from ..lrfind import FILES
    from ..training import lr_find

    cfg = _train_settings(args, leave_out=("min_lr", "max_lr", "steps"))
    finding = lr_find(cfg, min_lr=args.min_lr, max_lr=args.max_lr, steps=args.steps)
    print(f"suggested learning rate: {finding.suggested_lr:.3g}  ({cfg.model} {cfg.strategy}, {finding.steps_run} "
          f"steps from {finding.min_lr:g} to at most {finding.max_lr:g}, {finding.seconds:.1f} s)")
    print(f"written: {', '.join(str(Path(cfg.out) / name) for name in FILES.values())}")
    print(f"use it: transferlab train ... --lr {finding.suggested_lr:.3g}  (or --lr auto)")


def run_ensemble(args) -> None:
    from ..ensembles import candidate_runs, ensemble

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
        print(f"test, against its best member (the run chosen on validation): McNemar p = {t['p_value']:.3g} (only "
              f"the ensemble right on {t['only_a_correct']} images, only the member on {t['only_b_correct']})")


def run_evaluate(args) -> None:
    from ..analysis.external import evaluate
    from ..analysis.external_text import summary_lines

    result = evaluate(args.run, data=args.data, split=args.split, manifest=args.manifest, name=args.name,
                      adapt=args.adapt, unlabelled=args.unlabelled, shift=args.shift, device=args.device,
                      progress=args.progress, tta=args.tta, label_budget=args.label_budget, labels=args.labels,
                      recalibrate=args.recalibrate, skip_bad=args.skip_bad)
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return
    print("\n".join(summary_lines(result)))
    print(f"written: {result['run']}/eval-{result['name']}.json and predictions-{result['name']}.csv")


def run_study(args) -> None:
    from .study import run_study_command

    run_study_command(args)


def run_models(args) -> None:
    from ..model_catalog import build, choice, output
    from ..models.registry import list_models, matches

    names = ([n for n in args.names if matches(n, args.filter)] if args.names
             else list_models(args.source, args.filter))
    if not names:
        raise TransferlabError(f"no model matches --filter {args.filter!r}")
    entries = build.catalog(names, measure=args.measure, device=args.device, batch_size=args.batch_size,
                            repeats=args.repeats, image_size=args.image_size, progress=args.progress,
                            threads=args.threads, num_classes=args.classes, model_budget_s=args.model_budget_s or None)
    budget = dict(max_latency_ms=args.max_latency_ms, max_params=args.max_params)
    shown = choice.sort_entries(choice.filter_entries(entries, **budget), args.sort)
    print(output.format_table(shown))
    print("\n".join(choice.recommend(entries, **budget)))
    if args.out:
        for path in output.write_catalog(shown, args.out):
            print(f"wrote {path}")


def run_check_data(args) -> None:
    from ..data.check import check_data

    report = check_data(args.data, manifest=args.manifest, threads=args.threads)
    print(json.dumps(report.to_dict(), indent=2) if args.json else report.to_text())
    return report.exit_code()


def run_demo(args) -> None:
    from ..demo import run_demo_command

    run_demo_command(args)


def run_predict(args) -> None:
    from ..prediction import run_predict as run

    run(args)


def run_export(args) -> None:
    from ..exporting import run_export as run

    run(args)


COMMANDS = {"lr-find": run_lr_find, "demo": run_demo, "predict": run_predict, "export": run_export, "train": run_train, "study": run_study, "evaluate": run_evaluate, "ensemble": run_ensemble, "models": run_models, "check-data": run_check_data}


def _torch_threads(args) -> contextlib.AbstractContextManager:
    """--threads N of a command whose function does not take it: torch's CPU threads while it runs."""
    if not (getattr(args, "torch_threads", False) and args.threads):
        return contextlib.nullcontext()
    from ..runtime import cpu_threads

    return cpu_threads(args.threads)


def main(argv: list[str] | None = None) -> int:
    warnings.filterwarnings("ignore", category=UserWarning)
    args = build_parser().parse_args(argv)
    try:
        with command_line(), _torch_threads(args):
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
