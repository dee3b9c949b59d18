"""Finished run directories loaded for analysis: settings, metrics, history and per-split predictions."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..rundir import RunDir, read_csv

SPLITS = ("train", "val", "test")


@dataclass
class Predictions:
    files: list[str]
    labels: list[str]
    y: np.ndarray        # binary: 1 = positive class; three or more classes: the class index
    prob: np.ndarray     # binary: probability of the positive class; three or more: of the predicted class
    probs: np.ndarray    # (N, C) every class's probability, in the run's class order
    pred: np.ndarray     # the class index the run decided (predictions.csv `predicted`: its validation-chosen rule)
    true: np.ndarray     # the true class index


@dataclass
class Run:
    path: Path
    model: str
    strategy: str
    seed: int
    config: dict
    metrics: dict
    history: list[dict]
    predictions: dict[str, Predictions] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def group(self) -> tuple[str, str]:
        return self.model, self.strategy

    @property
    def classes(self) -> list[str]:
        return self.metrics["classes"]

    @property
    def positive(self) -> str:
        return self.metrics["positive_class"]

    @property
    def negative(self) -> str | None:
        return next(c for c in self.classes if c != self.positive) if self.positive else None

    @property
    def multiclass(self) -> bool:
        return len(self.classes) > 2

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2 and self.metrics.get("threshold") is not None

    @property
    def threshold(self) -> float:
        return float(self.metrics["threshold"])

    def at(self, split: str) -> dict:
        """A split's metrics at the validation-chosen threshold (at 0.5 for multi-class problems)."""
        m = self.metrics[split]
        return {**m, **m.get("at_threshold", {})}


def load_run(path: str | Path, *, model: str | None = None, strategy: str | None = None,
             seed: int | None = None) -> Run:
    run = RunDir(path)
    config, metrics = run.read_config(), run.read_metrics()
    history = [{k: _float(v) for k, v in row.items()} for row in read_csv(run.history)] if run.history.exists() else []
    settings = config["settings"]
    result = Run(run.path, model or settings["model"], strategy or settings["strategy"],
                 int(settings["seed"] if seed is None else seed), config, metrics, history)
    classes, positive = metrics["classes"], metrics["positive_class"]
    columns = [f"prob_{c}" for c in classes]
    rows = read_csv(run.predictions)
    for split in SPLITS:
        chosen = [r for r in rows if r["split"] == split]
        if not chosen or (positive and f"prob_{positive}" not in chosen[0]):
            continue
        true = np.array([classes.index(r["label"]) for r in chosen])
        pred = np.array([classes.index(r["predicted"]) for r in chosen])
        if all(c in chosen[0] for c in columns):
            probs = np.array([[float(r[c]) for c in columns] for r in chosen])
        else:   # older runs kept only the positive class's probability
            p = np.array([float(r[f"prob_{positive}"]) for r in chosen])
            probs = np.column_stack([1 - p, p]) if classes.index(positive) == 1 else np.column_stack([p, 1 - p])
        if positive:
            pos = classes.index(positive)
            y, prob = (true == pos).astype(int), probs[:, pos]
        else:
            y, prob = true, probs[np.arange(len(pred)), pred]
        result.predictions[split] = Predictions([r["file"] for r in chosen], [r["label"] for r in chosen], y, prob,
                                                probs, pred, true)
    return result


def load_study_runs(study_dir: str | Path, runs: list[dict]) -> list[Run]:
    return [load_run(Path(study_dir) / r["run"], model=r["model"], strategy=r["strategy"], seed=r["seed"])
            for r in runs]


def validation_score(metrics: dict) -> tuple[float, float]:
    """What runs are ranked by (a run's metrics.json), higher is better: validation AUC (macro for three or more
    classes), then lower validation loss. Never a test number."""
    val = metrics["val"]
    return (val.get("roc_auc") if val.get("roc_auc") is not None else -np.inf, -val.get("loss", np.inf))


def chosen_run(runs: list[Run]) -> Run:
    """The run chosen on validation: the best by `validation_score`, the first of equals. Section E analyses it in
    detail, and it is the best member of an ensemble of the same runs (ensembles.rank_runs), against which section
    D tests the ensemble."""
    return max(runs, key=lambda r: validation_score(r.metrics))


def group_runs(runs: list[Run]) -> dict[tuple[str, str], list[Run]]:
    """Runs by (model, strategy), in study order, each group sorted by seed."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault(run.group, []).append(run)
    return {k: sorted(v, key=lambda r: r.seed) for k, v in groups.items()}


def _float(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return value
