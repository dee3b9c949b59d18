"""Evaluation with a label budget (active testing): which K images of a new set to label, and what the labels of
those few say about the whole set.

    design = LabelDesign.fit(probs, pred)              strata: predicted class x confidence bin
    chosen = design.choose(probs, pred, k=50, seed=0)  stratified sample, more labels where errors are likely
    labelled_estimates(design.strata(probs, pred), pred, chosen, y_chosen, ...)   whole-set metrics with CIs

The sampling design is stratified random sampling (Cochran 1977, ch. 5): the images are split into strata by
the class the model calls and by its confidence; each stratum gets labels in proportion to its size times the
spread of correctness expected there (Neyman allocation, with the error rate read off the confidence and floored,
because under shift the confidence is what cannot be trusted), at least two where it has two images. Within a
stratum the labelled images are a simple random sample, so the true-class mix of the unlabelled rest has a
Dirichlet posterior; its prior is one pseudo-label spread as the labels of all images given the same decision
(a flat prior would pull a stratum of six correct labels down to 93% accuracy and bias the whole set low).
Drawing the unlabelled images' classes from it (multinomial) gives whole-set confusion matrices, and every metric
of them (accuracy, balanced accuracy, sensitivity, specificity, per-class recall, class shares) gets an interval
for this design, including strata where every labelled image was right; benchmarks/shift.py measures how often
it holds the truth. AUC, which needs the scores' ranks, is the
design-weighted AUC of the labelled images with a Bayesian bootstrap within strata.

Labels given for any other subset are used the same way (post-stratified: a random sample within each stratum is
assumed, and said). Prediction-powered inference (ppi-python) needs a uniform random sample and labels spent
evenly where the model is sure; stratifying by confidence spends them where the errors are, which is what narrows
the interval (benchmarks/shift.py measures both against K uniform random labels).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import TransferlabError

PRIOR_MASS = 1.0     # pseudo-labels in each stratum's Dirichlet prior (as many as Jeffreys' 1/2 per class, 2 classes)
N_DRAWS = 4000       # posterior draws of the whole set's confusion matrix
N_AUC_DRAWS = 400    # Bayesian-bootstrap draws of the weighted AUC
BINS = 4             # confidence bins per predicted class
ERROR_FLOOR = 0.1    # the smallest error rate assumed in a stratum when allocating labels


@dataclass
class LabelDesign:
    """Strata of one set: for each predicted class, confidence cut points (bins between them)."""
    cuts: dict[int, list[float]]

    @classmethod
    def fit(cls, probs: np.ndarray, pred: np.ndarray, bins: int = BINS) -> "LabelDesign":
        conf = confidence(probs, pred)
        cuts = {}
        for c in np.unique(pred):
            values = conf[pred == c]
            edges = np.unique(np.quantile(values, np.linspace(0, 1, bins + 1)[1:-1])) if len(values) > bins else []
            cuts[int(c)] = [float(e) for e in edges]
        return cls(cuts)

    def strata(self, probs: np.ndarray, pred: np.ndarray) -> np.ndarray:
        """Stratum id of every image: predicted class x BINS + confidence bin."""
        conf = confidence(probs, pred)
        out = np.empty(len(pred), dtype=np.int64)
        for i, (c, x) in enumerate(zip(pred, conf)):
            out[i] = int(c) * (BINS + 1) + int(np.searchsorted(self.cuts.get(int(c), []), x, side="right"))
        return out

    def choose(self, probs: np.ndarray, pred: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
        """Indices of the k images to label (sorted), a stratified random sample with Neyman-like allocation."""
        if k < 1:
            raise TransferlabError(f"--label-budget must be at least 1, not {k}")
        strata = self.strata(probs, pred)
        ids, sizes = np.unique(strata, return_counts=True)
        if k >= len(pred):
            return np.arange(len(pred))
        conf = confidence(probs, pred)
        error = np.array([np.clip(1 - conf[strata == s].mean(), ERROR_FLOOR, 0.5) for s in ids])
        n = allocate(k, sizes, sizes * np.sqrt(error * (1 - error)))
        rng = np.random.default_rng(seed)
        chosen = [rng.choice(np.flatnonzero(strata == s), m, replace=False) for s, m in zip(ids, n) if m]
        return np.sort(np.concatenate(chosen))

    def to_dict(self) -> dict:
        return {"bins": BINS, "cuts": {str(c): v for c, v in self.cuts.items()}}

    @classmethod
    def from_dict(cls, d: dict) -> "LabelDesign":
        return cls({int(c): list(v) for c, v in d["cuts"].items()})


def confidence(probs: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return probs[np.arange(len(pred)), pred]


def allocate(k: int, sizes: np.ndarray, score: np.ndarray) -> np.ndarray:
    """k labels over strata of `sizes`: at least min(2, size) each while the budget lasts, the rest in
    proportion to `score` (largest remainder), never more than a stratum holds."""
    n = np.minimum(sizes, 2)
    if n.sum() > k:   # too few labels for two a stratum: the largest strata first
        n = np.zeros_like(sizes)
        for i in np.argsort(-score, kind="stable")[:k]:
            n[i] = 1
        return n
    while n.sum() < k:
        room = sizes - n
        weight = np.where(room > 0, score, 0.0)
        if weight.sum() == 0:
            weight = (room > 0).astype(float)
        share = weight / weight.sum() * (k - n.sum())
        add = np.minimum(np.floor(share).astype(int), room)
        if add.sum() == 0:
            add[np.argmax(np.where(room > 0, share, -1))] = 1
        n = n + add
    return n


# --- what the labels say about the whole set ----------------------------------------------------------------------

def labelled_estimates(strata: np.ndarray, decision: np.ndarray, labelled: np.ndarray, labels: np.ndarray, *,
                       classes: list[str], pos: int | None = None, scores: np.ndarray | None = None,
                       n_draws: int = N_DRAWS, seed: int = 0) -> dict:
    """Whole-set metrics of the rule that made `decision`, from the true `labels` of the images `labelled`
    (indices), with 95% intervals for the stratified design `strata`.

    Post-strata are (stratum, decision): within each, the labelled images are a random sample of its images.
    A post-stratum without a labelled image borrows its stratum's labels (and is counted in `borrowed`).
    `scores`: the positive class's probability (binary) or the (N, C) probabilities, for the AUC."""
    k = len(classes)
    labelled, labels = np.asarray(labelled, dtype=np.int64), np.asarray(labels, dtype=np.int64)
    if len(labelled) == 0:
        raise TransferlabError("no labelled image: fill in the label column of the to-label file")
    known = np.zeros(len(decision), dtype=bool)
    known[labelled] = True
    truth = np.full(len(decision), -1)
    truth[labelled] = labels
    rng = np.random.default_rng(seed)
    confusion = np.zeros((n_draws, k, k))
    borrowed = 0
    # the prior of each post-stratum: PRIOR_MASS pseudo-labels spread as the labels of every image given the same
    # decision (empirical Bayes; a flat prior would pull a stratum of 6 correct labels to 93% accuracy)
    by_decision = {d: np.bincount(truth[known & (decision == d)], minlength=k) + 1 / k for d in np.unique(decision)}
    for s in np.unique(strata):
        in_s = strata == s
        pooled = np.bincount(truth[in_s & known], minlength=k)
        for d in np.unique(decision[in_s]):
            cell = in_s & (decision == d)
            counts = np.bincount(truth[cell & known], minlength=k)
            unknown = int((cell & ~known).sum())
            confusion[:, :, d] += counts
            if unknown:
                evidence = counts if counts.sum() else pooled
                borrowed += int(not counts.sum())
                prior = by_decision[d] / by_decision[d].sum() * PRIOR_MASS
                theta = rng.dirichlet(evidence + prior, n_draws)
                confusion[:, :, d] += rng.multinomial(unknown, theta)
    out = {name: _summary(value(confusion)) for name, value in _metric_functions(k, pos).items()}
    for name, value in out.items():
        value["n_labels"] = int(len(labelled))
    out["class_share"] = {c: _summary(confusion[:, j, :].sum(1) / confusion[0].sum()) for j, c in enumerate(classes)}
    if scores is not None:
        auc = weighted_auc_interval(strata, labelled, labels, scores, k, pos, seed=seed)
        if auc:
            out["roc_auc"] = {**auc, "n_labels": int(len(labelled))}
    out["n_labels"] = int(len(labelled))
    out["n"] = int(len(decision))
    out["strata"] = int(len(np.unique(strata)))
    out["borrowed_strata"] = borrowed
    return out


