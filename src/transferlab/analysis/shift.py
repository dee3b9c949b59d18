"""Will the run work on *these* images? Shift between a run's source (its validation split) and any target set,
measured without the target's labels, and label-free adaptation to it.

Every estimator reads the source validation split (labels, probabilities, decisions, backbone features) and the
target's probabilities, decisions and features, never the target's labels: target labels only ever appear
beside an estimate as the truth it is compared with (`compare_with_truth`).

- label shift (the target's class proportions): BBSE (Lipton et al. 2018: invert the validation confusion
  matrix) and maximum-likelihood EM (Saerens et al. 2002) on probabilities calibrated on validation (bias-
  corrected temperature scaling, Alexandari et al. 2020); both assume pure label shift;
- covariate shift: `domain.domain_classifier` on backbone features (validation vs target; validation reweighted
  to the estimated target class mix, so that a pure change of prevalence is not mistaken for a change of the
  images), plus image statistics (KS tests, `domain.statistics_shift`);
- accuracy without labels: ATC (Garg et al., ICLR 2022), DoC (Guillory et al. 2021), average confidence, and
  the label-shift estimate sum_k prior_k x validation recall_k;
- adaptation: `adapt_prior` (posteriors re-weighted to the EM prior). BatchNorm re-estimation lives in
  `models.batchnorm.adapt_batchnorm` (it needs the model).
"""
from __future__ import annotations

import numpy as np
from scipy.optimize import minimize
from scipy.special import log_softmax, softmax

from .domain import domain_classifier

N_BOOT = 200              # bootstrap resamples for the CIs of the prevalence estimates
EPS = 1e-12
# What the accuracy estimators may mean on a flagged set (decided on benchmarks/shift.py; BENCHMARKS.md "Shift"):
# the range is the estimators' own spread widened by RANGE_WIDEN x (domain AUC - 0.5) / 0.5 on each side; at
# NOT_SHOWN_AUC and above the images are told from validation almost perfectly and no lower bound is given.
RANGE_WIDEN = 0.3
NOT_SHOWN_AUC = 0.95
PRIOR_FLOOR = 1e-3        # --adapt prior: no class is given a prior below this (EM can reach 0 or 1)
DEFAULT_BUDGET = 50       # labels suggested to settle a flagged set (at least 20 a class): benchmarks/shift.py

LABEL_SHIFT_ASSUMPTION = ("pure label shift: the images of each class look the same in the target as in "
                          "validation, only the class proportions differ")
ACCURACY_ASSUMPTION = ("the model's confidence relates to its correctness on the target as it does on "
                       "validation (true under label shift; breaks under a strong change of the images)")


# --- calibration on validation --------------------------------------------------------------------------------

def fit_calibration(probs: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None = None) -> tuple[float, np.ndarray]:
    """Bias-corrected temperature scaling fitted on validation: (T, b) minimising the NLL of
    softmax(log p / T + b). Afterwards the probabilities match the validation class proportions, which EM needs
    (a class-weighted loss trains the model towards equal priors instead). `sample_weight`: e.g. a label
    budget's design weights, when fitted on labelled target images."""
    logp = np.log(np.clip(probs, EPS, 1))
    onehot = np.eye(probs.shape[1])[y]
    w = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=float)
    w = (w / w.sum())[:, None]

    def nll_and_grad(params):
        t = np.exp(params[0])
        z = logp / t + params[1:]
        logq = log_softmax(z, axis=1)
        dz = (np.exp(logq) - onehot) * w
        return -(logq * onehot * w).sum(), np.r_[(dz * -logp / t).sum(), dz.sum(0)]

    result = minimize(nll_and_grad, np.zeros(probs.shape[1] + 1), jac=True, method="L-BFGS-B")
    return float(np.exp(result.x[0])), result.x[1:]


