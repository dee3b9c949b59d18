"""The layout of the JSON a run directory holds, declared once: metrics.json (RunMetrics, written by
training.train and ensembles.ensemble) and eval-NAME.json (Evaluation, written by analysis.external.evaluate).
Both are read through RunDir (read_metrics, read_evaluation); the report, comparison and study code index these
keys. A split's scores (SplitScores) come from metrics.score / metrics.score_multiclass."""
from __future__ import annotations

from typing import Any, TypedDict

SplitScores = dict[str, Any]   # n, loss, accuracy, balanced_accuracy, recall, specificity, roc_auc, ... (metrics.py)


class RunMetrics(TypedDict, total=False):
    classes: list[str]
    positive_class: str | None          # two classes: the class whose probability is thresholded
    threshold: float | None             # chosen on validation with threshold_method; None: argmax
    threshold_method: str | None
    threshold_chosen_on: str | None
    decision: str                       # the rule in words
    best_epoch: int
    epochs_run: int
    monitor: str
    seconds: dict[str, float]           # decode, prepare, fit, evaluate, ..., total
    features_from_cache: bool           # prepare's backbone pass was read from an earlier run's cache
    peak_rss_mb: float
    cuda_peak_mb: float | None
    trainable_params: int
    total_params: int
    train: SplitScores
    val: SplitScores
    test: SplitScores


class Evaluation(TypedDict, total=False):
    run: str
    name: str                           # eval-NAME.json
    data: str
    layout: str
    scored: str
    n: int
    n_unreadable: int
    unreadable: list[tuple[str, str]]
    has_labels: bool
    classes: list[str]
    positive_class: str | None
    threshold: float | None             # the run's, chosen on its validation split
    threshold_chosen_on: str | None
    notes: list[str]
    adapt: list[str]
    predicted_share: dict[str, float]
    # with labels, also every key of metrics.score (two classes: the scores at 0.5, at_threshold at the run's
    # threshold; more: the multiclass scores), and their bootstrap intervals:
    at_threshold: SplitScores
    ci: dict[str, list[float]]          # accuracy, balanced_accuracy, roc_auc: [2.5%, 97.5%]
    ci_n_boot: int
    versus_init: dict                   # a --init run's starting point on the same images
    shift: dict                         # analysis.shift.estimate_shift
    truth: dict                         # analysis.shift.compare_with_truth
    findings: list[str]
    label_budget: dict                  # analysis.target_labels.plan_labels
    labelled: dict                      # estimates from --labels
    recalibrated: dict
    adapted: dict[str, dict]            # per --adapt method
    tta: dict
    agreement: dict                     # analysis.agreement.annotate (a study's other runs)
    next_step: dict                     # analysis.decision.verdict
    members: list[str]                  # an ensemble's result (analysis.ensemble_scoring): its member runs
    seconds: float
