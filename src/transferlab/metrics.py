"""Classification metrics (from sklearn.metrics), the validation-chosen threshold, and uncertainty.

Binary problems are scored on the probability of the positive class (e.g. PNEUMONIA).
"""
from __future__ import annotations

import numpy as np
from scipy.stats import binomtest
from sklearn import metrics as skm


def choose_threshold(y_true, prob, method: str = "youden", sample_weight=None) -> float:
    """Decision threshold picked on *validation* predictions only.

    youden: maximises sensitivity + specificity - 1 (robust to class imbalance);
    f1: maximises F1 of the positive class.
    sample_weight: e.g. validation reweighted to another class balance (f1 depends on it, youden does not).
    """
    y_true, prob = np.asarray(y_true), np.asarray(prob)
    if len(np.unique(y_true)) < 2:
        return 0.5
    if method == "youden":
        fpr, tpr, thresholds = skm.roc_curve(y_true, prob, sample_weight=sample_weight)
        best = int(np.argmax(tpr - fpr))
    elif method == "f1":
        precision, recall, thresholds = skm.precision_recall_curve(y_true, prob, sample_weight=sample_weight)
        f1 = 2 * precision * recall / np.maximum(precision + recall, 1e-12)
        best = int(np.argmax(f1[:-1]))
    else:
        raise ValueError(f"unknown threshold method {method!r}")
    return float(np.clip(thresholds[best], 0.0, 1.0))


def binary_metrics(y_true, prob, threshold: float = 0.5) -> dict:
    """Loss, accuracy, balanced accuracy, precision, recall, specificity, F1, ROC-AUC, PR-AUC, confusion."""
    y_true = np.asarray(y_true).astype(int)
    prob = np.clip(np.asarray(prob, dtype=np.float64), 1e-7, 1 - 1e-7)
    pred = (prob >= threshold).astype(int)
    both_classes = len(np.unique(y_true)) == 2
    tn, fp, fn, tp = skm.confusion_matrix(y_true, pred, labels=[0, 1]).ravel()
    return {
        "n": int(len(y_true)),
        "threshold": float(threshold),
        "loss": float(skm.log_loss(y_true, prob, labels=[0, 1])),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, pred)) if both_classes else None,
        "precision": float(skm.precision_score(y_true, pred, zero_division=0)),
        "recall": float(skm.recall_score(y_true, pred, zero_division=0)),
        "specificity": float(skm.recall_score(y_true, pred, pos_label=0, zero_division=0)),
        "f1": float(skm.f1_score(y_true, pred, zero_division=0)),
        "roc_auc": float(skm.roc_auc_score(y_true, prob)) if both_classes else None,
        "pr_auc": float(skm.average_precision_score(y_true, prob)) if both_classes else None,
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def multiclass_metrics(y_true, probs) -> dict:
    """Metrics for more than two classes (macro averages)."""
    y_true, probs = np.asarray(y_true).astype(int), np.asarray(probs, dtype=np.float64)
    labels = list(range(probs.shape[1]))
    pred = probs.argmax(1)
    out = {
        "n": int(len(y_true)),
        "loss": float(skm.log_loss(y_true, probs, labels=labels)),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, pred)),
        "precision": float(skm.precision_score(y_true, pred, average="macro", zero_division=0)),
        "recall": float(skm.recall_score(y_true, pred, average="macro", zero_division=0)),
        "f1": float(skm.f1_score(y_true, pred, average="macro", zero_division=0)),
        "confusion_matrix": skm.confusion_matrix(y_true, pred, labels=labels).tolist(),
    }
    try:
        out["roc_auc"] = float(skm.roc_auc_score(y_true, probs, multi_class="ovr", labels=labels))
    except ValueError:
        out["roc_auc"] = None
    return out


def score(y_true, probs, threshold: float | None = None) -> dict:
    """All metrics for one split. `probs` is (N, C); binary problems also get metrics at `threshold`."""
    probs = np.asarray(probs)
    if probs.shape[1] != 2:
        return multiclass_metrics(y_true, probs)
    result = binary_metrics(y_true, probs[:, 1], 0.5)
    if threshold is not None:
        result["at_threshold"] = binary_metrics(y_true, probs[:, 1], threshold)
    return result


def bootstrap_ci(y_true, prob, metric, *, threshold: float = 0.5, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of `metric(y_true, prob, threshold)` over resampled test images."""
    y_true, prob = np.asarray(y_true), np.asarray(prob)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y_true), len(y_true))
        if len(np.unique(y_true[idx])) < 2:
            continue
        values.append(metric(y_true[idx], prob[idx], threshold))
    if not values:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


BOOTSTRAP_METRICS = {
    "accuracy": lambda y, p, t: skm.accuracy_score(y, p >= t),
    "f1": lambda y, p, t: skm.f1_score(y, p >= t, zero_division=0),
    "roc_auc": lambda y, p, t: skm.roc_auc_score(y, p),
}


def mcnemar(y_true, pred_a, pred_b) -> dict:
    """Exact McNemar test on paired predictions of two models for the same images."""
    y_true, pred_a, pred_b = map(np.asarray, (y_true, pred_a, pred_b))
    a_right, b_right = pred_a == y_true, pred_b == y_true
    only_a = int(np.sum(a_right & ~b_right))
    only_b = int(np.sum(~a_right & b_right))
    n = only_a + only_b
    p = 1.0 if n == 0 else float(binomtest(only_a, n, 0.5).pvalue)
    return {"only_a_correct": only_a, "only_b_correct": only_b, "p_value": p}


def expected_calibration_error(y_true, prob, n_bins: int = 10) -> dict:
    """ECE of the positive-class probability, with the reliability-diagram bins (sklearn's calibration_curve)."""
    from sklearn.calibration import calibration_curve

    y_true, prob = np.asarray(y_true), np.asarray(prob)
    frac_pos, mean_pred = calibration_curve(y_true, prob, n_bins=n_bins, strategy="uniform")
    counts = np.histogram(prob, bins=np.linspace(0, 1, n_bins + 1))[0]
    counts = counts[counts > 0]
    ece = float(np.sum(counts / counts.sum() * np.abs(frac_pos - mean_pred)))
    return {"ece": ece, "bin_mean_predicted": mean_pred.tolist(), "bin_fraction_positive": frac_pos.tolist(),
            "bin_count": counts.tolist()}
