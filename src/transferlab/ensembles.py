"""Ensembles of finished runs: the mean of the K best runs' probabilities, ranked on validation only, with a
decision threshold chosen on validation, scored like any run.

    ensemble(["runs/a", "runs/b", "runs/c"], out="runs/top2", k=2)

An ensemble directory holds what analysis reads from a run directory (config.json, metrics.json,
predictions.csv, splits.csv), with config.json's "ensemble" listing the members; `predict` averages the members'
probabilities image by image. The members must have been scored on the same images (a study's runs share one
split), so the mean is taken file by file.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from .config import write_json
from .errors import TransferlabError
from .evaluation import decide, positive_index, split_metrics
from .metrics import choose_threshold, mcnemar
from .rundir import RunDir, read_csv, write_csv

SPLITS = ("train", "val", "test")


def is_ensemble(run: RunDir) -> bool:
    return run.config.exists() and "ensemble" in run.read_config()


def members(run: RunDir) -> list[Path]:
    """The member run directories of an ensemble directory."""
    return [run.path / m["run"] for m in run.read_config()["ensemble"]["members"]]


def validation_score(run: RunDir) -> tuple[float, float]:
    """What runs are ranked by, higher is better: validation AUC (macro for three or more classes), then lower
    validation loss. Never a test number."""
    val = run.read_metrics()["val"]
    return (val.get("roc_auc") if val.get("roc_auc") is not None else -np.inf, -val.get("loss", np.inf))


def rank_runs(run_dirs) -> list[RunDir]:
    """Finished runs, best on validation first."""
    runs = [RunDir(d) for d in run_dirs]
    unfinished = [str(r.path) for r in runs if not r.metrics.exists()]
    if unfinished:
        raise TransferlabError(f"{unfinished[0]} has not finished (no metrics.json): finish or leave it out")
    return sorted(runs, key=validation_score, reverse=True)


def ensemble(run_dirs, out: str | Path, *, k: int = 3) -> RunDir:
    """The mean of the `k` best runs' probabilities (ranked on validation), written as an ensemble directory."""
    ranked = rank_runs(run_dirs)
    if not 2 <= k <= len(ranked):
        raise TransferlabError(f"an ensemble of {k} runs: K must be between 2 and the number of finished runs ({len(ranked)})")
    chosen = ranked[:k]
    first_metrics = chosen[0].read_metrics()
    classes = first_metrics["classes"]
    for run in chosen[1:]:
        if run.read_metrics()["classes"] != classes:
            raise TransferlabError(f"{run.path} has classes {run.read_metrics()['classes']}, {chosen[0].path} {classes}: "
                                   f"an ensemble needs the same classes")
    pos = positive_index(classes, first_metrics["positive_class"])
    split_rows = {split: _mean_probabilities(chosen, split, classes) for split in SPLITS}
    split_rows = {split: rows for split, rows in split_rows.items() if rows is not None}
    if "val" not in split_rows:
        raise TransferlabError("the runs have no validation predictions in common, so no ensemble can be ranked "
                               "or given a threshold")
    method = first_metrics.get("threshold_method") or "youden"
    threshold = None
    if pos is not None:
        labels, probs = _arrays(split_rows["val"], classes)
        threshold = choose_threshold((labels == pos).astype(int), probs[:, pos], method)

    out = RunDir(out)
    out.path.mkdir(parents=True, exist_ok=True)
    metrics = {name: split_metrics(*_arrays(rows, classes), pos, threshold, classes) for name, rows in split_rows.items()}
    member_metrics = [r.read_metrics() for r in chosen]
    write_json(out.metrics, {
        "classes": classes, "positive_class": first_metrics["positive_class"], "threshold": threshold,
        "threshold_method": method if pos is not None else None, "threshold_chosen_on": "val" if pos is not None else None,
        "decision": (f"mean probability of {k} runs; " + (f"{classes[pos]} when >= threshold (chosen on val)"
                                                          if pos is not None else "the most probable class")),
        "best_epoch": None, "epochs_run": None, "monitor": None,
        "seconds": {key: float(sum(m["seconds"][key] for m in member_metrics)) for key in member_metrics[0]["seconds"]},
        "peak_rss_mb": max(m["peak_rss_mb"] for m in member_metrics),
        "cuda_peak_mb": max((m.get("cuda_peak_mb") or 0 for m in member_metrics), default=0) or None,
        "trainable_params": sum(m["trainable_params"] for m in member_metrics),
        "total_params": sum(m["total_params"] for m in member_metrics),
        **({"vs_best_run": _mcnemar_vs_best(split_rows["test"], chosen[0], classes, pos, threshold)}
           if "test" in split_rows else {}),
        **metrics})
    config = chosen[0].read_config()
    relative = [Path(_relative(r.path, out.path)) for r in chosen]
    config["ensemble"] = {
        "k": k, "ranked_on": "validation AUC, then validation loss (never test)",
        "members": [{"run": str(rel), "model": r.read_config()["settings"]["model"],
                     "strategy": r.read_config()["settings"]["strategy"], "seed": r.read_config()["settings"]["seed"],
                     "val_roc_auc": r.read_metrics()["val"].get("roc_auc")} for rel, r in zip(relative, chosen)],
        "candidates": len(ranked)}
    config["settings"] = {**config["settings"], "model": f"ensemble of {k}", "strategy": "ensemble"}
    write_json(out.config, config)
    write_csv(out.predictions, [
        {**row, "predicted": classes[d]}
        for split, rows in split_rows.items()
        for row, d in zip(rows, decide(_arrays(rows, classes)[1], pos, threshold))])
    if chosen[0].splits.exists():
        shutil.copyfile(chosen[0].splits, out.splits)
    return out