def _summary(draws: np.ndarray) -> dict:
    draws = draws[np.isfinite(draws)]
    if not len(draws):
        return {"estimate": None, "ci": None}
    lo, mid, hi = np.quantile(draws, [0.025, 0.5, 0.975])
    return {"estimate": float(mid), "ci": [float(lo), float(hi)]}


def _metric_functions(k: int, pos: int | None) -> dict:
    def recall(c, j):
        support = c[:, j, :].sum(1)
        return np.where(support > 0, c[:, j, j] / np.maximum(support, 1e-12), np.nan)

    def balanced(c):
        recalls = np.stack([recall(c, j) for j in range(k)], 1)
        return np.nanmean(np.where(np.isfinite(recalls), recalls, np.nan), 1)

    out = {"accuracy": lambda c: np.trace(c, axis1=1, axis2=2) / c[0].sum(), "balanced_accuracy": balanced}
    if k == 2 and pos is not None:
        out["sensitivity"] = lambda c: recall(c, pos)
        out["specificity"] = lambda c: recall(c, 1 - pos)
    return out


def design_weights(strata: np.ndarray, labelled: np.ndarray) -> np.ndarray:
    """Each labelled image's weight, the images it stands for: N_h / n_h of its stratum."""
    sizes = dict(zip(*np.unique(strata, return_counts=True)))
    taken = dict(zip(*np.unique(strata[labelled], return_counts=True)))
    return np.array([sizes[s] / taken[s] for s in strata[labelled]], dtype=float)


