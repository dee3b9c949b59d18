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
    ensemble-topK/  --ensemble K: the mean of the K runs best on validation, an ensemble directory (ensembles.py)
    runs/*/eval-{val,test}-tta.json   --tta N: each run scored with N-view test-time augmentation (`evaluate`)
    jobs/           --launcher local|slurm: submitit's files and each run's log (JOBID_0_log.out/.err)
    plan/           --plan: one settings file per run, read by the printed `transferlab train --config` commands

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
    ensemble: 3                               # also the mean of the 3 runs best on validation (STUDY/ensemble-top3)
    tta: 4                                    # every run (and the ensemble) also scored with 4-view test-time augmentation
    launch: {launcher: slurm, partition: gpu, time_min: 120, gpus_per_task: 1}   # where the runs execute

Where the runs execute is the launcher's business (launchers.py: in this process, local processes, a Slurm job
array); `--plan` prints a command per run for any other scheduler and `--collect` writes the report afterwards.

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
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from .config import TrainConfig, read_settings
from .errors import TransferlabError
from .launchers import LAUNCHERS, Job, LaunchSettings, launch
from .rundir import RunDir, flatten_metrics, flatten_split, read_csv, write_csv, write_json
from .settings import SETTINGS, STRATEGIES, add_options, changed_settings, in_callers_words

# a study's strategies unless it names them (lpft, the third, only when asked for)
DEFAULT_STRATEGIES = ("finetune", "features")
# TrainConfig settings a study sets itself, per run
STUDY_OWNED = ("data", "model", "strategy", "seed", "split_seed", "out", "resume", "overwrite")


@dataclass
class StudyConfig:
    data: str
    models: list[str]
    strategies: list[str] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    seeds: list[int] | int = 3                      # an int N means seeds 0..N-1
    out: str = ""
    split_seed: int = 0                             # one validation/test split for every run
    measure_catalog: bool = True                    # time the models (catalogue section A); False: static facts only
    train: dict = field(default_factory=dict)       # TrainConfig settings for every run (epochs, lr, ...)
    model_overrides: dict = field(default_factory=dict)   # {model: {setting: value}} for one model's runs
    external: list[str] = field(default_factory=list)     # other datasets every run is evaluated on (section E)
    adapt: str | None = None                              # label-free adaptation reported on them: prior,bn,...
    launch: LaunchSettings | dict = field(default_factory=LaunchSettings)   # where the runs execute (launchers.py)
    ensemble: int | None = None     # K: also the mean of the K runs best on validation, scored like a run
    tta: int = 1                    # N > 1: every run (and the ensemble) also scored with N-view test-time augmentation

    @in_callers_words
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
        self.train = _train_settings(self.train, "train")
        self.model_overrides = {m: _train_settings(s, f"model_overrides.{m}") for m, s in self.model_overrides.items()}
        self.external = [str(Path(e).expanduser().resolve()) for e in _as_list(self.external or [], "external")]
        missing = [e for e in self.external if not Path(e).is_dir()]
        if missing:
            raise TransferlabError(f"--external {missing[0]}: no such folder")
        from .analysis.adaptation import parse_adapt

        self.adapt = ",".join(parse_adapt(self.adapt)) or None
        self.launch = LaunchSettings.from_dict(self.launch)
        extra = sorted(set(self.model_overrides) - set(self.models))
        if extra:
            raise TransferlabError(f"model_overrides names models not in the study: {', '.join(extra)}")
        runs = len(self.run_names())
        if self.ensemble is not None and not (isinstance(self.ensemble, int) and 2 <= self.ensemble <= runs):
            raise TransferlabError(f"--ensemble must be between 2 and the study's number of runs ({runs}), "
                                   f"not {self.ensemble!r}")
        if isinstance(self.tta, bool) or not isinstance(self.tta, int) or self.tta < 1:
            raise TransferlabError(f"--tta must be at least 1 (1 = no test-time augmentation), not {self.tta!r}")
        for model, strategy in itertools.product(self.models, self.strategies):   # every training value, checked now
            train_config(self, model, strategy, self.seeds[0])

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
    for key in [k for k in values if k not in own and k in SETTINGS]:
        train[key] = values.pop(key)
    unknown = sorted(set(values) - own)
    if unknown:
        raise TransferlabError(f"unknown study setting(s): {', '.join(unknown)}")
    if train.get("split_seed") is not None:
        values["split_seed"] = train["split_seed"]
    train.pop("split_seed", None)
    return {**values, "train": train}


def _train_settings(settings: dict, where: str) -> dict:
    """Training settings of a study file (`where`: train or model_overrides.MODEL), each checked and kept as
    TrainConfig keeps it."""
    if not isinstance(settings, dict):
        raise TransferlabError(f"study setting {where} must be a mapping of training settings")
    owned = sorted(set(settings) & set(STUDY_OWNED))
    if owned:
        raise TransferlabError(f"study setting {where} cannot set {', '.join(owned)}: the study sets it per run")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise TransferlabError(f"unknown training setting(s) in {where}: {', '.join(unknown)}")
    return {k: SETTINGS[k].check(v) for k, v in settings.items()}


def _as_list(value, what: str) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TransferlabError(f"study setting {what} must be a list or a comma-separated string, not {value!r}")


def run_name(model: str, strategy: str, seed: int) -> str:
    """The run's folder name; timm:NAME becomes timm-NAME (a colon makes relative links in the report URLs)."""
    return f"{model.replace(':', '-')}-{strategy}-seed{seed}"


def read_study_file(path: str | Path) -> StudyConfig:
    return StudyConfig.from_dict(read_settings(path))


# --- running: plan the runs, launch them (launchers.py), collect what they wrote ---------------------------------

@dataclass
class PlannedRun:
    model: str
    strategy: str
    seed: int
    config: TrainConfig
    state: str          # "" (new), " (finished: kept)", " (resuming)" or " (restarting)"

    @property
    def name(self) -> str:
        return Path(self.config.out).name

    def finished(self) -> bool:
        return RunDir(self.config.out).finished()


@dataclass
class StudyPlan:
    config: StudyConfig     # data resolved to an absolute path
    runs: list[PlannedRun]
    notes: list[str]        # said once, kept in study.json
    num_classes: int

    @property
    def out(self) -> Path:
        return Path(self.config.out)


def plan_study(config: StudyConfig) -> StudyPlan:
    """Every run's settings, checked against what the study folder already holds; writes nothing."""
    from .data.discover import discover
    from .loggers import check_available
    from .models.registry import get_spec

    config = dataclasses.replace(config, data=str(Path(config.data).expanduser().resolve()), train=dict(config.train))
    index = discover(config.data, patient_pattern=config.train.get("patient_pattern", TrainConfig.patient_pattern),
                     manifest=config.train.get("manifest"))
    notes = []
    if "test" not in index.source_splits:
        fraction = config.train.get("test_fraction", TrainConfig.test_fraction)
        notes.append(f"The dataset has no test/ folder, so every run carves the same stratified, patient-disjoint "
                     f"test split of {fraction:.0%} of the images (test_fraction {fraction})." if fraction else
                     "The dataset has no test/ folder and test_fraction is 0: the runs have no test split.")
    # every run's settings first, so that a conflict with an earlier study stops before anything is written
    fingerprint = index.fingerprint()
    runs = []
    for model, strategy, seed in config.run_names():
        cfg = train_config(config, model, strategy, seed)
        runs.append(PlannedRun(model, strategy, seed, cfg, _check_existing(RunDir(cfg.out), cfg, fingerprint)))
    for run in runs:
        get_spec(run.config.model, run.config.weights)   # an unknown model or weights name stops here
        check_available(run.config.logger)               # ... and so does a --logger whose package is missing
    return StudyPlan(config, runs, notes, num_classes=len(index.classes))


def _start(plan: StudyPlan, *, stream=None) -> None:
    """Say the notes (on stream, default stdout) and write study.yaml: the study folder now exists."""
    for note in plan.notes:
        print(f"note: {note}", file=stream, flush=True)
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "study.yaml").write_text(yaml.safe_dump(plan.config.to_dict(), sort_keys=False))


def run_study(config: StudyConfig) -> Path:
    """Train every model x strategy x seed (finished runs kept, unfinished ones resumed) with the study's launcher,
    then collect: catalogue, results.csv/summary.csv, the test analysis and report.html; returns the folder.
    With the slurm launcher and wait=False it returns once the runs are submitted (collect later)."""
    start = time.perf_counter()
    plan = plan_study(config)
    _start(plan)
    jobs = []
    for i, run in enumerate(plan.runs, 1):
        label = f"run {i}/{len(plan.runs)}: {run.model} {run.strategy} seed {run.seed}{run.state}"
        if run.finished():
            print(label, flush=True)
        else:
            jobs.append(Job(run.name, run.config, label))
    outcome = launch(jobs, plan.config.launch, plan.out / "jobs")
    if outcome.failed:
        raise TransferlabError(
            f"{len(outcome.failed)} of {len(plan.runs)} runs failed: "
            + "; ".join(f"{name}: {why}" for name, why in list(outcome.failed.items())[:5])
            + ("; ..." if len(outcome.failed) > 5 else "")
            + ". Fix the cause and run the same command again: finished runs are kept")
    if outcome.submitted:
        print(f"submitted {len(jobs)} run(s); logs in {plan.out / 'jobs'}. When they have finished, write the report "
              f"with: transferlab study {plan.out / 'study.yaml'} --collect", flush=True)
        return plan.out
    return _collect(plan, start)


def plan_commands(config: StudyConfig) -> list[str]:
    """One shell command per unfinished run, for any scheduler: `transferlab train --config STUDY/plan/RUN.yaml`,
    the run's exact settings (resume on, so running a command again continues or keeps its run). Writes study.yaml
    and the per-run files; `collect_study` writes the report once the runs have finished."""
    plan = plan_study(config)
    _start(plan, stream=sys.stderr)   # stdout: the commands alone
    folder = plan.out / "plan"
    folder.mkdir(exist_ok=True)
    commands = []
    for run in plan.runs:
        if run.finished():
            continue
        path = folder / f"{run.name}.yaml"
        path.write_text(yaml.safe_dump(run.config.to_dict(), sort_keys=False))
        commands.append(shlex.join(["transferlab", "train", "--config", str(path.resolve())]))
    return commands


def collect_study(config: StudyConfig) -> Path:
    """The tables, the analysis and the report of a study whose runs were executed elsewhere (--plan, --no-wait);
    says which runs have not finished."""
    start = time.perf_counter()
    plan = plan_study(config)
    missing = [run.name for run in plan.runs if not run.finished()]
    if missing:
        raise TransferlabError(
            f"{len(missing)} of {len(plan.runs)} runs of {plan.out} have not finished: {', '.join(missing[:5])}"
            f"{', ...' if len(missing) > 5 else ''}; run them (--plan prints their commands) or launch the study "
            f"again (finished runs are kept)")
    _start(plan)
    return _collect(plan, start)


def _collect(plan: StudyPlan, start: float) -> Path:
    config, out = plan.config, plan.out
    runs = [{"model": r.model, "strategy": r.strategy, "seed": r.seed, "run": f"runs/{r.name}"} for r in plan.runs]
    external = evaluate_external(config, out, runs)
    evaluate_tta(config, out, [r["run"] for r in runs])
    ensemble = study_ensemble(config, out, runs)
    catalog_entries = study_catalog(config, out, num_classes=plan.num_classes)
    write_json(out / "study.json", {"config": config.to_dict(), "runs": runs, "notes": plan.notes,
                                    "external": external, "ensemble": ensemble, "catalog": catalog_entries,
                                    "seconds": time.perf_counter() - start})
    rows = results_rows(out, runs, ensemble)
    write_csv(out / "results.csv", rows)
    write_csv(out / "summary.csv", summary_rows(rows))

    from .report import write_report

    html, _ = write_report(out)
    print(f"study: {out}  ({len(runs)} runs, {time.perf_counter() - start:.0f} s)\nreport: {html}", flush=True)
    return out


def evaluate_external(config: StudyConfig, out: Path, runs: list[dict]) -> list[dict]:
    """Every run on every --external set (every image scored; shift estimates; --adapt beside). A result newer
    than the run's model and made with the same adaptations is kept."""
    from .analysis.agreement import annotate
    from .analysis.adaptation import parse_adapt
    from .analysis.external import default_name, evaluate

    sets, adapt = [], parse_adapt(config.adapt)
    for data in config.external:
        name = default_name(Path(data))
        name = name if name not in {s["name"] for s in sets} else f"{name}_{len(sets) + 1}"
        sets.append({"name": name, "data": data})
        for i, r in enumerate(runs, 1):
            run = RunDir(out / r["run"])
            if _kept(run.path / f"eval-{name}.json", [run.weights], lambda saved: saved.get("adapt") == adapt):
                continue
            print(f"external {name}: run {i}/{len(runs)} {r['run']}", flush=True)
            evaluate(run.path, data=data, name=name, adapt=adapt, device=config.train.get("device", "auto"),
                     progress=config.train.get("progress", True))
        annotate([out / r["run"] for r in runs], name)   # what the runs' agreement says about each one's accuracy
    return sets


TTA_SPLITS = ("val", "test")   # the ensemble's test-time threshold is chosen on its members' validation views


def evaluate_tta(config: StudyConfig, out: Path, run_names: list[str]) -> None:
    """--tta N: every run scored with N-view test-time augmentation on its validation and test splits, through
    `evaluate` (eval-SPLIT-tta.json and predictions-SPLIT-tta.csv in the run directory). A result newer than the
    run's model and made with as many views is kept."""
    from .analysis.comparison import N_BOOT
    from .analysis.external import evaluate

    if config.tta == 1:
        return
    for i, name in enumerate(run_names, 1):
        run = RunDir(out / name)
        for split in [s for s in TTA_SPLITS if s in run.read_metrics()]:
            if _kept(run.path / f"eval-{split}-tta.json", [run.weights],
                     lambda saved: saved.get("tta", {}).get("views") == config.tta):
                continue
            print(f"test-time augmentation x{config.tta}: run {i}/{len(run_names)} {name}, {split}", flush=True)
            evaluate(run.path, split=split, name=f"{split}-tta", tta=config.tta, shift=False, n_boot=N_BOOT,
                     device=config.train.get("device", "auto"), progress=config.train.get("progress", True))


def study_ensemble(config: StudyConfig, out: Path, runs: list[dict]) -> dict | None:
    """--ensemble K: the mean of the K runs best on validation (ensembles.ensemble) as OUT/ensemble-topK, with
    --tta also scored with test-time augmentation; {"run": "ensemble-topK", "k": K}. Kept while newer than every
    run's metrics (and, for --tta, than their test-time results)."""
    from .analysis.comparison import N_BOOT
    from .ensembles import ensemble, evaluate_tta as ensemble_tta

    if not config.ensemble:
        return None
    name = f"ensemble-top{config.ensemble}"
    folder, candidates = RunDir(out / name), [RunDir(out / r["run"]) for r in runs]
    if not _kept(folder.config, [c.metrics for c in candidates],
                 lambda saved: folder.metrics.exists() and saved.get("ensemble", {}).get("k") == config.ensemble
                 and saved["ensemble"]["candidates"] == len(candidates)):
        print(f"ensemble of the {config.ensemble} runs best on validation: {folder.path}", flush=True)
        ensemble([c.path for c in candidates], folder.path, k=config.ensemble)
    if config.tta > 1 and "test" in folder.read_metrics():
        sources = [folder.metrics, *(c.path / f"eval-{s}-tta.json" for c in candidates for s in TTA_SPLITS
                                     if (c.path / f"eval-{s}-tta.json").exists())]
        if not _kept(folder.path / "eval-test-tta.json", sources,
                     lambda saved: saved.get("tta", {}).get("views") == config.tta):
            print(f"test-time augmentation x{config.tta}: {name}", flush=True)
            ensemble_tta(folder.path, views=config.tta, n_boot=N_BOOT)
    return {"run": name, "k": config.ensemble}


def _kept(saved: Path, sources: list[Path], same) -> bool:
    """Whether a result written earlier still stands: it is newer than every file it was made from and
    same(its JSON) holds."""
    return saved.exists() and all(saved.stat().st_mtime >= p.stat().st_mtime for p in sources) \
        and same(json.loads(saved.read_text()))


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
    changed = changed_settings(saved.get("settings", {}), cfg.to_dict())
    if changed:
        what = ", ".join(changed[:3])
        raise TransferlabError(f"{run.path} was trained with other settings ({what}); "
                               f"use another --out or delete that run")
    if saved.get("data", {}).get("fingerprint") not in (None, fingerprint):
        raise TransferlabError(f"{run.path} was trained on different data (the dataset changed); "
                               f"use another --out or delete that run")
    if run.finished():
        return " (finished: kept)"
    return " (resuming)" if run.resumable() else " (restarting)"


def study_catalog(config: StudyConfig, out: Path, num_classes: int = 2) -> list[dict]:
    """Catalogue entries (as dicts) for the study's models with a `num_classes`-class head, written to OUT/catalog;
    reused when already there."""
    from .model_catalog.build import catalog
    from .model_catalog.output import write_catalog

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

def results_rows(study_dir: Path, runs: list[dict], ensemble: dict | None = None) -> list[dict]:
    """One row per run (with --tta its test_tta_* columns), then the ensemble's, if any (strategy "ensemble")."""
    rows = []
    for r in runs:
        run = RunDir(Path(study_dir) / r["run"])
        config = run.read_config()
        rows.append({"model": r["model"], "strategy": r["strategy"], "seed": r["seed"], "run": r["run"],
                     "weights": config["model"]["weights"], "image_size": config["model"]["image_size"],
                     **flatten_metrics(run.read_metrics()), **tta_columns(run.path)})
    if ensemble:
        rows.append(ensemble_row(Path(study_dir), ensemble["run"]))
    return rows


def ensemble_row(study_dir: Path, name: str) -> dict:
    """The ensemble's results row: its metrics, bootstrap 95% CIs of its test metrics (as section D gives a run)
    and the exact McNemar test against the best single run on validation (its best member)."""
    from .analysis.comparison import test_cis
    from .analysis.runs import load_run
    from .ensembles import members

    run = load_run(study_dir / name)
    sizes = sorted({RunDir(m).read_config()["model"]["image_size"] for m in members(RunDir(run.path))})
    row = {"model": run.model, "strategy": "ensemble", "seed": "", "run": name,
           "weights": run.config["model"]["weights"], "image_size": "/".join(map(str, sizes)),
           **flatten_metrics(run.metrics), **tta_columns(run.path),
           "ensemble_of": " ".join(Path(m["run"]).name for m in run.config["ensemble"]["members"])}
    for key, (low, high) in test_cis(run).items():
        row[f"test_ci_{key}_low"], row[f"test_ci_{key}_high"] = low, high
    if "vs_best_run" in run.metrics:
        test = run.metrics["vs_best_run"]["test_mcnemar"]
        row.update({"test_mcnemar_vs": Path(run.metrics["vs_best_run"]["run"]).name,
                    "test_mcnemar_only_ensemble_correct": test["only_a_correct"],
                    "test_mcnemar_only_run_correct": test["only_b_correct"], "test_mcnemar_p_value": test["p_value"]})
    return row


def tta_columns(run_dir: Path) -> dict:
    """test_tta_*: the test metrics with test-time augmentation (eval-test-tta.json, which --tta writes): AUC,
    accuracy at 0.5 and at the threshold re-chosen on validation's N-view probabilities, their bootstrap CIs."""
    saved = Path(run_dir) / "eval-test-tta.json"
    if not saved.exists():
        return {}
    tta = json.loads(saved.read_text())["tta"]
    row = {"test_tta_views": tta["views"], "test_tta_threshold": tta.get("threshold")}
    for prefix, metrics in (("test_tta_", tta), ("test_tta_at_threshold_", tta.get("at_threshold", {}))):
        row.update({k: v for k, v in flatten_split(metrics, prefix).items() if not isinstance(v, str)})
    for key, (low, high) in tta.get("ci", {}).items():
        row[f"test_tta_ci_{key}_low"], row[f"test_tta_ci_{key}_high"] = low, high
    return row


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
                             f"best single run (default: {StudyConfig.ensemble or 'none'})")
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
    values = _normalise(read_settings(args.study_file)) if getattr(args, "study_file", None) else {"train": {}}
    given = {k: v for k, v in vars(args).items() if k not in ("command", "study_file", "plan", "collect")}
    launch = {k: given.pop(k) for k in [*LAUNCH_OPTIONS, "wait"] if k in given}
    saved = values.get("launch") or {}
    values = _normalise({**values, **given, "train": values["train"],   # the command line wins
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
