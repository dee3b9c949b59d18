"""Validation vs test: the gap, how much of it the class balance explains, and over/under-fitting."""
from __future__ import annotations

from .runs import Run

def val_test_gap(run: Run) -> dict:
    """Validation vs test at the validation-chosen threshold (AUC is threshold-free)."""
    val, test = run.at("val"), run.at("test")
    keys = ("accuracy", "balanced_accuracy", "recall", "specificity", "f1", "roc_auc")
    out = {f"{split}_{k}": m.get(k) for split, m in (("val", val), ("test", test)) for k in keys}
    out["accuracy_gap"] = val["accuracy"] - test["accuracy"]
    if val.get("roc_auc") is not None and test.get("roc_auc") is not None:
        out["auc_gap"] = val["roc_auc"] - test["roc_auc"]
    return out


def split_balance(run: Run) -> dict:
    """Images, counts and share of every class per split (from config.json's counts); `positive_share` for two
    classes."""
    counts = run.config["data"]["counts"]
    pos = run.classes.index(run.positive) if run.positive else None
    return {split: {"n": int(sum(c)), "counts": dict(zip(run.classes, c)),
                    "shares": {k: v / sum(c) for k, v in zip(run.classes, c)},
                    "positive_share": c[pos] / sum(c) if pos is not None else None}
            for split, c in counts.items() if sum(c)}


def class_mix_effect(run: Run) -> dict:
    """Any number of classes: the test accuracy the validation recall of each class predicts at the test's class
    mix, sum_k share_test(k) x recall_val(k), against the measured one (the binary prevalence_effect in general)."""
    val, test = run.predictions["val"], run.predictions["test"]
    recall = {split: [float((p.pred[p.true == k] == k).mean()) if (p.true == k).any() else None
                      for k in range(len(run.classes))] for split, p in (("val", val), ("test", test))}
    shares = [float((test.true == k).mean()) for k in range(len(run.classes))]
    expected = sum(s * r for s, r in zip(shares, recall["val"]) if r is not None)
    measured = float((test.pred == test.true).mean())
    val_acc = float((val.pred == val.true).mean())
    return {"val_accuracy": val_acc, "test_accuracy": measured, "expected_test_accuracy": expected,
            "from_class_mix": val_acc - expected, "from_recalls": expected - measured,
            "val_shares": [float((val.true == k).mean()) for k in range(len(run.classes))], "test_shares": shares,
            "val_recall": recall["val"], "test_recall": recall["test"]}


def prevalence_effect(run: Run) -> dict:
    """How much of the val->test accuracy change the change of class balance alone predicts.

    With the validation sensitivity and specificity, accuracy at the test's prevalence would be
    prev * sens + (1 - prev) * spec; what is left of the gap comes from sensitivity/specificity themselves
    changing on test."""
    balance = split_balance(run)
    val, test = run.at("val"), run.at("test")
    prev = balance["test"]["positive_share"]
    expected = prev * val["recall"] + (1 - prev) * val["specificity"]
    return {"val_positive_share": balance["val"]["positive_share"], "test_positive_share": prev,
            "val_sensitivity": val["recall"], "val_specificity": val["specificity"],
            "test_sensitivity": test["recall"], "test_specificity": test["specificity"],
            "expected_test_accuracy": expected, "test_accuracy": test["accuracy"],
            "test_balanced_accuracy": test["balanced_accuracy"],
            "from_prevalence": val["accuracy"] - expected, "from_sens_spec": expected - test["accuracy"]}


def fitting(run: Run) -> dict:
    """Over/under-fitting read from history.csv: losses at the best and last epochs, and val loss after the best."""
    h = run.history
    if not h:
        return {}
    best = min(int(run.metrics.get("best_epoch") or len(h)), len(h))
    b, last = h[best - 1], h[-1]
    min_val = min(r["val_loss"] for r in h)
    after = [r["val_loss"] for r in h[best:]]
    return {
        # lpft: its probe epochs come before the fine-tuning epochs that `epochs` counts
        "best_epoch": best, "last_epoch": len(h),
        "max_epochs": run.config["settings"].get("epochs") + sum(r.get("phase") == "probe" for r in h),
        "monitor": run.metrics.get("monitor", "val_loss"),
        "train_loss_best": b["train_loss"], "val_loss_best": b["val_loss"], "gap_best": b["val_loss"] - b["train_loss"],
        "train_acc_best": b["train_acc"], "val_acc_best": b["val_acc"],
        "train_loss_last": last["train_loss"], "val_loss_last": last["val_loss"],
        "gap_last": last["val_loss"] - last["train_loss"],
        "val_loss_rise_after_best": (max(after) - b["val_loss"]) if after else 0.0,
        "val_loss_last_vs_min": last["val_loss"] - min_val,
        "val_loss_first": h[0]["val_loss"], "train_loss_first": h[0]["train_loss"],
    }


def _fitting_sentence(fit: dict) -> str:
    text = (f"Fitting: best epoch {fit['best_epoch']} of {fit['last_epoch']} run (max {fit['max_epochs']}, on "
            f"{fit['monitor']}); train/val loss {fit['train_loss_best']:.3f}/{fit['val_loss_best']:.3f} at the best epoch "
            f"(gap {fit['gap_best']:+.3f}) and {fit['train_loss_last']:.3f}/{fit['val_loss_last']:.3f} at the last "
            f"(gap {fit['gap_last']:+.3f}); ")
    if fit["val_loss_rise_after_best"] > 0.02 * max(fit["val_loss_best"], 1e-9) and fit["last_epoch"] > fit["best_epoch"]:
        verdict = (f"validation loss rose by {fit['val_loss_rise_after_best']:.3f} after the best epoch while training "
                   f"loss kept falling: over-fitting, which best-epoch selection undoes")
    elif fit["best_epoch"] == fit["last_epoch"] and fit["last_epoch"] == fit["max_epochs"]:
        verdict = ("validation loss was still at its best in the last allowed epoch: under-fitted, more epochs "
                   "would likely help")
    elif fit["gap_best"] > 0.5 * max(fit["train_loss_best"], 1e-9) and fit["gap_best"] > 0.05:
        verdict = "validation loss well above training loss: the model fits the training images better than new ones"
    else:
        verdict = "no clear sign of over- or under-fitting"
    return text + verdict + "."