def _mean_probabilities(runs: list[RunDir], split: str, classes: list[str]) -> list[dict] | None:
    """Rows split, file, label, prob_<class> (the members' mean) for one split, or None if a member lacks it.
    The members must have scored exactly the same files."""
    columns = [f"prob_{c}" for c in classes]
    per_run = []
    for run in runs:
        rows = {r["file"]: r for r in read_csv(run.predictions) if r["split"] == split}
        if not rows:
            return None
        per_run.append(rows)
    files = list(per_run[0])
    for run, rows in zip(runs[1:], per_run[1:]):
        if set(rows) != set(files):
            raise TransferlabError(f"{run.path} and {runs[0].path} scored different {split} images; an ensemble "
                                   f"needs runs on one split (a study's runs share theirs)")
    mean = np.mean([[[float(rows[f][c]) for c in columns] for f in files] for rows in per_run], axis=0)
    return [{"split": split, "file": f, "label": per_run[0][f]["label"], **dict(zip(columns, p.tolist()))}
            for f, p in zip(files, mean)]


def _mcnemar_vs_best(rows: list[dict], best: RunDir, classes: list[str], pos: int | None, threshold) -> dict:
    """Exact McNemar test on the test images: the ensemble's decisions against those of its best member."""
    labels, probs = _arrays(rows, classes)
    theirs = {r["file"]: classes.index(r["predicted"]) for r in read_csv(best.predictions) if r["split"] == "test"}
    test = mcnemar(labels, decide(probs, pos, threshold), np.array([theirs[r["file"]] for r in rows]))
    return {"run": str(best.path), "test_mcnemar": test}


def _arrays(rows: list[dict], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    labels = np.array([classes.index(r["label"]) for r in rows])
    probs = np.array([[r[f"prob_{c}"] for c in classes] for r in rows], dtype=float)
    return labels, probs


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def candidate_runs(paths) -> tuple[list[Path], Path | None]:
    """The runs named on the command line, and the study they come from: a study folder's runs (from its
    results.csv), or run directories (no study)."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and (paths[0] / "results.csv").exists():
        return [paths[0] / r["run"] for r in read_csv(paths[0] / "results.csv")], paths[0]
    for p in paths:
        if not RunDir(p).config.exists():
            raise TransferlabError(f"{p} is neither a study folder (no results.csv) nor a run directory (no config.json)")
    return paths, None
