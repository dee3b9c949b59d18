"""metrics.py and the decision helpers against values worked out by hand (in the comments)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferlab.engine import validation_scores
from transferlab.errors import TransferlabError
from transferlab.evaluation import decide, positive_index, split_metrics
from transferlab.metrics import (BOOTSTRAP_METRICS, binary_metrics, bootstrap_ci, choose_threshold, macro_auc, mcnemar,
                                 multiclass_metrics)


def test_choose_threshold_youden_and_f1():
    # y 0 0 1 1 1 1 with p .3 .6 .2 .5 .8 .9. Candidate thresholds, (TPR, FPR) -> Youden J; precision, recall -> F1:
    #   .9: (1/4, 0) .25   P 1,   R 1/4 .40     .6: (2/4, 1/2) 0    P 2/3, R 1/2 .571   .3: (3/4, 1) -.25  P 3/5, R 3/4 .667
    #   .8: (2/4, 0) .50   P 1,   R 2/4 .667    .5: (3/4, 1/2) .25  P 3/4, R 3/4 .75    .2: (1, 1)    0     P 4/6, R 1   .80
    y, p = [0, 0, 1, 1, 1, 1], [0.3, 0.6, 0.2, 0.5, 0.8, 0.9]
    assert choose_threshold(y, p, "youden") == pytest.approx(0.8)
    assert choose_threshold(y, p, "f1") == pytest.approx(0.2)
    assert choose_threshold([1, 1, 1], [0.2, 0.7, 0.9]) == 0.5          # one class: nothing to choose on
    with pytest.raises(ValueError, match="unknown threshold method"):
        choose_threshold(y, p, "accuracy")


def test_decide_binary_threshold_and_argmax():
    probs = np.array([[0.7, 0.3], [0.4, 0.6], [0.55, 0.45]])
    assert decide(probs, 1, 0.45).tolist() == [0, 1, 1]        # positive (column 1) when p1 >= 0.45
    assert decide(probs, 0, 0.6).tolist() == [0, 1, 1]         # positive column 0: .7 >= .6; .4 and .55 are not
    assert decide(probs, 0, 0.5).tolist() == [0, 1, 0]
    assert decide(probs, 1, None).tolist() == [0, 1, 0]        # no threshold: argmax
    three = np.array([[0.2, 0.3, 0.5], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1]])
    assert decide(three, None, None).tolist() == [2, 0, 1]
    assert decide(three, 1, 0.05).tolist() == [2, 0, 1]        # a threshold never applies to three classes


def test_positive_index():
    assert positive_index(["NORMAL", "PNEUMONIA"]) == 1
    assert positive_index(["PNEUMONIA", "normal"]) == 0          # the class not called normal
    assert positive_index(["NORMAL", "PNEUMONIA"], "NORMAL") == 0
    assert positive_index(["A", "B", "C"]) is None                # three classes have no positive class
    with pytest.raises(TransferlabError, match="only for two classes"):
        positive_index(["A", "B", "C"], "B")
    with pytest.raises(TransferlabError, match="not one of the classes"):
        positive_index(["A", "B"], "C")


def test_binary_metrics_by_hand():
    # y 0 0 0 1 1 1 1, p .2 .6 .1 .7 .4 .9 .8; at 0.5: predicted 0 1 0 1 0 1 1 -> TN 2, FP 1, FN 1, TP 3
    y, p = [0, 0, 0, 1, 1, 1, 1], [0.2, 0.6, 0.1, 0.7, 0.4, 0.9, 0.8]
    m = binary_metrics(y, p, 0.5)
    assert m["confusion_matrix"] == [[2, 1], [1, 3]] and m["n"] == 7 and m["threshold"] == 0.5
    assert m["accuracy"] == pytest.approx(5 / 7)
    assert m["precision"] == pytest.approx(3 / 4) and m["recall"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(3 / 4)
    assert m["balanced_accuracy"] == pytest.approx((3 / 4 + 2 / 3) / 2)
    # AUC: of the 4 x 3 (positive, negative) pairs the positive scores higher in all but (.4, .6)
    assert m["roc_auc"] == pytest.approx(11 / 12)
    # average precision: ranked .9 .8 .7 (+ + +) .6 (-) .4 (+): recall steps of 1/4 at precision 1, 1, 1, 4/5
    assert m["pr_auc"] == pytest.approx((1 + 1 + 1 + 0.8) / 4)
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.8, 0.4, 0.9, 0.7, 0.4, 0.9, 0.8])))
    at = binary_metrics(y, p, 0.7)   # predicted 0 0 0 1 0 1 1
    assert at["confusion_matrix"] == [[3, 0], [1, 3]] and at["specificity"] == 1.0 and at["recall"] == 0.75


def test_split_metrics_puts_the_positive_class_in_column_1():
    # NORMAL is column 1 of the run's probabilities but the positive class here is column 0
    labels = np.array([0, 0, 1, 1])
    probs = np.array([[0.9, 0.1], [0.3, 0.7], [0.2, 0.8], [0.6, 0.4]])
    m = split_metrics(labels, probs, 0, 0.5)
    assert m["confusion_matrix"] == [[1, 1], [1, 1]]   # positives = label 0; called when column 0 >= 0.5
    assert m["roc_auc"] == pytest.approx(0.75) and m["at_threshold"]["threshold"] == 0.5


# y 0 0 1 1 2 2; argmax 0 1 1 1 2 0 (row 5 puts class 2 third: a top-2 miss)
Y3 = np.array([0, 0, 1, 1, 2, 2])
P3 = np.array([[0.6, 0.3, 0.1], [0.3, 0.5, 0.2], [0.2, 0.7, 0.1], [0.1, 0.6, 0.3], [0.1, 0.2, 0.7], [0.5, 0.3, 0.2]])


def test_multiclass_metrics_by_hand():
    m = multiclass_metrics(Y3, P3, ["A", "B", "C"])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]] and m["decision"] == "argmax"
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["balanced_accuracy"] == pytest.approx((1 / 2 + 1 + 1 / 2) / 3)
    a, b, c = m["per_class"]["A"], m["per_class"]["B"], m["per_class"]["C"]
    assert (a["precision"], a["recall"], a["specificity"], a["support"]) == pytest.approx((1 / 2, 1 / 2, 3 / 4, 2))
    assert (b["precision"], b["recall"], b["specificity"]) == pytest.approx((2 / 3, 1, 3 / 4))
    assert (c["precision"], c["recall"], c["specificity"]) == pytest.approx((1, 1 / 2, 1))
    f1 = [1 / 2, 2 * (2 / 3) / (2 / 3 + 1), 2 * (1 / 2) / (1 + 1 / 2)]
    assert m["f1"] == pytest.approx(np.mean(f1)) and m["f1_weighted"] == pytest.approx(np.mean(f1))  # equal supports
    assert m["specificity"] == pytest.approx((3 / 4 + 3 / 4 + 1) / 3)
    # one-vs-rest AUC. A: positives .6 .3 vs negatives .2 .1 .1 .5 -> 7 of 8 pairs; B: 8 of 8;
    # C: positives .7 .2 vs negatives .1 .2 .1 .3 -> 4 + 2 + a tie (1/2) = 6.5 of 8
    assert [a["roc_auc"], b["roc_auc"], c["roc_auc"]] == pytest.approx([7 / 8, 1, 6.5 / 8])
    assert m["roc_auc"] == pytest.approx((7 / 8 + 1 + 6.5 / 8) / 3) and m["roc_auc_classes"] == 3
    assert m["top_k_accuracy"] == {"2": pytest.approx(5 / 6)}
    assert m["loss"] == pytest.approx(-np.mean(np.log([0.6, 0.3, 0.7, 0.6, 0.7, 0.2])))


def test_weighted_averages_and_a_class_missing_from_y():
    y = np.array([0, 0, 0, 1])             # class 2 absent: its one-vs-rest AUC is undefined, not a crash
    probs = np.array([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]])
    m = multiclass_metrics(y, probs)
    # predicted 0 0 1 1: class 0 precision 1, recall 2/3; class 1 precision 1/2, recall 1
    assert m["precision_weighted"] == pytest.approx((3 * 1 + 1 * 0.5) / 4)
    assert m["recall_weighted"] == pytest.approx((3 * 2 / 3 + 1 * 1) / 4)
    assert m["per_class"]["2"]["roc_auc"] is None and m["per_class"]["2"]["support"] == 0
    # class 0: positives .8 .6 .2 vs negative .3 -> 2 of 3; class 1: positive .6 vs .1 .3 .7 -> 2 of 3
    assert m["roc_auc"] == pytest.approx(2 / 3) and m["roc_auc_classes"] == 2
    assert macro_auc([0, 0], probs[:2]) is None


def test_validation_scores_survive_a_class_missing_from_validation():
    logits = torch.log(torch.tensor([[0.8, 0.1, 0.1], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.3, 0.6, 0.1]]))
    scores = validation_scores(logits, torch.tensor([0, 0, 0, 1]))
    assert scores["val_auc"] == pytest.approx(2 / 3)          # as above, over the two classes validation has
    assert scores["val_acc"] == pytest.approx(3 / 4)
    assert scores["val_balanced_accuracy"] == pytest.approx((2 / 3 + 1) / 2)
    assert math.isnan(validation_scores(logits, torch.tensor([1, 1, 1, 1]))["val_auc"])
    two = validation_scores(torch.log(torch.tensor([[0.9, 0.1], [0.4, 0.6]])), torch.tensor([0, 1]))
    assert two["val_auc"] == 1.0


def test_bootstrap_ci_any_number_of_classes():
    # every image right: every resample scores 1
    y = np.array([0, 1, 2] * 10)
    right = np.eye(3)[y] * 0.8 + 0.1
    assert bootstrap_ci(y, right, BOOTSTRAP_METRICS["accuracy"], n_boot=50) == (1.0, 1.0)
    # accuracy 1/2 on 400 images: the 95% interval is about 1/2 +- 1.96 sqrt(1/4 / 400) = 0.5 +- 0.049
    y2 = np.array([0, 1] * 200)
    half = np.where(np.arange(400) % 4 < 2, y2, 1 - y2)     # right, right, wrong, wrong, ...
    lo, hi = bootstrap_ci(y2, half.astype(float), BOOTSTRAP_METRICS["accuracy"], n_boot=400)
    assert lo == pytest.approx(0.451, abs=0.015) and hi == pytest.approx(0.549, abs=0.015)
    lo3, hi3 = bootstrap_ci(np.r_[y2, [2] * 4], np.eye(3)[np.r_[half, [2] * 4]], BOOTSTRAP_METRICS["accuracy"],
                            n_boot=400)
    assert lo3 == pytest.approx(0.456, abs=0.015) and hi3 == pytest.approx(0.554, abs=0.015)
    # a resample that loses a class is left out, so the 3-class AUC never meets a missing class; 3 images of
    # 3 classes: only the 6 of 27 resamples that are permutations remain, each with AUC 1
    assert bootstrap_ci(np.array([0, 1, 2]), np.eye(3), BOOTSTRAP_METRICS["roc_auc"], n_boot=200) == (1.0, 1.0)
    # the same with the third image wrong: every permutation scores 2/3 (a resample of [0, 0, 1] would score 1)
    wrong_last = np.eye(3)[[0, 1, 0]]
    assert bootstrap_ci(np.array([0, 1, 2]), wrong_last, BOOTSTRAP_METRICS["accuracy"], n_boot=200) == \
        pytest.approx((2 / 3, 2 / 3))
    # one class: accuracy still has its interval (every image wrong here); AUC, undefined, has none
    assert bootstrap_ci(np.zeros(5), np.ones(5), BOOTSTRAP_METRICS["accuracy"]) == (0.0, 0.0)
    assert all(math.isnan(v) for v in bootstrap_ci(np.zeros(5), np.ones(5), BOOTSTRAP_METRICS["roc_auc"]))
    # binary F1 at a threshold, macro F1 for (N, C) probabilities
    assert BOOTSTRAP_METRICS["f1"](np.array([0, 1, 1]), np.array([0.2, 0.6, 0.4]), 0.5) == pytest.approx(2 / 3)
    assert BOOTSTRAP_METRICS["f1"](Y3, P3, 0.5) == pytest.approx(np.mean([1 / 2, 0.8, 2 / 3]))


def test_mcnemar_by_hand():
    # 10 images of 3 classes: A alone right on 6, B alone right on 1, both right on 2, both wrong on 1.
    # Exact two-sided binomial test of 1 in 7 at p = 1/2: 2 * (1 + 7) / 2**7 = 0.125
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    a = np.array([0, 1, 2, 0, 1, 2, 1, 1, 2, 1])
    b = np.array([1, 2, 0, 1, 2, 0, 0, 1, 2, 2])
    result = mcnemar(y, a, b)
    assert result == {"only_a_correct": 6, "only_b_correct": 1, "p_value": pytest.approx(0.125)}
    assert mcnemar(y, a, a)["p_value"] == 1.0                 # no discordant image
    assert mcnemar(["x", "y"], ["x", "x"], ["y", "y"]) == {"only_a_correct": 1, "only_b_correct": 1, "p_value": 1.0}
