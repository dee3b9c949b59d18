"""A study's plan: every run's settings checked against what the study folder already holds, and the commands
that run them elsewhere (`--plan`)."""
from __future__ import annotations

import dataclasses
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..config import TrainConfig
from ..errors import TransferlabError
from ..rundir import RunDir
from ..settings import changed_settings
from .config import StudyConfig, train_config


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
    from ..data.discover import discover
    from ..loggers import check_available
    from ..models.registry import get_spec

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


def start_study(plan: StudyPlan, *, stream=None) -> None:
    """Say the notes (on stream, default stdout) and write study.yaml: the study folder now exists."""
    for note in plan.notes:
        print(f"note: {note}", file=stream, flush=True)
    plan.out.mkdir(parents=True, exist_ok=True)
    (plan.out / "study.yaml").write_text(yaml.safe_dump(plan.config.to_dict(), sort_keys=False))


def plan_commands(config: StudyConfig) -> list[str]:
    """One shell command per unfinished run, for any scheduler: `transferlab train --config STUDY/plan/RUN.yaml`,
    the run's exact settings (resume on, so running a command again continues or keeps its run). Writes study.yaml
    and the per-run files; `collect_study` writes the report once the runs have finished."""
    plan = plan_study(config)
    start_study(plan, stream=sys.stderr)   # stdout: the commands alone
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

