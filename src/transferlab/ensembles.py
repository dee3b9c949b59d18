"""Ensembles of finished runs: the mean of the K best runs' probabilities, ranked on validation only, with a
decision threshold chosen on validation, scored like any run.

    ensemble(["runs/a", "runs/b", "runs/c"], out="runs/top2", k=2)

An ensemble directory holds what analysis reads from a run directory (config.json, metrics.json,
predictions.csv, splits.csv), with config.json's "ensemble" listing the members; `predict` averages the members'
probabilities image by image. The members must have been scored on the same images (a study's runs share one
split), so the mean is taken file by file.
"""
from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np

from .analysis.ensemble_scoring import labels_and_probs, mean_probabilities
from .analysis.runs import validation_score
from .analysis.set_scores import scores_with_cis
from .errors import TransferlabError
from .evaluation import decide, positive_index, split_metrics
from .metrics import choose_threshold, mcnemar
from .rundir import RunDir, read_csv, write_csv, write_json

SPLITS = ("train", "val", "test")


def rank_runs(run_dirs) -> list[RunDir]:
    """Finished runs, best on validation first (the first is the run chosen on validation, analysis.runs)."""
    runs = [RunDir(d) for d in run_dirs]
    unfinished = [str(r.path) for r in runs if not r.metrics.exists()]
    if unfinished:
        raise TransferlabError(f"{unfinished[0]} has not finished (no metrics.json): finish or leave it out")
    return sorted(runs, key=lambda r: validation_score(r.read_metrics()), reverse=True)


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
    split_rows = {split: mean_probabilities(chosen, split, classes) for split in SPLITS}
    split_rows = {split: rows for split, rows in split_rows.items() if rows is not None}
    if "val" not in split_rows:
        raise TransferlabError("the runs have no validation predictions in common, so no ensemble can be ranked "
                               "or given a threshold")
    method = first_metrics.get("threshold_method") or "youden"
    threshold = None
    if pos is not None:
        labels, probs = labels_and_probs(split_rows["val"], classes)
        threshold = choose_threshold((labels == pos).astype(int), probs[:, pos], method)

    out = RunDir(out)
    out.path.mkdir(parents=True, exist_ok=True)
    metrics = {name: split_metrics(*labels_and_probs(rows, classes), pos, threshold, classes) for name, rows in split_rows.items()}
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
        for row, d in zip(rows, decide(labels_and_probs(rows, classes)[1], pos, threshold))])
    if chosen[0].splits.exists():
        shutil.copyfile(chosen[0].splits, out.splits)
    return out


def evaluate_tta(run_dir, *, views: int, n_boot: int = 1000, seed: int = 0) -> dict:
    """An ensemble scored with `views`-view test-time augmentation, from its members' own (eval-val-tta.json
    and eval-test-tta.json, written by `evaluate(member, split=SPLIT, name="SPLIT-tta", tta=views)`, as
    `study --tta` does): their plain and N-view probabilities averaged image by image, the plain decided at the
    ensemble's threshold, the N-view at one re-chosen with its method on validation's mean N-view probabilities,
    on the validation images the ensemble's own threshold was chosen on. Written as eval-test-tta.json, like a run's."""
    run = RunDir(run_dir)
    metrics, chosen = run.read_metrics(), [RunDir(m) for m in run.members()]
    classes, threshold = metrics["classes"], metrics["threshold"]
    pos = positive_index(classes, metrics["positive_class"])
    for member, split in itertools.product(chosen, ("val", "test")):
        saved = member.read_evaluation(f"{split}-tta")
        if saved is None or saved.get("tta", {}).get("views") != views:
            raise TransferlabError(f"{member.path} has no {views}-view result on {split}: run `transferlab evaluate "
                                   f"{member.path} --split {split} --name {split}-tta --tta {views}` first "
                                   f"(`study --tta` does)")
    plain = mean_probabilities(chosen, "test", classes, file="predictions-test-tta.csv")
    tta = mean_probabilities(chosen, "test", classes, file="predictions-test-tta.csv", suffix="_tta")
    labels, tta_probs = labels_and_probs(tta, classes)
    t_threshold, chosen_on = threshold, None
    if pos is not None:
        own_val = {r["file"] for r in read_csv(run.predictions) if r["split"] == "val"}
        val = [r for r in mean_probabilities(chosen, "val", classes, file="predictions-val-tta.csv", suffix="_tta")
               if r["file"] in own_val]
        val_y, val_probs = labels_and_probs(val, classes)
        t_threshold = choose_threshold((val_y == pos).astype(int), val_probs[:, pos], metrics["threshold_method"])
        chosen_on = f"val, mean of the members' {views}-view probabilities"
    result = {"run": str(run.path), "name": "test-tta", "n": len(tta), "classes": classes,
              "positive_class": metrics["positive_class"], "threshold": threshold,
              "threshold_chosen_on": metrics["threshold_chosen_on"], "members": [str(m.path) for m in chosen],
              **scores_with_cis(*labels_and_probs(plain, classes), pos, threshold, n_boot, seed, classes),
              "tta": {"views": views, "how": f"mean of the members' {views}-view probabilities",
                      "threshold": t_threshold, "threshold_chosen_on": chosen_on,
                      **scores_with_cis(labels, tta_probs, pos, t_threshold, n_boot, seed, classes)}}
    run.write_evaluation(result)
    return result


def _mcnemar_vs_best(rows: list[dict], best: RunDir, classes: list[str], pos: int | None, threshold) -> dict:
    """Exact McNemar test on the test images: the ensemble's decisions against those of its best member, the run
    chosen on validation."""
    labels, probs = labels_and_probs(rows, classes)
    theirs = {r["file"]: classes.index(r["predicted"]) for r in read_csv(best.predictions) if r["split"] == "test"}
    test = mcnemar(labels, decide(probs, pos, threshold), np.array([theirs[r["file"]] for r in rows]))
    return {"run": str(best.path), "test_mcnemar": test}


def _relative(path: Path, start: Path) -> str:
    import os

    return os.path.relpath(path.resolve(), start.resolve())


def candidate_runs(paths) -> tuple[list[Path], Path | None]:
    """The runs named on the command line, and the study they come from: a study folder's runs (from its
    results.csv), or run directories (no study)."""
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and (paths[0] / "results.csv").exists():   # its runs, not an ensemble `study --ensemble` made
        return [paths[0] / r["run"] for r in read_csv(paths[0] / "results.csv") if r["strategy"] != "ensemble"], paths[0]
    for p in paths:
        if not RunDir(p).config.exists():
            raise TransferlabError(f"{p} is neither a study folder (no results.csv) nor a run directory (no config.json)")
    return paths, None
