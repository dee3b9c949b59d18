"""`evaluate --label-budget K` / `--labels FILE` / `--recalibrate`: the few target labels a user can afford.

    evaluate RUN --data new_hospital/ --label-budget 50      writes to-label-NAME.csv (path, label: empty)
    ... fill in the label column (any subset is fine) ...
    evaluate RUN --data new_hospital/ --labels to-label-NAME.csv [--recalibrate]

The first call also saves the sampling design (label-design-NAME.json) so that the second can weigh each label
by the images it stands for (analysis.labelling). eval-NAME.json gets a `labelled` block (whole-set estimates with
intervals) and, with --recalibrate, a `recalibrated` block (the threshold and temperature re-chosen on the labels,
scored without any image deciding its own rule), both beside the unadapted run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import TransferlabError
from ..metrics import mcnemar
from ..rundir import read_csv, write_csv
from .labelling import LabelDesign, design_weights, labelled_estimates, recalibrated_decisions


def to_label_path(run_path: Path, name: str) -> Path:
    return Path(run_path) / f"to-label-{name}.csv"


def design_path(run_path: Path, name: str) -> Path:
    return Path(run_path) / f"label-design-{name}.json"


def plan_labels(run_path: Path, name: str, files: list[Path], probs: np.ndarray, pred: np.ndarray, budget: int,
                seed: int = 0) -> dict:
    """Choose `budget` images, write to-label-NAME.csv (absolute path, empty label) and the design."""
    design = LabelDesign.fit(probs, pred)
    chosen = design.choose(probs, pred, budget, seed)
    write_csv(to_label_path(run_path, name), [{"path": str(Path(files[i]).resolve()), "label": ""} for i in chosen])
    design_path(run_path, name).write_text(json.dumps({**design.to_dict(), "budget": budget, "seed": seed,
                                                      "n": len(files)}, indent=1))
    strata = design.strata(probs, pred)
    return {"budget": int(len(chosen)), "seed": seed, "file": str(to_label_path(run_path, name)),
            "strata": int(len(np.unique(strata))), "per_stratum": {str(s): int(n) for s, n in
                                                                  zip(*np.unique(strata[chosen], return_counts=True))}}


def read_labels(path: str | Path, files: list[Path], root: Path, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """(indices into `files`, class indices) of the rows of a labels CSV (path,label) whose label is filled in.
    Paths may be absolute or relative to the set's root; labels are class names (any case)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise TransferlabError(f"--labels {path}: no such file")
    rows = read_csv(path)
    if not rows or "path" not in rows[0] or "label" not in rows[0]:
        raise TransferlabError(f"--labels {path}: needs the columns path,label (as in the to-label file)")
    where = {str(Path(f).resolve()): i for i, f in enumerate(files)}
    lookup = {c.lower(): i for i, c in enumerate(classes)}
    index, labels = [], []
    for line, row in enumerate(rows, 2):
        label = (row.get("label") or "").strip()
        if not label:
            continue
        file = Path(row["path"]).expanduser()
        key = str((file if file.is_absolute() else root / file).resolve())
        if key not in where:
            raise TransferlabError(f"--labels {path}, row {line}: {row['path']} is not one of the scored images")
        if label.lower() not in lookup:
            raise TransferlabError(f"--labels {path}, row {line}: label {label!r} is not one of the run's classes "
                                   f"({', '.join(classes)})")
        index.append(where[key])
        labels.append(lookup[label.lower()])
    if not index:
        raise TransferlabError(f"--labels {path}: no label filled in (fill the label column of some rows)")
    if len(set(index)) != len(index):
        raise TransferlabError(f"--labels {path}: an image is labelled twice")
    return np.array(index), np.array(labels)


def labelled_blocks(run_path: Path, name: str, labels_file, *, files: list[Path], root: Path, classes: list[str],
                    probs: np.ndarray, pred: np.ndarray, pos: int | None, threshold_method: str,
                    recalibrate: bool, target_labels: np.ndarray | None, threshold: float | None, score_exact,
                    seed: int = 0) -> dict:
    """The `labelled` block (and `recalibrated`, with `recalibrate`) of eval-NAME.json. `score_exact(labels,
    probs, threshold)`: the metrics with CIs of a labelled set (external.py's), for a target labelled whole."""
    idx, y = read_labels(labels_file, files, root, classes)
    saved = design_path(run_path, name)
    design = LabelDesign.from_dict(json.loads(saved.read_text())) if saved.exists() else LabelDesign.fit(probs, pred)
    strata = design.strata(probs, pred)
    scores = probs[:, pos] if pos is not None and probs.shape[1] == 2 else probs
    sampled = ("chosen by --label-budget (stratified by predicted class and confidence)" if saved.exists() else
               "not chosen by --label-budget: treated as a random sample within each stratum of predicted class "
               "and confidence; if they were picked for a reason, the intervals do not hold")
    out = {"labelled": {"file": str(labels_file), "how_sampled": sampled,
                        **labelled_estimates(strata, pred, idx, y, classes=classes, pos=pos, scores=scores, seed=seed)}}
    if not recalibrate:
        return out
    weights = design_weights(strata, idx)
    rule = recalibrated_decisions(probs, idx, y, weights, pos=pos, threshold_method=threshold_method, seed=seed)
    crossfit = rule["crossfit_decision"]
    block = {"threshold": rule["threshold"], "temperature": rule["temperature"], "bias": rule["bias"],
             "how": f"threshold and temperature re-chosen on the {len(idx)} labelled images; every labelled image "
                    f"scored by the rule chosen on the other {rule['folds'] - 1} of {rule['folds']} folds",
             "estimated": labelled_estimates(strata, crossfit, idx, y, classes=classes, pos=pos,
                                             scores=rule["probs"][:, pos] if pos is not None and probs.shape[1] == 2
                                             else rule["probs"], seed=seed),
             "mcnemar_on_labelled": mcnemar(y, crossfit[idx], pred[idx])}
    if target_labels is not None and (target_labels >= 0).all():   # a labelled set: score the other images exactly
        others = np.setdiff1d(np.arange(len(pred)), idx)
        truth = target_labels[others]
        block["other_images"] = {
            "n": int(len(others)),
            "unadapted": score_exact(truth, probs[others], threshold),
            "recalibrated": score_exact(truth, rule["probs"][others], rule["threshold"]),
            "mcnemar": mcnemar(truth, rule["decision"][others], pred[others]),
        }
    out["recalibrated"] = block
    out["_recalibrated_decision"] = rule["decision"]
    out["_recalibrated_probs"] = rule["probs"]
    return out

