"""Running a study: its runs launched (launchers.py), then collected into the catalogue, the tables, the analysis
and the report."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

from ..errors import TransferlabError
from ..launchers import Job, launch
from ..rundir import write_csv, write_json
from .config import StudyConfig
from .plan import StudyPlan, plan_study, start_study
from .results import results_rows, summary_rows
from .scoring import evaluate_external, evaluate_tta, study_ensemble


def run_study(config: StudyConfig) -> Path:
    """Train every model x strategy x seed (finished runs kept, unfinished ones resumed) with the study's launcher,
    then collect: catalogue, results.csv/summary.csv, the test analysis and report.html; returns the folder.
    With the slurm launcher and wait=False it returns once the runs are submitted (collect later)."""
    start = time.perf_counter()
    plan = plan_study(config)
    start_study(plan)
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
    start_study(plan)
    return _collect(plan, start)


def _collect(plan: StudyPlan, start: float) -> Path:
    config, out = plan.config, plan.out
    runs = [{"model": r.model, "strategy": r.strategy, "seed": r.seed, "run": f"runs/{r.name}"} for r in plan.runs]
    external = evaluate_external(config, out, runs)
    evaluate_tta(config, out, [r["run"] for r in runs])
    ensemble = study_ensemble(config, out, runs, external)
    catalog_entries = study_catalog(config, out, num_classes=plan.num_classes)
    write_json(out / "study.json", {"config": config.to_dict(), "runs": runs, "notes": plan.notes,
                                    "external": external, "ensemble": ensemble, "catalog": catalog_entries,
                                    "seconds": time.perf_counter() - start})
    rows = results_rows(out, runs, ensemble)
    write_csv(out / "results.csv", rows)
    write_csv(out / "summary.csv", summary_rows(rows))

    from ..report import write_report

    html, _ = write_report(out)
    print(f"study: {out}  ({len(runs)} runs, {time.perf_counter() - start:.0f} s)\nreport: {html}", flush=True)
    return out


def study_catalog(config: StudyConfig, out: Path, num_classes: int = 2) -> list[dict]:
    """Catalogue entries (as dicts) for the study's models with a `num_classes`-class head, written to OUT/catalog;
    reused when already there."""
    from ..model_catalog.build import catalog
    from ..model_catalog.output import write_catalog

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