def calibrate(probs: np.ndarray, calibration: tuple[float, np.ndarray]) -> np.ndarray:
    t, b = calibration
    return softmax(np.log(np.clip(probs, EPS, 1)) / t + b, axis=1)


# --- label shift: the target's class proportions ----------------------------------------------------------------

def bbse(val_y: np.ndarray, val_pred: np.ndarray, target_pred: np.ndarray, k: int) -> np.ndarray:
    """Black-box shift estimation: P_t(pred) = C @ prior_t with C[i, j] = P(pred = i | y = j) on validation;
    solved by least squares, clipped to >= 0 and renormalised."""
    c = np.zeros((k, k))
    for j in range(k):
        rows = val_y == j
        if rows.any():
            c[:, j] = np.bincount(val_pred[rows], minlength=k)[:k] / rows.sum()
    q = np.bincount(target_pred, minlength=k)[:k] / max(len(target_pred), 1)
    prior = np.clip(np.linalg.lstsq(c, q, rcond=None)[0], 0, None)
    return prior / prior.sum() if prior.sum() > 0 else np.full(k, 1 / k)


def em_prior(target_probs: np.ndarray, source_prior: np.ndarray, *, max_iter: int = 1000,
             tol: float = 1e-8) -> np.ndarray:
    """Saerens et al. (2002): the target prior that maximises the likelihood of the target's (calibrated)
    posteriors, by EM from the source prior."""
    prior = source_prior.copy()
    for _ in range(max_iter):
        adapted = adapt_prior(target_probs, source_prior, prior)
        new = adapted.mean(0)
        if np.abs(new - prior).max() < tol:
            return new
        prior = new
    return prior


def adapt_prior(probs: np.ndarray, source_prior: np.ndarray, target_prior: np.ndarray) -> np.ndarray:
    """Posteriors for the target prior: p_t(y|x) proportional to p_s(y|x) x prior_t(y) / prior_s(y)."""
    w = probs * (np.asarray(target_prior) / np.clip(source_prior, EPS, None))
    return w / np.clip(w.sum(1, keepdims=True), EPS, None)


# --- accuracy without labels -------------------------------------------------------------------------------------

