"""`transferlab study`: its options (the study's own, every training option, where the runs execute) and the
command, which reads the study file, lets the command line override it and calls the study API."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import read_settings
from ..errors import TransferlabError
from ..launchers import LAUNCHERS, LaunchSettings
from ..settings import STRATEGIES, add_options
from ..study.config import DEFAULT_STRATEGIES, STUDY_OWNED, StudyConfig, normalise


def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """`transferlab study [STUDY.yaml] --data ... --models a,b --strategies finetune,features --seeds 3 --out ...`
    plus every training option (applied to each run). Options given on the command line override the file."""
    S = argparse.SUPPRESS
    parser.add_argument("study_file", nargs="?", help="YAML study file with the same settings (optional); "
                                                      "OUT/study.yaml re-runs a study exactly")
    parser.add_argument("--data", default=S, help="dataset folder: ROOT/{train,val,test}/CLASS/* or ROOT/CLASS/*")
    parser.add_argument("--models", default=S, help="comma list of models, e.g. resnet50,mobilenet_v3_large")
    parser.add_argument("--strategies", default=S, help=f"comma list of strategies, of {', '.join(STRATEGIES)} "
                                                               f"(default: {','.join(DEFAULT_STRATEGIES)})")
    parser.add_argument("--seeds", default=S, type=_seeds_arg,
                        help=f"number of seeds (3 = seeds 0,1,2) or a comma list of seeds (default: {StudyConfig.seeds})")
    parser.add_argument("--out", default=S, help="study folder to write (runs/, results.csv, report.html)")
    parser.add_argument("--external", action="append", default=S, metavar="DIR",
                        help="another dataset (ROOT/CLASS/*, ROOT/test/CLASS/*, ... or a flat folder of images) that "
                             "every run is evaluated on, with label-free shift estimates, in report section E; "
                             "repeatable")
    parser.add_argument("--adapt", default=S, help="label-free adaptation reported on the --external sets: prior, "
                                                   "bn, bn+prior, a comma list or all (default: none)")
    parser.add_argument("--ensemble", type=int, metavar="K", default=S,
                        help="also average the probabilities of the K runs best on validation into STUDY/ensemble-topK, "
                             "scored like a run in results.csv and report section D, with a McNemar test against the "
                             f"run chosen on validation, its best member (default: {StudyConfig.ensemble or 'none'})")
    parser.add_argument("--tta", type=int, metavar="N", default=S,
                        help="also score every run (and the ensemble) on validation and test with N-view test-time "
                             "augmentation, the threshold for it re-chosen on validation's views: eval-test-tta.json per "
                             f"run, test_tta_* columns, a table in section D; 1 = none (default: {StudyConfig.tta})")
    parser.add_argument("--no-catalog", dest="measure_catalog", action="store_false", default=S,
                        help="do not time the models for the catalogue (its static facts are still shown)")
    # --split-seed (every run of the study uses it) comes with the training options
    add_options(parser, skip=(*[s for s in STUDY_OWNED if s != "split_seed"], "devices", "num_nodes"),
                defaults={"split_seed": f"{StudyConfig.split_seed}, for every run",
                          "experiment": "the study folder's name"})
    launch = parser.add_argument_group("where the runs execute (README: 'Bigger studies')")
    for name, (flag, kind, help_text) in LAUNCH_OPTIONS.items():
        default = getattr(LaunchSettings(), name)
        shown = LAUNCH_DEFAULT_WORDS.get(name, default)
        launch.add_argument(flag, dest=name, type=kind, default=S, choices=LAUNCHERS if name == "launcher" else None,
                            help=f"{help_text} (default: {shown})")
    launch.add_argument("--no-wait", dest="wait", action="store_false", default=S,
                        help="slurm: return once the runs are submitted (then --collect) instead of waiting for them")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--plan", action="store_true", default=S,
                      help="train nothing: print one `transferlab train --config ...` command per unfinished run, for "
                           "any scheduler; then --collect")
    mode.add_argument("--collect", action="store_true", default=S,
                      help="train nothing: write the tables and the report from the finished run directories")


LAUNCH_OPTIONS = {   # LaunchSettings field: (flag, type, help); "(default: ...)" comes from LaunchSettings
    "launcher": ("--launcher", str, "where the runs execute: inprocess (one after another in this process), local "
                                    "(a process per run, via submitit), slurm (a Slurm job array, via submitit)"),
    "parallel": ("--parallel", int, "local: runs at once; slurm: array tasks running at once"),
    "partition": ("--partition", str, "slurm partition"),
    "time_min": ("--time", int, "time limit per run in minutes (slurm requeues a run that reaches it; it resumes)"),
    "gpus_per_task": ("--gpus-per-task", int, "GPUs per run"),
    "cpus_per_task": ("--cpus-per-task", int, "CPUs per run, also its torch threads"),
    "mem_gb": ("--mem-gb", float, "slurm: memory per run in GB"),
}
LAUNCH_DEFAULT_WORDS = {   # what None means
    "parallel": "local 1; slurm every run", "partition": "the cluster's default",
    "time_min": "slurm the partition's limit; local 7 days", "gpus_per_task": "slurm 0; local every visible GPU, shared",
    "cpus_per_task": "slurm the partition's default; local the CPUs / --parallel",
    "mem_gb": "the partition's default",
}


def _seeds_arg(text: str) -> int | list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()] if "," in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (3) or a comma list (0,1,2), not {text!r}") from None


def run_study_command(args: argparse.Namespace) -> None:
    from ..study.plan import plan_commands
    from ..study.run import collect_study, run_study

    values = normalise(read_settings(args.study_file)) if getattr(args, "study_file", None) else {"train": {}}
    given = {k: v for k, v in vars(args).items() if k not in ("command", "study_file", "plan", "collect")}
    launch = {k: given.pop(k) for k in [*LAUNCH_OPTIONS, "wait"] if k in given}
    saved = values.get("launch") or {}
    values = normalise({**values, **given, "train": values["train"],   # the command line wins
                        "launch": {**saved, **launch} if isinstance(saved, dict) else saved})
    for key in ("data", "models", "out"):
        if not values.get(key):
            raise TransferlabError(f"--{key} is required (on the command line or in the study file)")
    config = StudyConfig.from_dict(values)
    if getattr(args, "plan", False):
        commands = plan_commands(config)
        for command in commands:
            print(command, flush=True)
        print(f"{len(commands)} unfinished run(s); when they have finished: transferlab study "
              f"{Path(config.out) / 'study.yaml'} --collect", file=sys.stderr)
    elif getattr(args, "collect", False):
        collect_study(config)
    else:
        run_study(config)
