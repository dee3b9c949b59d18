"""Calibration of the predicted probabilities and the decision threshold, on validation and test."""
from __future__ import annotations

import numpy as np
from sklearn import metrics as skm

from ..metrics import expected_calibration_error
from .runs import Run

def calibration(run: Run, n_bins: int = 10) -> dict:
    """Reliability-diagram bins, ECE and Brier score of the positive-class probability on val and test."""
    out = {}
    for split in ("val", "test"):
        p = run.predictions[split]
        result = expected_calibration_error(p.y, p.prob, n_bins=n_bins)
        result["brier"] = float(skm.brier_score_loss(p.y, p.prob))
        result["mean_predicted"] = float(p.prob.mean())
        result["positive_share"] = float(p.y.mean())
        out[split] = result
    return out


def threshold_curve(run: Run, points: int = 201) -> dict:
    """Sensitivity and specificity on val and test as the threshold moves over [0, 1]."""
    grid = np.linspace(0, 1, points)
    out = {"thresholds": grid.tolist(), "val_threshold": run.threshold}
    for split in ("val", "test"):
        p = run.predictions[split]
        pred = p.prob[None, :] >= grid[:, None]
        pos, neg = p.y == 1, p.y == 0
        out[split] = {"sensitivity": (pred[:, pos].mean(1) if pos.any() else np.full(points, np.nan)).tolist(),
                      "specificity": ((~pred[:, neg]).mean(1) if neg.any() else np.full(points, np.nan)).tolist()}
    # for diagnosis only: where the test set's own Youden threshold would have been
    p = run.predictions["test"]
    if len(np.unique(p.y)) == 2:
        fpr, tpr, thr = skm.roc_curve(p.y, p.prob)
        best = int(np.argmax(tpr - fpr))
        out["test_youden_threshold"] = float(np.clip(thr[best], 0, 1))
        out["test_youden_sensitivity"], out["test_youden_specificity"] = float(tpr[best]), float(1 - fpr[best])
    return out


def _calibration_sentence(cal: dict, pos: str, balance: str) -> str:
    val, test = cal["val"], cal["test"]
    text = (f"Calibration: ECE {val['ece']:.3f} on validation and {test['ece']:.3f} on test (Brier {val['brier']:.3f} / "
            f"{test['brier']:.3f}); mean predicted {pos} probability on test {test['mean_predicted']:.3f} vs "
            f"{test['positive_share']:.3f} actually {pos}")
    bins = [(abs(f - m), m, f, n) for m, f, n in
            zip(test["bin_mean_predicted"], test["bin_fraction_positive"], test["bin_count"]) if n >= 5]
    if bins:
        _, m, f, n = max(bins)
        text += (f"; worst test bin: predicted {m:.2f}, observed {f:.2f} over {n} images "
                 f"(the model {'over' if m > f else 'under'}-states the {pos} probability there)")
    text += "."
    if balance != "none" and abs(test["mean_predicted"] - 0.5) < abs(test["positive_share"] - 0.5) - 0.05:
        text += (f" Training with balance={balance} fits the model to equal class priors, which pulls its "
                 f"probabilities towards 50/50 (mean {test['mean_predicted']:.3f}) while {test['positive_share']:.1%} "
                 f"of the test images are {pos}: the probabilities are not calibrated to this prevalence, which "
                 f"is expected to account for much of the ECE.")
    return text


def _threshold_sentence(run: Run, tc: dict) -> str:
    val, test = run.at("val"), run.at("test")
    grid = np.array(tc["thresholds"])
    lo, hi = (int(np.argmin(np.abs(grid - t))) for t in (max(run.threshold - 0.1, 0), min(run.threshold + 0.1, 1)))
    sens, spec = tc["test"]["sensitivity"], tc["test"]["specificity"]
    text = (f"Threshold: at the validation-chosen {run.threshold:.3f}, sensitivity/specificity are "
            f"{val['recall']:.3f}/{val['specificity']:.3f} on validation and {test['recall']:.3f}/"
            f"{test['specificity']:.3f} on test; moving it from {grid[lo]:.3f} to {grid[hi]:.3f} takes test sensitivity "
            f"from {sens[lo]:.3f} to {sens[hi]:.3f} and specificity from {spec[lo]:.3f} to {spec[hi]:.3f}")
    if "test_youden_threshold" in tc:
        text += (f"; the test set's own best (Youden) threshold would be {tc['test_youden_threshold']:.3f} "
                 f"({tc['test_youden_sensitivity']:.3f}/{tc['test_youden_specificity']:.3f}; a diagnosis of the shift, "
                 f"not a usable choice)")
    return text + "."


def top_label_calibration(run: Run, n_bins: int = 10) -> dict:
    """Any number of classes: the confidence of the predicted class against how often that prediction is right,
    on validation and test (same bins and ECE as `calibration`)."""
    out = {}
    for split in ("val", "test"):
        p = run.predictions[split]
        confidence = p.probs[np.arange(len(p.pred)), p.pred]
        correct = (p.pred == p.true).astype(int)
        result = expected_calibration_error(correct, confidence, n_bins=n_bins)
        result["brier"] = float(np.mean(np.sum((p.probs - np.eye(p.probs.shape[1])[p.true]) ** 2, axis=1)))
        result["mean_predicted"] = float(confidence.mean())
        result["positive_share"] = float(correct.mean())
        out[split] = result
    return out
