"""`study`: every model x strategy x seed through `train`, then the catalogue, the tables, the analysis and the report.

    transferlab study --data chest_xray --models resnet50,mobilenet_v3_large --strategies finetune,features \
        --seeds 3 --out studies/hw4

Layout of a study folder:

    study.yaml      the study's settings, resolved (re-run exactly with `transferlab study OUT/study.yaml`)
    study.json      what happened: the runs, notes (e.g. the test split the study carved), wall time
    runs/{model}-{strategy}-seed{k}/   one ordinary run directory each (see rundir.py)
    catalog/        catalog.csv/json/png for the study's models (Task A)
    results.csv     one row per run: every metric of every split, flattened
    summary.csv     mean and sd over seeds per model x strategy
    report.html     the self-contained report; report.md the same tables in Markdown
    analysis.json   the measured numbers behind every finding of the report

A study file (`transferlab study study.yaml`; command-line options override it) holds the same settings:

    data: ../shared/data/chest_xray
    models: [resnet50, mobilenet_v3_large]
    strategies: [finetune, features]
    seeds: 3                    # or a list: [0, 1, 2]
    out: studies/hw4
    split_seed: 0
    measure_catalog: true
    train: {epochs: 5, lr: 0.001}             # any `transferlab train` setting, for every run
    model_overrides: {resnet50: {batch_size: 16}}
    external: [../hospital_b, ../official/test]   # every run is also scored on these (section E)
    adapt: prior,bn                           # label-free adaptation reported beside them

Every run uses the same `split_seed`, so all runs are scored on the same test images and paired tests
(McNemar) between them are valid; `seed` (initialisation, data order) varies over the seeds.
An interrupted study continues where it stopped: finished runs are kept, the unfinished one resumes.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .config import STRATEGIES, TrainConfig, read_settings, write_json
from .errors import TransferlabError
from .rundir import RunDir, flatten_metrics, read_csv, write_csv

# TrainConfig settings a study sets itself, per run
STUDY_OWNED = ("data", "model", "strategy", "seed", "split_seed", "out", "resume")
# settings that do not change what a run computes (a finished run trained with other values is still valid)
NOT_COMPARED = ("data", "out", "resume", "progress", "device", "num_workers", "threads", "cache_dir", "weights_dir",
                "logger", "experiment")


@dataclass
class StudyConfig:
    data: str
    models: list[str]
    strategies: list[str] = field(default_factory=lambda: list(STRATEGIES))
    seeds: list[int] | int = 3                      # an int N means seeds 0..N-1
    out: str = ""
    split_seed: int = 0                             # one validation/test split for every run
    measure_catalog: bool = True                    # time the models (catalogue section A); False: static facts only
    train: dict = field(default_factory=dict)       # TrainConfig settings for every run (epochs, lr, ...)
    model_overrides: dict = field(default_factory=dict)   # {model: {setting: value}} for one model's runs
    external: list[str] = field(default_factory=list)     # other datasets every run is evaluated on (section E)
    adapt: str | None = None                              # label-free adaptation reported on them: prior,bn,...

    def __post_init__(self):
        if not self.data:
            raise TransferlabError("a study needs --data (the dataset folder)")
        if not self.out:
            raise TransferlabError("a study needs --out (the study folder to write)")
        self.models = _as_list(self.models, "models")
        self.strategies = _as_list(self.strategies, "strategies")
        if not self.models:
            raise TransferlabError("a study needs at least one model (--models a,b)")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise TransferlabError(f"--strategies must be a comma list of {', '.join(STRATEGIES)}, not {bad or 'nothing'}")
        if isinstance(self.seeds, bool):
            raise TransferlabError("--seeds must be a count (3) or a comma list of seeds (0,1,2)")
        if isinstance(self.seeds, int):
            if self.seeds < 1:
                raise TransferlabError(f"--seeds must be at least 1, not {self.seeds}")
            self.seeds = list(range(self.seeds))
        self.seeds = [int(s) for s in _as_list(self.seeds, "seeds")]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise TransferlabError(f"--seeds must be distinct, got {self.seeds}")
        for where, settings in [("train", self.train), *((f"model_overrides.{m}", s) for m, s in self.model_overrides.items())]:
            if not isinstance(settings, dict):
                raise TransferlabError(f"study setting {where} must be a mapping of training settings")
            owned = sorted(set(settings) & set(STUDY_OWNED))
            if owned:
                raise TransferlabError(f"study setting {where} cannot set {', '.join(owned)}: the study sets it per run")
            unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(TrainConfig)})
            if unknown:
                raise TransferlabError(f"unknown training setting(s) in {where}: {', '.join(unknown)}")
        self.external = [str(Path(e).expanduser().resolve()) for e in _as_list(self.external or [], "external")]
        missing = [e for e in self.external if not Path(e).is_dir()]
        if missing:
            raise TransferlabError(f"--external {missing[0]}: no such folder")
        from .analysis.external import parse_adapt

        self.adapt = ",".join(parse_adapt(self.adapt)) or None
        extra = sorted(set(self.model_overrides) - set(self.models))
        if extra:
            raise TransferlabError(f"model_overrides names models not in the study: {', '.join(extra)}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "StudyConfig":
        """Study settings; TrainConfig settings may also sit at the top level (they join `train`)."""
        return cls(**_normalise(values))

    def run_names(self) -> list[tuple[str, str, int]]:
        return list(itertools.product(self.models, self.strategies, self.seeds))


def _normalise(values: dict) -> dict:
    """Study settings with top-level training settings moved into `train` (split_seed is the study's own)."""
    values = dict(values)
    own = {f.name for f in dataclasses.fields(StudyConfig)}
    train = dict(values.pop("train", None) or {})
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    for key in [k for k in values if k not in own and k in train_fields]:
        train[key] = values.pop(key)
    unknown = sorted(set(values) - own)
    if unknown:
        raise TransferlabError(f"unknown study setting(s): {', '.join(unknown)}")
    if train.get("split_seed") is not None:
        values["split_seed"] = train["split_seed"]
    train.pop("split_seed", None)
    return {**values, "train": train}


def _as_list(value, what: str) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TransferlabError(f"study setting {what} must be a list or a comma-separated string, not {value!r}")


def run_name(model: str, strategy: str, seed: int) -> str:
    return f"{model}-{strategy}-seed{seed}"


def read_study_file(path: str | Path) -> StudyConfig:
    return StudyConfig.from_dict(read_settings(path))


# --- running ------------------------------------------------------------------------------------------------

def run_study(config: StudyConfig) -> Path:
    """Train every model x strategy x seed (finished runs kept, the unfinished one resumed), measure the
    catalogue, write results.csv/summary.csv, analyse the test set and write report.html; returns the folder."""
    from .data.discover import discover
    from .loggers import check_available
    from .models.registry import get_spec
    from .training import train

    start = time.perf_counter()
    config = dataclasses.replace(config, data=str(Path(config.data).expanduser().resolve()), train=dict(config.train))
    out = Path(config.out)
    index = discover(config.data, patient_pattern=config.train.get("patient_pattern", TrainConfig.patient_pattern),
                     manifest=config.train.get("manifest"))
    notes = []
    if "test" not in index.source_splits:
        fraction = config.train.get("test_fraction", TrainConfig.test_fraction)
        notes.append(f"The dataset has no test/ folder, so every run carves the same stratified, patient-disjoint "
                     f"test split of {fraction:.0%} of the images (test_fraction {fraction})." if fraction else
                     "The dataset has no test/ folder and test_fraction is 0: the runs have no test split.")
    for note in notes:
        print(f"note: {note}", flush=True)
    # every run's settings first, so that a conflict with an earlier study stops before anything is written
    planned = [(model, strategy, seed, train_config(config, model, strategy, seed))
               for model, strategy, seed in config.run_names()]
    fingerprint = index.fingerprint()
    states = [_check_existing(RunDir(cfg.out), cfg, fingerprint) for *_, cfg in planned]
    for *_, cfg in planned:
        get_spec(cfg.model, cfg.weights)       # an unknown model or weights name stops before anything is written
        check_available(cfg.logger)            # ... and so does a --logger whose package is missing
    out.mkdir(parents=True, exist_ok=True)
    (out / "study.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))

    runs = []
    for i, ((model, strategy, seed, cfg), state) in enumerate(zip(planned, states), 1):
        print(f"run {i}/{len(planned)}: {model} {strategy} seed {seed}{state}", flush=True)
        run = train(cfg)
        runs.append({"model": model, "strategy": strategy, "seed": seed, "run": str(run.path.relative_to(out))})

    external = evaluate_external(config, out, runs)
    catalog_entries = study_catalog(config, out, num_classes=len(index.classes))
    write_json(out / "study.json", {"config": config.to_dict(), "runs": runs, "notes": notes, "external": external,
                                    "catalog": catalog_entries, "seconds": time.perf_counter() - start})
    rows = results_rows(out, runs)
    write_csv(out / "results.csv", rows)
    write_csv(out / "summary.csv", summary_rows(rows))

    from .report import write_report

    html, _ = write_report(out)
    print(f"study: {out}  ({len(runs)} runs, {time.perf_counter() - start:.0f} s)\nreport: {html}", flush=True)
    return out


def evaluate_external(config: StudyConfig, out: Path, runs: list[dict]) -> list[dict]:
    """Every run on every --external set (every image scored; shift estimates; --adapt beside). A result newer
    than the run's model and made with the same adaptations is kept."""
    from .analysis.external import default_name, evaluate, parse_adapt

    sets, adapt = [], parse_adapt(config.adapt)
    for data in config.external:
        name = default_name(Path(data))
        name = name if name not in {s["name"] for s in sets} else f"{name}_{len(sets) + 1}"
        sets.append({"name": name, "data": data})
        for i, r in enumerate(runs, 1):
            run = RunDir(out / r["run"])
            saved = run.path / f"eval-{name}.json"
            if saved.exists() and saved.stat().st_mtime >= run.weights.stat().st_mtime \
                    and json.loads(saved.read_text()).get("adapt") == adapt:
                continue
            print(f"external {name}: run {i}/{len(runs)} {r['run']}", flush=True)
            evaluate(run.path, data=data, name=name, adapt=adapt, device=config.train.get("device", "auto"),
                     progress=config.train.get("progress", True))
    return sets


def train_config(config: StudyConfig, model: str, strategy: str, seed: int) -> TrainConfig:
    # one experiment name for the loggers of every run: the study folder's
    settings = {"experiment": Path(config.out).resolve().name, **config.train, **config.model_overrides.get(model, {})}
    return TrainConfig(**settings, data=str(config.data), model=model, strategy=strategy, seed=seed,
                       split_seed=config.split_seed, resume=True,
                       out=str(Path(config.out) / "runs" / run_name(model, strategy, seed)))


def _check_existing(run: RunDir, cfg: TrainConfig, fingerprint: str) -> str:
    """' (finished: kept)' / ' (resuming)' / ''; a run made with other settings or data stops the study."""
    if not run.config.exists():
        return ""
    saved = run.read_config()
    old, new = saved.get("settings", {}), cfg.to_dict()
    changed = [k for k in new if k not in NOT_COMPARED and k in old and old[k] != new[k]]
    if changed:
        what = ", ".join(f"{k} {old[k]!r} -> {new[k]!r}" for k in changed[:3])
        raise TransferlabError(f"{run.path} was trained with other settings ({what}); "
                               f"use another --out or delete that run")
    if saved.get("data", {}).get("fingerprint") not in (None, fingerprint):
        raise TransferlabError(f"{run.path} was trained on different data (the dataset changed); "
                               f"use another --out or delete that run")
    if run.finished():
        return " (finished: kept)"
    return " (resuming)" if (run.checkpoints / "last.ckpt").exists() else " (restarting)"


def study_catalog(config: StudyConfig, out: Path, num_classes: int = 2) -> list[dict]:
    """Catalogue entries (as dicts) for the study's models with a `num_classes`-class head, written to OUT/catalog;
    reused when already there."""
    from .model_catalog import catalog, write_catalog

    path = out / "study.json"
    if path.exists():
        old = json.loads(path.read_text()).get("catalog") or []
        measured = all(e.get("latency_ms") is not None or e.get("error") for e in old)
        if [e.get("name") for e in old] == config.models and (measured or not config.measure_catalog) \
                and all(e.get("num_classes", 2) == num_classes for e in old) \
                and (out / "catalog" / "catalog.png").exists():
            return old
    print(f"catalogue: {', '.join(config.models)}" + (" (measuring speed)" if config.measure_catalog else ""), flush=True)
    sizes = {m: {**config.train, **config.model_overrides.get(m, {})}.get("image_size") for m in config.models}
    entries = catalog(config.models, measure=config.measure_catalog, device=config.train.get("device", "auto"),
                      batch_size=8, repeats=10, warmup=2, image_size=sizes,   # the sizes the runs use
                      progress=config.train.get("progress", True), budget_s=5.0, threads=config.train.get("threads"),
                      num_classes=num_classes)
    write_catalog(entries, out / "catalog")
    return [dataclasses.asdict(e) for e in entries]


# --- tables -------------------------------------------------------------------------------------------------

def results_rows(study_dir: Path, runs: list[dict]) -> list[dict]:
    rows = []
    for r in runs:
        run = RunDir(Path(study_dir) / r["run"])
        config = run.read_config()
        rows.append({"model": r["model"], "strategy": r["strategy"], "seed": r["seed"], "run": r["run"],
                     "weights": config["model"]["weights"], "image_size": config["model"]["image_size"],
                     **flatten_metrics(run.read_metrics())})
    return rows


def summary_rows(rows: list[dict]) -> list[dict]:
    """Mean and sample sd (ddof=1; empty with one seed) of every numeric column per model x strategy."""
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault((row["model"], row["strategy"]), []).append(row)
    out = []
    for (model, strategy), group in groups.items():
        summary = {"model": model, "strategy": strategy, "seeds": len(group),
                   "seed_list": " ".join(str(r["seed"]) for r in group)}
        for key in group[0]:
            if key == "seed":
                continue
            values = [_number(r.get(key)) for r in group]
            if all(v is not None for v in values) and not isinstance(group[0][key], bool):
                summary[f"{key}_mean"] = float(np.mean(values))
                summary[f"{key}_sd"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        out.append(summary)
    return out


def _number(value) -> float | None:
    if isinstance(value, bool) or value is None or value == "":
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def read_results(study_dir: str | Path) -> list[dict]:
    return read_csv(Path(study_dir) / "results.csv")


# --- command line -------------------------------------------------------------------------------------------

def add_study_arguments(parser: argparse.ArgumentParser) -> None:
    """`transferlab study [STUDY.yaml] --data ... --models a,b --strategies finetune,features --seeds 3 --out ...`
    plus every training option (applied to each run). Options given on the command line override the file."""
    from .cli import add_train_options

    S = argparse.SUPPRESS
    parser.add_argument("study_file", nargs="?", help="YAML study file with the same settings (optional); "
                                                      "OUT/study.yaml re-runs a study exactly")
    parser.add_argument("--data", default=S, help="dataset folder: ROOT/{train,val,test}/CLASS/* or ROOT/CLASS/*")
    parser.add_argument("--models", default=S, help="comma list of models, e.g. resnet50,mobilenet_v3_large")
    parser.add_argument("--strategies", default=S, help=f"comma list of strategies (default: {','.join(STRATEGIES)})")
    parser.add_argument("--seeds", default=S, type=_seeds_arg,
                        help=f"number of seeds (3 = seeds 0,1,2) or a comma list of seeds (default: {StudyConfig.seeds})")
    parser.add_argument("--out", default=S, help="study folder to write (runs/, results.csv, report.html)")
    parser.add_argument("--external", action="append", default=S, metavar="DIR",
                        help="another dataset (ROOT/CLASS/*, ROOT/test/CLASS/*, ... or a flat folder of images) that "
                             "every run is evaluated on, with label-free shift estimates, in report section E; "
                             "repeatable")
    parser.add_argument("--adapt", default=S, help="label-free adaptation reported on the --external sets: prior, "
                                                   "bn, bn+prior, a comma list or all (default: none)")
    parser.add_argument("--no-catalog", dest="measure_catalog", action="store_false", default=S,
                        help="do not time the models for the catalogue (its static facts are still shown)")
    # --split-seed (every run of the study uses it) comes with the training options
    add_train_options(parser, for_study=True, defaults={"split_seed": f"{StudyConfig.split_seed}, for every run",
                                                        "experiment": "the study folder's name"})


def _seeds_arg(text: str) -> int | list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()] if "," in text else int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a count (3) or a comma list (0,1,2), not {text!r}") from None


def run_study_command(args: argparse.Namespace) -> None:
    values = _normalise(read_settings(args.study_file)) if getattr(args, "study_file", None) else {"train": {}}
    given = {k: v for k, v in vars(args).items() if k not in ("command", "study_file")}
    values = _normalise({**values, **given, "train": values["train"]})   # the command line wins
    for key in ("data", "models", "out"):
        if not values.get(key):
            raise TransferlabError(f"--{key} is required (on the command line or in the study file)")
    run_study(StudyConfig.from_dict(values))
