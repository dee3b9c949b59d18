"""A study's tables: results.csv (one row per run, then the ensemble's) and summary.csv (mean and sd over seeds)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..rundir import RunDir, flatten_metrics, flatten_split, read_csv


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
    and the exact McNemar test against the run chosen on validation (its best member)."""
    from ..analysis.comparison import test_cis
    from ..analysis.runs import load_run

    run = load_run(study_dir / name)
    sizes = sorted({RunDir(m).read_config()["model"]["image_size"] for m in RunDir(run.path).members()})
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
    saved = RunDir(run_dir).read_evaluation("test-tta")
    if saved is None:
        return {}
    tta = saved["tta"]
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
