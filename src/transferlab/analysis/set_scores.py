"""The scores of one scored set of images, a run's or an ensemble's: metrics at 0.5 and at the decision threshold
with bootstrap 95% intervals, and the share of each predicted class."""
from __future__ import annotations

import numpy as np

from ..evaluation import decide, split_metrics


def scores_with_cis(labels: np.ndarray, probs: np.ndarray, pos: int | None, threshold: float | None, n_boot: int,
                    seed: int, classes: list[str]) -> dict:
    """split_metrics at 0.5 and at the threshold, plus bootstrap 95% CIs (images resampled) of accuracy,
    balanced accuracy (and AUC for two classes) at the decision rule."""
    from scipy.stats import rankdata

    out = split_metrics(labels, probs, pos, threshold, classes)
    out.pop("threshold", None)   # the 0.5 of the plain metrics; the entry's "threshold" is its decision threshold
    pred = decide(probs, pos, threshold)
    k = probs.shape[1]
    correct = pred == labels
    ranks = rankdata(probs[:, pos]) if k == 2 else None
    rng = np.random.default_rng(seed)
    values: dict[str, list] = {"accuracy": [], "balanced_accuracy": [], "roc_auc": []}
    n_present = int((np.bincount(labels, minlength=k) > 0).sum())
    for _ in range(n_boot):
        i = rng.integers(0, len(labels), len(labels))
        n_class = np.bincount(labels[i], minlength=k)
        present = n_class > 0
        if present.sum() < n_present:   # metrics.bootstrap_ci's rule: resamples that lose a class are left out
            continue
        values["accuracy"].append(correct[i].mean())
        if n_present < 2:
            continue
        recall = np.bincount(labels[i], weights=correct[i], minlength=k)[present] / n_class[present]
        values["balanced_accuracy"].append(recall.mean())
        if ranks is not None:   # Mann-Whitney AUC on the resample (ties: average ranks of the full set)
            positive = labels[i] == pos
            r = rankdata(ranks[i])
            n1, n0 = positive.sum(), (~positive).sum()
            values["roc_auc"].append((r[positive].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))
    out["ci"] = {k: [float(q) for q in np.quantile(v, [0.025, 0.975])] for k, v in values.items() if v}
    out["ci_n_boot"] = n_boot
    return out


def predicted_shares(pred: np.ndarray, classes: list[str]) -> dict:
    counts = np.bincount(pred, minlength=len(classes))
    return {c: float(counts[i] / max(len(pred), 1)) for i, c in enumerate(classes)}