def confidence(probs: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """The probability of the class each image is called."""
    return probs[np.arange(len(pred)), pred]


def atc(val_conf: np.ndarray, val_correct: np.ndarray, target_conf: np.ndarray) -> float:
    """Average Thresholded Confidence: the threshold t leaves as many validation images below it as validation
    gets wrong; the target's estimated accuracy is its share of images with confidence >= t."""
    t = np.quantile(val_conf, 1 - val_correct.mean())
    return float((target_conf >= t).mean() if val_correct.mean() < 1 else 1.0)


def doc(val_conf: np.ndarray, val_correct: np.ndarray, target_conf: np.ndarray) -> float:
    """Difference of Confidences: validation accuracy minus the drop of average confidence."""
    return float(np.clip(val_correct.mean() - (val_conf.mean() - target_conf.mean()), 0, 1))


def label_shift_accuracy(val_y: np.ndarray, val_pred: np.ndarray, prior: np.ndarray) -> float:
    """Accuracy expected at the estimated target prior if each class is recognised as on validation."""
    recall = np.array([(val_pred[val_y == j] == j).mean() if (val_y == j).any() else 0.0 for j in range(len(prior))])
    return float(prior @ recall)


# --- covariate shift -------------------------------------------------------------------------------------------------

# --- everything for one target ------------------------------------------------------------------------------------

def estimate_shift(*, classes: list[str], val_y: np.ndarray, val_probs: np.ndarray, val_pred: np.ndarray,
                   target_probs: np.ndarray, target_pred: np.ndarray, val_features: np.ndarray | None = None,
                   target_features: np.ndarray | None = None, n_boot: int | None = None,
                   n_permutations: int | None = None, seed: int = 0,
                   calibration: tuple[float, np.ndarray] | None = None, target_prior: np.ndarray | None = None) -> dict:
    """Every label-free estimate for one target set, with bootstrap CIs and the assumption each one makes.
    Takes no target labels. `calibration` (fit_calibration on all of validation) and `target_prior` (EM on the
    target's probabilities under that calibration) are fitted here unless the caller already has them."""
    n_boot = N_BOOT if n_boot is None else n_boot
    k = len(classes)
    val_y, val_pred, target_pred = (np.asarray(a, dtype=int) for a in (val_y, val_pred, target_pred))
    source_prior = np.bincount(val_y, minlength=k) / len(val_y)

    def estimates(vi: np.ndarray, ti: np.ndarray) -> dict:
        cal = fit_calibration(val_probs[vi], val_y[vi])
        return {"bbse": bbse(val_y[vi], val_pred[vi], target_pred[ti], k),
                "em": em_prior(calibrate(target_probs[ti], cal), np.bincount(val_y[vi], minlength=k) / len(vi))}

    calibration = fit_calibration(val_probs, val_y) if calibration is None else calibration
    if target_prior is None:
        target_prior = em_prior(calibrate(target_probs, calibration), source_prior)
    point = {"bbse": bbse(val_y, val_pred, target_pred, k), "em": target_prior}
    every_val, every_target = np.arange(len(val_y)), np.arange(len(target_pred))
    rng = np.random.default_rng(seed)
    boots = [estimates(rng.choice(every_val, len(every_val)), rng.choice(every_target, len(every_target)))
             for _ in range(n_boot)]
    prevalence = {"source": dict(zip(classes, source_prior.tolist())), "assumption": LABEL_SHIFT_ASSUMPTION}
    for method in ("em", "bbse"):
        lo, hi = np.quantile([b[method] for b in boots], [0.025, 0.975], axis=0) if boots else (point[method],) * 2
        prevalence[method] = {c: {"estimate": float(point[method][i]), "ci": [float(lo[i]), float(hi[i])]}
                              for i, c in enumerate(classes)}

    val_conf = confidence(calibrate(val_probs, calibration), val_pred)
    target_conf = confidence(calibrate(target_probs, calibration), target_pred)
    val_correct = (val_pred == val_y).astype(float)
    accuracy = {
        "val_accuracy": float(val_correct.mean()),
        "atc": atc(val_conf, val_correct, target_conf),
        "doc": doc(val_conf, val_correct, target_conf),
        "average_confidence": float(target_conf.mean()),
        "label_shift": label_shift_accuracy(val_y, val_pred, point["em"]),
        "assumption": ACCURACY_ASSUMPTION,
    }
    estimates_of_accuracy = [accuracy[m] for m in ACCURACY_ESTIMATORS]
    accuracy["spread"] = float(max(estimates_of_accuracy) - min(estimates_of_accuracy))

    domain = None
    if val_features is not None and target_features is not None and len(target_features):
        # validation reweighted to the estimated target class mix: a pure prevalence change is then invisible
        weight = (point["em"] / np.clip(source_prior, EPS, None))[val_y]
        domain = domain_classifier(val_features, target_features, source_weight=weight,
                                   n_permutations=n_permutations, seed=seed)
    disagreement = float(np.abs(point["em"] - point["bbse"]).max())
    distinguishable = bool(domain and domain.get("distinguishable"))
    result = {
        "classes": classes, "n_val": int(len(val_y)), "n_target": int(len(target_pred)),
        "prevalence": prevalence, "accuracy": accuracy, "domain": domain,
        "calibration": {"temperature": calibration[0], "bias": calibration[1].tolist()},
        "reliability": {
            "label_shift_assumption_met": None if domain is None or domain.get("auc") is None else not distinguishable,
            "prevalence_disagreement": disagreement, "accuracy_spread": accuracy["spread"],
            "reliable": None if domain is None or domain.get("auc") is None else not distinguishable,
        },
    }
    result["headline"] = accuracy_headline(result)
    return result


def accuracy_headline(shift: dict, label_budget: int | None = None) -> dict:
    """What to say about the target's accuracy without labels: a point estimate only where nothing says its
    assumption fails; otherwise a range and the number of labels that would settle it.

    kind "estimate": the domain classifier cannot tell the images from validation (beyond the class mix): ATC.
    kind "range": it can; the estimators' spread widened by how far the images are from validation.
    kind "not_shown": it tells them apart almost perfectly (AUC >= NOT_SHOWN_AUC): only an upper end; the model
    has not been shown to work on these images. Also where no domain classifier could run (no validation)."""
    acc, domain = shift["accuracy"], shift.get("domain") or {}
    methods = [m for m in (*ACCURACY_ESTIMATORS, *AGREEMENT_ESTIMATORS) if acc.get(m) is not None]
    values = [acc[m] for m in methods]
    budget = label_budget or max(DEFAULT_BUDGET, 20 * len(shift["classes"]))
    auc = domain.get("auc")
    if auc is not None and not domain.get("distinguishable"):
        return {"kind": "estimate", "accuracy": acc["atc"], "method": "atc", "domain_auc": auc}
    if auc is None:
        return {"kind": "not_shown", "low": None, "high": max(values), "label_budget": budget, "domain_auc": None,
                "why": "no validation images to compare with, so nothing checks the estimators' assumption"}
    widen = RANGE_WIDEN * max(auc - 0.5, 0) / 0.5
    high = float(min(1.0, max(values) + widen))
    if auc >= NOT_SHOWN_AUC:
        return {"kind": "not_shown", "low": None, "high": high, "label_budget": budget, "domain_auc": auc,
                "why": f"a domain classifier tells these images from validation almost perfectly (AUC {auc:.2f})"}
    return {"kind": "range", "low": float(max(0.0, min(values) - widen)), "high": high, "label_budget": budget,
            "domain_auc": auc, "methods": methods,
            "why": f"the images differ from validation (domain AUC {auc:.2f}), which the estimators assume they do not"}


def headline_text(h: dict, name: str = "these images") -> str:
    """The headline as one sentence (the CLI summary, findings, the report)."""
    if h["kind"] == "estimate":
        return (f"Expected accuracy on {name}: {h['accuracy']:.3f} (ATC; the images look like validation's, beyond "
                f"their class mix).")
    settle = f"label {h['label_budget']} images (--label-budget {h['label_budget']}) to measure it"
    if h["kind"] == "range":
        return (f"Accuracy on {name} cannot be estimated without labels: {h['why']}; it could be anywhere from "
                f"{h['low']:.2f} to {h['high']:.2f}. To know, {settle}.")
    return (f"The model has not been shown to work on {name}: {h['why']}. Accuracy could be anything up to "
            f"{h['high']:.2f}, with no lower bound; check it with labels before use: {settle}.")


ACCURACY_ESTIMATORS = ("atc", "doc", "average_confidence", "label_shift")
AGREEMENT_ESTIMATORS = ("gde", "aline_d")   # added from a study's other runs (analysis.agreement)
ESTIMATOR_NAMES = {"atc": "ATC", "doc": "DoC", "average_confidence": "average confidence",
                   "gde": "disagreement between runs (GDE)", "aline_d": "agreement-on-the-line (ALine-D)",
                   "label_shift": "label-shift (EM prior x validation recall)", "em": "EM", "bbse": "BBSE"}


def compare_with_truth(shift: dict, target_y: np.ndarray | None, target_pred: np.ndarray) -> dict:
    """Each estimate beside the truth, where the target has labels (never used by the estimates themselves)."""
    if target_y is None or not len(target_y):
        return {}
    classes = shift["classes"]
    true_prior = np.bincount(np.asarray(target_y, int), minlength=len(classes)) / len(target_y)
    true_acc = float((np.asarray(target_pred) == np.asarray(target_y)).mean())
    return {
        "prevalence": {c: float(true_prior[i]) for i, c in enumerate(classes)},
        "prevalence_error": {m: float(max(abs(shift["prevalence"][m][c]["estimate"] - true_prior[i])
                                          for i, c in enumerate(classes))) for m in ("em", "bbse")},
        "accuracy": true_acc,
        "accuracy_error": {m: float(shift["accuracy"][m] - true_acc) for m in (*ACCURACY_ESTIMATORS, *AGREEMENT_ESTIMATORS)
                           if shift["accuracy"].get(m) is not None},
    }


def share_classes(classes: list[str], positive: str | None) -> list[str]:
    """The classes whose shares are named, in the report's tables, the findings and the command line: with two
    classes the positive class's alone (the other's is 1 minus it), with more every class."""
    return [positive] if positive and len(classes) == 2 else list(classes)


def shift_findings(shift: dict, truth: dict | None = None, *, name: str = "the target",
                   positive: str | None = None) -> list[str]:
    """Plain sentences, one per finding, from the measured numbers of `estimate_shift`. The accuracy headline
    comes first; on a set the domain classifier flags, no estimate is stated as the answer. The class mix is said
    as the share of the positive class (two classes) or of the class whose share moved most."""
    classes, prev, acc = shift["classes"], shift["prevalence"], shift["accuracy"]
    h = shift.get("headline") or accuracy_headline(shift)
    truth = truth or {}
    out = [headline_text(h, name)]
    if truth:
        out[-1] += f" Measured with the labels: {truth['accuracy']:.3f}."
    moved = max(share_classes(classes, positive), key=lambda c: abs(prev["em"][c]["estimate"] - prev["source"][c]))
    e = prev["em"][moved]
    change = e["estimate"] - prev["source"][moved]
    d = shift.get("domain") or {}
    if h["kind"] == "estimate":
        text = (f"{name} is estimated to hold {e['estimate']:.0%} {moved} images (EM, 95% CI {e['ci'][0]:.0%}-"
                f"{e['ci'][1]:.0%}; BBSE {prev['bbse'][moved]['estimate']:.0%}), {abs(change) * 100:.0f} points "
                f"{'more' if change >= 0 else 'fewer'} than validation ({prev['source'][moved]:.0%})")
    else:
        text = (f"The class mix of {name} cannot be estimated without labels either: EM ({e['estimate']:.0%} {moved}) "
                f"and BBSE ({prev['bbse'][moved]['estimate']:.0%}) assume the images of each class look as in "
                f"validation (validation: {prev['source'][moved]:.0%})")
    if truth:
        text += f"; the labels say {truth['prevalence'][moved]:.0%}"
    out.append(text[0].upper() + text[1:] + ".")
    if d.get("auc") is not None:
        if d["distinguishable"]:
            out.append(f"The images differ from validation beyond their class mix: a domain classifier on the "
                       f"backbone's features tells them apart with AUC {d['auc']:.2f} (p={d['p_value']:.2g}; 0.5 = "
                       f"indistinguishable).")
        else:
            out.append(f"Once validation is reweighted to the estimated class mix, a domain classifier on the backbone's "
                       f"features cannot tell the images apart (AUC {d['auc']:.2f}, p={d['p_value']:.2g}): consistent "
                       f"with a pure label shift, the assumption of the prevalence and accuracy estimates.")
    else:
        out.append("The domain classifier could not run (no validation images to compare with), so nothing checks "
                   "the assumption of these estimates.")
    methods = [m for m in (*ACCURACY_ESTIMATORS, *AGREEMENT_ESTIMATORS) if acc.get(m) is not None]
    parts = ", ".join(f"{ESTIMATOR_NAMES[m]} {acc[m]:.3f}" for m in methods)
    lead = "Each estimator, for the record" if h["kind"] != "estimate" else "Every label-free estimate of accuracy"
    out.append(f"{lead}: {parts} (validation {acc['val_accuracy']:.3f}).")
    return out