def weighted_auc_interval(strata, labelled, labels, scores, k, pos, *, n_draws: int = N_AUC_DRAWS,
                          seed: int = 0) -> dict | None:
    """AUC of the labelled images weighted by the design (macro one-vs-rest for 3+ classes), with a Bayesian
    bootstrap within strata for its interval; None when the labels hold one class only."""
    y = np.asarray(labels)
    if len(np.unique(y)) < 2:
        return None
    s = np.asarray(scores)[labelled]
    group = strata[labelled]
    base = design_weights(strata, labelled)
    rng = np.random.default_rng(seed)
    draws = np.empty((n_draws, len(y)))
    for g in np.unique(group):
        members = group == g
        draws[:, members] = rng.dirichlet(np.ones(members.sum()), n_draws) * base[members].sum()
    if k == 2:
        columns = [(y == pos, s if s.ndim == 1 else s[:, pos])]
    else:
        columns = [(y == c, s[:, c]) for c in range(k) if 0 < (y == c).sum() < len(y)]
    point, sampled = [], []
    for positive, score in columns:
        # pair (i positive, j negative) counts 1 if ranked right, 1/2 if tied: the Mann-Whitney form of the AUC
        right = (score[positive][:, None] > score[~positive][None, :]) + 0.5 * (score[positive][:, None] == score[~positive][None, :])

        def auc(w):
            wp, wn = w[..., positive], w[..., ~positive]
            return np.einsum("...i,ij,...j->...", wp, right, wn) / (wp.sum(-1) * wn.sum(-1))
        point.append(auc(base))
        sampled.append(auc(draws))
    lo, hi = np.quantile(np.mean(sampled, 0), [0.025, 0.975])
    return {"estimate": float(np.mean(point)), "ci": [float(lo), float(hi)]}


# --- few-shot recalibration ---------------------------------------------------------------------------------------

def recalibrated_decisions(probs: np.ndarray, labelled: np.ndarray, labels: np.ndarray, weights: np.ndarray, *,
                           pos: int | None, threshold_method: str, folds: int = 5, seed: int = 0) -> dict:
    """The decision rule re-chosen on the labelled target images, and decisions that no label chose.

    Binary runs: the threshold re-chosen with the run's method on the labelled images (design-weighted);
    every run: the temperature and class biases refitted on them (for 3+ classes these move the argmax).
    Returns the final rule (chosen on every label) and its decisions for every image; the labelled images'
    decisions come from cross-fitting (each fold decided by the rule chosen on the other folds)."""
    from sklearn.model_selection import StratifiedKFold

    from ..evaluation import decide
    from ..metrics import choose_threshold
    from .shift import calibrate, fit_calibration

    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=probs.shape[1])
    present = counts[counts > 0]
    if len(present) < 2 or present.min() < 2:
        raise TransferlabError("--recalibrate needs labelled images of at least two classes, two of each "
                               f"(the labels hold {', '.join(str(c) for c in counts)})")

    def fit(idx, w):
        cal = fit_calibration(probs[idx], labels_of[idx], sample_weight=w)
        calibrated = calibrate(probs, cal)
        if pos is None or probs.shape[1] != 2:
            return cal, None, calibrated
        t = choose_threshold((labels_of[idx] == pos).astype(int), calibrated[idx, pos], threshold_method,
                             sample_weight=w)
        return cal, t, calibrated

    labels_of = np.full(len(probs), -1)
    labels_of[labelled] = labels
    cal, threshold, calibrated = fit(labelled, weights)
    decision = decide(calibrated, pos, threshold)
    n_folds = int(min(folds, present.min()))
    crossfit = decision.copy()
    for train, held in StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(labelled, labels):
        _, t, cal_probs = fit(labelled[train], weights[train])
        crossfit[labelled[held]] = decide(cal_probs[labelled[held]], pos, t)
    return {"threshold": threshold, "temperature": cal[0], "bias": cal[1].tolist(), "folds": n_folds,
            "probs": calibrated, "decision": decision, "crossfit_decision": crossfit}
