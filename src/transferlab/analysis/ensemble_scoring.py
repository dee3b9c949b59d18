"""An ensemble directory scored like a run: its members' probabilities averaged image by image and decided at the
ensemble's own threshold (chosen on validation when the ensemble was made, ensembles.ensemble).

    evaluate("runs/top3", data="hospital_b/")      each member evaluated on the set, then score_from_members

`evaluate` (analysis.external) evaluates an ensemble directory's members and then calls `score_from_members`;
a study (study.scoring) and benchmarks/recipe_shifts.py call it directly for members they have already evaluated.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import TransferlabError
from ..evaluation import decide, positive_index
from ..rundir import RunDir, read_csv, write_csv
from .set_scores import predicted_shares, scores_with_cis

PER_MODEL = {"adapt": "--adapt", "tta": "--tta", "label_budget": "--label-budget", "labels": "--labels",
             "recalibrate": "--recalibrate"}   # evaluate's options that act on one model's outputs: refused for ensembles


def mean_probabilities(runs: list[RunDir], split: str, classes: list[str], *, file: str | None = None,
                       suffix: str = "") -> list[dict] | None:
    """Rows split, file, label, prob_<class> (the members' mean) for one split, or None if a member lacks it.
    The members must have scored exactly the same files. Read from each member's predictions.csv, or from its
    `file` (one split's or set's rows, e.g. predictions-test-tta.csv) and its prob_<class><suffix> columns."""
    columns = [f"prob_{c}{suffix}" for c in classes]
    per_run = []
    for run in runs:
        if file is not None and not (run.path / file).exists():
            return None
        rows = {r["file"]: r for r in read_csv(run.path / file if file else run.predictions)
                if r.get("split", split) == split}
        if not rows:
            return None
        per_run.append(rows)
    files = list(per_run[0])
    for run, rows in zip(runs[1:], per_run[1:]):
        if set(rows) != set(files):
            raise TransferlabError(f"{run.path} and {runs[0].path} scored different {split} images; an ensemble "
                                   f"needs runs on one split (a study's runs share theirs)")
    mean = np.mean([[[float(rows[f][c]) for c in columns] for f in files] for rows in per_run], axis=0)
    return [{"split": split, "file": f, "label": per_run[0][f]["label"],
             **{f"prob_{c}": float(v) for c, v in zip(classes, p)}} for f, p in zip(files, mean)]


def labels_and_probs(rows: list[dict], classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Class indices (-1 where a row has no label) and the probability columns of prediction rows."""
    labels = np.array([classes.index(r["label"]) if r["label"] else -1 for r in rows], dtype=np.int64)
    probs = np.array([[r[f"prob_{c}"] for c in classes] for r in rows], dtype=float)
    return labels, probs


def made_from(run: RunDir, name: str) -> list[Path]:
    """The files the ensemble's result on NAME is computed from: its metrics (the threshold) and its members'
    predictions-NAME.csv (their eval-NAME.json is annotated later by a study, so it is not one)."""
    return [run.metrics, *(m / f"predictions-{name}.csv" for m in run.members())]


def score_from_members(run_dir, name: str, *, n_boot: int = 1000, seed: int = 0) -> dict:
    """The ensemble on the set NAME from its members' eval-NAME.json and predictions-NAME.csv: the mean of their
    probabilities decided at the ensemble's threshold, with the metrics and bootstrap intervals `evaluate` gives a
    run. Written as the ensemble's eval-NAME.json and predictions-NAME.csv."""
    from .decision import verdict

    run = RunDir(run_dir)
    metrics, members = run.read_metrics(), [RunDir(m) for m in run.members()]
    missing = [str(m.path) for m in members if not m.evaluation(name).exists()]
    if missing:
        raise TransferlabError(f"{missing[0]} has not been evaluated on {name!r} (no eval-{name}.json): evaluate "
                               f"every member on the set first")
    classes, threshold = metrics["classes"], metrics["threshold"]
    pos = positive_index(classes, metrics["positive_class"])
    rows = mean_probabilities(members, name, classes, file=f"predictions-{name}.csv")
    if rows is None:
        raise TransferlabError(f"a member of {run.path} has no predictions-{name}.csv: evaluate it on the set again")
    labels, probs = labels_and_probs(rows, classes)
    pred = decide(probs, pos, threshold)
    first = members[0].read_evaluation(name)
    notes = list(dict.fromkeys(n for m in members for n in m.read_evaluation(name)["notes"]))
    result = {"run": str(run.path), "name": name, "data": first["data"], "layout": first["layout"],
              "scored": first["scored"], "n": len(rows), "n_unreadable": first["n_unreadable"],
              "unreadable": first["unreadable"], "has_labels": bool(len(labels)) and bool((labels >= 0).all()),
              "classes": classes, "positive_class": metrics["positive_class"], "threshold": threshold,
              "threshold_chosen_on": metrics["threshold_chosen_on"], "members": [str(m.path) for m in members],
              "notes": notes + [f"the mean of {len(members)} members' probabilities; label-free shift estimates are "
                                f"per model (each member's eval-{name}.json)"],
              "adapt": [], "predicted_share": predicted_shares(pred, classes)}
    if result["has_labels"]:
        result.update(scores_with_cis(labels, probs, pos, threshold, n_boot, seed, classes))
    step = verdict(result, metrics.get("val", {}))
    if step["verdict"] != "usable":   # labelling, recalibration and retraining act on one model
        step["why"] += "; for an ensemble, do it with one of its members"
    result["next_step"] = step
    run.write_evaluation(result)
    write_csv(run.path / f"predictions-{name}.csv",
              [{"file": r["file"], "label": r["label"], **{f"prob_{c}": r[f"prob_{c}"] for c in classes},
                "predicted": classes[d]} for r, d in zip(rows, pred)])
    return result
