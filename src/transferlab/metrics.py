"""Classification metrics (from sklearn.metrics), the validation-chosen threshold, and uncertainty.

Binary problems are scored on the probability of the positive class (e.g. PNEUMONIA) at a threshold chosen on
validation; three or more classes on their (N, C) probabilities, decided by argmax.
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


def one_vs_rest_auc(y_true, probs) -> list[float | None]:
    """ROC-AUC of each class against the rest (None for a class that is absent, or alone, in y_true)."""
    y_true, probs = np.asarray(y_true).astype(int), np.asarray(probs, dtype=np.float64)
    out = []
    for c in range(probs.shape[1]):
        is_c = y_true == c
        out.append(float(skm.roc_auc_score(is_c, probs[:, c])) if 0 < is_c.sum() < len(y_true) else None)
    return out


def macro_auc(y_true, probs) -> float | None:
    """Mean one-vs-rest ROC-AUC over the classes it is defined for (sklearn's multi_class="ovr" macro AUC
    when every class is present); None when no class has both positives and negatives."""
    values = [v for v in one_vs_rest_auc(y_true, probs) if v is not None]
    return float(np.mean(values)) if values else None


def multiclass_metrics(y_true, probs, classes: list[str] | None = None) -> dict:
    """Metrics for three or more classes; the decision is the most probable class (argmax).

    precision/recall/specificity/f1 are macro averages (every class counts the same), *_weighted weigh each
    class by its images; roc_auc is the macro one-vs-rest AUC (over the classes present); per_class has
    precision, recall (sensitivity), specificity, f1, support and one-vs-rest roc_auc/pr_auc of each class;
    confusion_matrix[i][j] counts images of class i predicted as class j; top_k_accuracy for 2 <= k < classes.
    """
    y_true, probs = np.asarray(y_true).astype(int), np.asarray(probs, dtype=np.float64)
    k = probs.shape[1]
    labels = list(range(k))
    names = [str(c) for c in (classes or labels)]
    pred = probs.argmax(1)
    confusion = skm.confusion_matrix(y_true, pred, labels=labels)
    precision, recall, f1, support = skm.precision_recall_fscore_support(y_true, pred, labels=labels, zero_division=0)
    negatives = len(y_true) - confusion.sum(axis=1)                     # images not of class c
    true_negatives = negatives - (confusion.sum(axis=0) - np.diag(confusion))
    specificity = np.divide(true_negatives, negatives, out=np.zeros(k), where=negatives > 0)
    weighted = skm.precision_recall_fscore_support(y_true, pred, labels=labels, average="weighted", zero_division=0)
    aucs = one_vs_rest_auc(y_true, probs)
    return {
        "n": int(len(y_true)),
        "decision": "argmax",
        "loss": float(skm.log_loss(y_true, probs, labels=labels)),
        "accuracy": float(skm.accuracy_score(y_true, pred)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(y_true, pred)),
        "precision": float(precision.mean()),
        "recall": float(recall.mean()),
        "specificity": float(specificity.mean()),
        "f1": float(f1.mean()),
        "precision_weighted": float(weighted[0]),
        "recall_weighted": float(weighted[1]),
        "f1_weighted": float(weighted[2]),
        "roc_auc": macro_auc(y_true, probs),
        "roc_auc_classes": sum(v is not None for v in aucs),
        "top_k_accuracy": {str(j): float(skm.top_k_accuracy_score(y_true, probs, k=j, labels=labels))
                           for j in range(2, k)},
        "confusion_matrix": confusion.tolist(),
        "per_class": {
            name: {"precision": float(precision[c]), "recall": float(recall[c]), "specificity": float(specificity[c]),
                   "f1": float(f1[c]), "support": int(support[c]), "roc_auc": aucs[c],
                   "pr_auc": float(skm.average_precision_score(y_true == c, probs[:, c])) if aucs[c] is not None
                   else None}
            for c, name in enumerate(names)},
    }


def score(y_true, probs, threshold: float | None = None, classes: list[str] | None = None) -> dict:
    """All metrics for one split. `probs` is (N, C); binary problems also get metrics at `threshold`
    (column 1 is the positive class), three or more classes are decided by argmax (`classes` names them)."""
    probs = np.asarray(probs)
    if probs.shape[1] != 2:
        return multiclass_metrics(y_true, probs, classes)
    result = binary_metrics(y_true, probs[:, 1], 0.5)
    if threshold is not None:
        result["at_threshold"] = binary_metrics(y_true, probs[:, 1], threshold)
    return result


def bootstrap_ci(y_true, prob, metric, *, threshold: float = 0.5, n_boot: int = 1000,
                 alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap CI of `metric(y_true, prob, threshold)` over resampled test images.

    `prob` is the positive class's probability (binary) or the (N, C) probabilities (any number of classes).
    The one rule of every bootstrap CI here (analysis.external's too): resamples that lose a class of y_true are
    left out (AUC and balanced accuracy need every class); a metric undefined on a resample (AUC of one class) is
    left out of that resample."""
    y_true, prob = np.asarray(y_true), np.asarray(prob)
    n_classes = len(np.unique(y_true))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n_boot):
        idx = rng.integers(0, len(y_true), len(y_true))
        if len(np.unique(y_true[idx])) < n_classes:
            continue
        try:
            values.append(metric(y_true[idx], prob[idx], threshold))
        except ValueError:   # e.g. ROC AUC with one class present
            continue
    if not values:
        return (float("nan"), float("nan"))
    lo, hi = np.quantile(values, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def decisions(prob, threshold: float = 0.5) -> np.ndarray:
    """Predicted labels: positive-class probability >= threshold (binary, 1-D `prob`), else argmax of (N, C)."""
    prob = np.asarray(prob)
    return prob.argmax(1) if prob.ndim == 2 else (prob >= threshold).astype(int)


def _f1(y, p, t) -> float:
    if np.ndim(p) == 1:
        return skm.f1_score(y, decisions(p, t), zero_division=0)
    return skm.f1_score(y, decisions(p), average="macro", labels=list(range(np.shape(p)[1])), zero_division=0)


# metric(y_true, prob, threshold) for bootstrap_ci; `prob` 1-D (binary) or (N, C); multi-class: macro F1,
# macro one-vs-rest AUC, argmax decisions
BOOTSTRAP_METRICS = {
    "accuracy": lambda y, p, t: skm.accuracy_score(y, decisions(p, t)),
    "balanced_accuracy": lambda y, p, t: skm.balanced_accuracy_score(y, decisions(p, t)),
    "f1": _f1,
    "roc_auc": lambda y, p, t: skm.roc_auc_score(y, p) if np.ndim(p) == 1 else macro_auc(y, p),
}


def mcnemar(y_true, pred_a, pred_b) -> dict:
    """Exact McNemar test on paired predictions of two models for the same images (any number of classes:
    it compares which images each model gets right)."""
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
