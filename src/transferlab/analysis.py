"""Why the test numbers are what they are (Task E), and how the runs compare (Task D), measured on the runs.

Every function reads finished run directories (metrics.json, predictions.csv, history.csv, splits.csv) and
returns numbers; `*_findings` turn those numbers into sentences. Nothing here chooses anything on the test
set: the decision threshold is always the one each run chose on validation. Where a test-set optimum is
shown (the test's own Youden threshold) it is a diagnosis of the shift, never a reported result.

Binary problems only (the positive class's probability is in predictions.csv); other problems get the
data checks and the comparison of accuracies.
"""
from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

from .errors import TransferlabError
from .metrics import BOOTSTRAP_METRICS, bootstrap_ci, expected_calibration_error, mcnemar
from .rundir import RunDir, read_csv

SPLITS = ("train", "val", "test")
N_BOOT = 1000   # bootstrap resamples of the test images for the 95% CIs


# --- loading ------------------------------------------------------------------------------------------------

@dataclass
class Predictions:
    files: list[str]
    labels: list[str]
    y: np.ndarray        # 1 = positive class
    prob: np.ndarray     # probability of the positive class


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
    def negative(self) -> str:
        return next(c for c in self.classes if c != self.positive)

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
    column = f"prob_{metrics['positive_class']}"
    rows = read_csv(run.predictions)
    for split in SPLITS:
        chosen = [r for r in rows if r["split"] == split]
        if chosen and column in chosen[0]:
            result.predictions[split] = Predictions(
                [r["file"] for r in chosen], [r["label"] for r in chosen],
                np.array([r["label"] == metrics["positive_class"] for r in chosen], dtype=int),
                np.array([float(r[column]) for r in chosen]))
    return result


def load_study_runs(study_dir: str | Path, runs: list[dict]) -> list[Run]:
    return [load_run(Path(study_dir) / r["run"], model=r["model"], strategy=r["strategy"], seed=r["seed"])
            for r in runs]


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


# --- per run: Task E ----------------------------------------------------------------------------------------

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
    """Images and positive share per split (from config.json's counts)."""
    counts = run.config["data"]["counts"]
    pos = run.classes.index(run.positive)
    return {split: {"n": int(sum(c)), "counts": dict(zip(run.classes, c)),
                    "positive_share": c[pos] / sum(c) if sum(c) else None}
            for split, c in counts.items() if sum(c)}


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
        "best_epoch": best, "last_epoch": len(h), "max_epochs": run.config["settings"].get("epochs"),
        "monitor": run.metrics.get("monitor", "val_loss"),
        "train_loss_best": b["train_loss"], "val_loss_best": b["val_loss"], "gap_best": b["val_loss"] - b["train_loss"],
        "train_acc_best": b["train_acc"], "val_acc_best": b["val_acc"],
        "train_loss_last": last["train_loss"], "val_loss_last": last["val_loss"],
        "gap_last": last["val_loss"] - last["train_loss"],
        "val_loss_rise_after_best": (max(after) - b["val_loss"]) if after else 0.0,
        "val_loss_last_vs_min": last["val_loss"] - min_val,
        "val_loss_first": h[0]["val_loss"], "train_loss_first": h[0]["train_loss"],
    }


def top_errors(run: Run, k: int = 8) -> list[dict]:
    """The k test images the model got wrong (at the validation threshold) with the highest confidence."""
    p = run.predictions["test"]
    pred = (p.prob >= run.threshold).astype(int)
    wrong = np.flatnonzero(pred != p.y)
    confidence = np.where(pred == 1, p.prob, 1 - p.prob)
    order = wrong[np.argsort(-confidence[wrong], kind="stable")][:k]
    return [{"file": p.files[i], "label": p.labels[i], "predicted": run.positive if pred[i] else run.negative,
             "prob_positive": float(p.prob[i]), "confidence": float(confidence[i])} for i in order]


def analyze_run(run: Run) -> dict:
    if not run.binary or not {"val", "test"} <= set(run.predictions):
        return {}
    return {"gap": val_test_gap(run), "prevalence": prevalence_effect(run), "calibration": calibration(run),
            "threshold_curve": threshold_curve(run), "fitting": fitting(run), "errors": top_errors(run)}


# --- per run: findings ----------------------------------------------------------------------------------------

def run_findings(run: Run, a: dict) -> list[str]:
    """Sentences built from one run's measured numbers."""
    if not a:
        return []
    g, pv, cal, tc, fit = a["gap"], a["prevalence"], a["calibration"], a["threshold_curve"], a["fitting"]
    pos = run.positive
    out = [
        f"Test accuracy at the validation threshold ({run.threshold:.3f}) is {g['test_accuracy']:.3f} vs "
        f"{g['val_accuracy']:.3f} on validation (gap {g['accuracy_gap']:+.3f}); AUC {_f(g['test_roc_auc'])} vs "
        f"{_f(g['val_roc_auc'])}; the test set is {pv['test_positive_share']:.1%} {pos} vs "
        f"{pv['val_positive_share']:.1%} in validation.",
        f"With the validation sensitivity {pv['val_sensitivity']:.3f} and specificity {pv['val_specificity']:.3f}, "
        f"the test's prevalence alone predicts accuracy {pv['expected_test_accuracy']:.3f} "
        f"(= {pv['test_positive_share']:.3f} x {pv['val_sensitivity']:.3f} + {1 - pv['test_positive_share']:.3f} x "
        f"{pv['val_specificity']:.3f}); measured {pv['test_accuracy']:.3f}, so the class balance accounts for "
        f"{pv['from_prevalence']:+.3f} of the gap and changed sensitivity ({pv['test_sensitivity']:.3f} on test) and "
        f"specificity ({pv['test_specificity']:.3f}) for {pv['from_sens_spec']:+.3f}.",
        f"Test balanced accuracy is {_f(pv['test_balanced_accuracy'])} vs accuracy {pv['test_accuracy']:.3f}: "
        + ("accuracy is flattered by the majority class." if (pv["test_balanced_accuracy"] or 0) < pv["test_accuracy"] - 0.01
           else "accuracy is not flattered by the class balance." if abs((pv["test_balanced_accuracy"] or 0) - pv["test_accuracy"]) <= 0.01
           else "the minority class is recognised better than the majority class."),
        _calibration_sentence(cal, pos, run.config["settings"].get("balance", "none")),
        _threshold_sentence(run, tc),
    ]
    if fit:
        out.append(_fitting_sentence(fit))
    errors = a["errors"]
    if errors:
        fp = sum(e["predicted"] == pos for e in errors)
        out.append(f"The {len(errors)} most confident test errors (confidence {errors[-1]['confidence']:.2f} to "
                   f"{errors[0]['confidence']:.2f}): {fp} {run.negative} images called {pos} and "
                   f"{len(errors) - fp} {pos} images called {run.negative}.")
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


def _f(value, digits: int = 3) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not np.isfinite(value)) else f"{value:.{digits}f}"


# --- the data: leakage and shift (study level) -----------------------------------------------------------------

def splits_table(run: Run) -> list[dict]:
    """splits.csv rows: split, file (relative to the data root), label, patient."""
    return read_csv(RunDir(run.path).splits)


def same_splits(runs: list[Run]) -> dict:
    """Whether every run used the same images in every split (what makes paired tests valid)."""
    digests = {r.name: hashlib.sha256(RunDir(r.path).splits.read_bytes()).hexdigest() for r in runs}
    reference = next(iter(digests.values()))
    different = [name for name, d in digests.items() if d != reference]
    test_sets = {r.name: tuple(sorted(r.predictions["test"].files)) for r in runs if "test" in r.predictions}
    n_test = len(next(iter(test_sets.values()))) if test_sets else 0
    return {"runs": len(runs), "different": different, "same_test_images": len(set(test_sets.values())) <= 1,
            "n_test": n_test}


def leakage(root: str | Path, rows: list[dict]) -> dict:
    """Identical image bytes in two splits (sha1 of every file) and patients present in two splits."""
    root = Path(root)
    with ThreadPoolExecutor(8) as pool:
        digests = list(pool.map(lambda r: _sha1(root / r["file"]), rows))
    by_hash = defaultdict(list)
    for row, digest in zip(rows, digests):
        if digest:
            by_hash[digest].append(row)
    groups = [g for g in by_hash.values() if len(g) > 1]
    across = [g for g in groups if len({r["split"] for r in g}) > 1]
    patients = {s: {r["patient"] for r in rows if r["split"] == s} for s in SPLITS}
    overlap = {f"{a}/{b}": sorted(patients[a] & patients[b]) for a, b in itertools.combinations(SPLITS, 2)}
    return {"files_hashed": sum(d is not None for d in digests), "duplicate_groups": len(groups),
            "duplicate_groups_across_splits": len(across),
            "examples_across_splits": [[f"{r['file']} ({r['split']})" for r in g] for g in across[:5]],
            "patients": {s: len(p) for s, p in patients.items()},
            "patient_overlap": {k: len(v) for k, v in overlap.items()},
            "patient_overlap_examples": {k: v[:5] for k, v in overlap.items() if v}}


def _sha1(path: Path) -> str | None:
    try:
        return hashlib.sha1(path.read_bytes()).hexdigest()
    except OSError:
        return None


def image_statistics(root: str | Path, rows: list[dict], *, per_split: int = 600, seed: int = 0) -> dict:
    """Per image (at most `per_split` a split, sampled): mean intensity and contrast (sd) of the grayscale image
    in [0, 1], and the stored width and height."""
    from PIL import Image

    from .data.images import ImageError, decode_image, read_bytes

    def stats(path: Path):
        try:
            with Image.open(path) as im:
                width, height = im.size
            arr, _ = decode_image(read_bytes(path), path, min_size=128)
        except (ImageError, OSError):
            return None
        gray = arr.mean(axis=2) if arr.ndim == 3 else arr
        gray = gray.astype(np.float32) / 255
        return float(gray.mean()), float(gray.std()), width, height

    rng = np.random.default_rng(seed)
    out = {}
    for split in SPLITS:
        chosen = [r for r in rows if r["split"] == split]
        if len(chosen) > per_split:
            chosen = [chosen[i] for i in sorted(rng.choice(len(chosen), per_split, replace=False))]
        with ThreadPoolExecutor(8) as pool:
            values = [v for v in pool.map(lambda r: stats(Path(root) / r["file"]), chosen) if v is not None]
        if values:
            arr = np.array(values, dtype=np.float64)
            out[split] = {"mean": arr[:, 0], "contrast": arr[:, 1], "width": arr[:, 2], "height": arr[:, 3]}
    return out


SHIFT_FEATURES = {"mean": "mean intensity", "contrast": "contrast (intensity sd)", "width": "width (px)",
                  "height": "height (px)"}


def distribution_shift(stats: dict, seed: int = 0) -> dict:
    """Two-sample KS tests of each image statistic between splits, and how well a classifier on those
    statistics alone tells test images from training images (cross-validated AUC; 0.5 = indistinguishable)."""
    from scipy.stats import ks_2samp
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out = {"summary": {s: {k: {"mean": float(v[k].mean()), "sd": float(v[k].std()), "n": len(v[k])}
                           for k in SHIFT_FEATURES} for s, v in stats.items()}, "ks": {}}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        if a in stats and b in stats:
            out["ks"][f"{a}/{b}"] = {k: dict(zip(("statistic", "p_value"),
                                                 map(float, ks_2samp(stats[a][k], stats[b][k]))))
                                     for k in SHIFT_FEATURES}
    if "train" in stats and "test" in stats:
        x = np.concatenate([np.column_stack([stats[s][k] for k in SHIFT_FEATURES]) for s in ("train", "test")])
        x[:, 2:] = np.log(np.maximum(x[:, 2:], 1))
        y = np.r_[np.zeros(len(stats["train"]["mean"])), np.ones(len(stats["test"]["mean"]))]
        folds = min(5, int(min(np.bincount(y.astype(int)))))
        if folds >= 2:
            clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
            prob = cross_val_predict(clf, x, y, cv=StratifiedKFold(folds, shuffle=True, random_state=seed),
                                     method="predict_proba")[:, 1]
            out["domain_auc"] = float(skm.roc_auc_score(y, prob))
    return out


def data_findings(balance: dict, leak: dict, shift: dict, same: dict, positive: str) -> list[str]:
    out = []
    shares = ", ".join(f"{s} {b['positive_share']:.1%} of {b['n']}" for s, b in balance.items())
    out.append(f"{positive} share per split: {shares}.")
    if same["different"] or not same["same_test_images"]:
        out.append(f"Runs did NOT all use the same splits ({', '.join(same['different'][:3])} differ): paired "
                   f"comparisons between them are not valid.")
    else:
        out.append(f"All {same['runs']} runs used identical splits (the same {same['n_test']} test images), so paired "
                   f"McNemar tests between runs are valid.")
    if leak["duplicate_groups_across_splits"]:
        ex = "; ".join(" = ".join(g) for g in leak["examples_across_splits"][:2])
        out.append(f"LEAKAGE: {leak['duplicate_groups_across_splits']} groups of byte-identical files span two "
                   f"splits (of {leak['files_hashed']} files hashed), e.g. {ex}.")
    else:
        out.append(f"No byte-identical file appears in two splits ({leak['files_hashed']} files hashed with SHA-1; "
                   f"{leak['duplicate_groups']} duplicate groups within a split).")
    overlapping = {k: v for k, v in leak["patient_overlap"].items() if v}
    patients = ", ".join(f"{s} {n}" for s, n in leak["patients"].items() if n)
    if overlapping:
        out.append("LEAKAGE: patients in two splits: " + ", ".join(f"{k} {v}" for k, v in overlapping.items())
                   + f" (patients per split: {patients}).")
    else:
        out.append(f"No patient appears in two splits (patients per split: {patients}; patient ids from the file names).")
    for pair, tests in shift.get("ks", {}).items():
        if "test" not in pair:
            continue
        a, b = pair.split("/")
        s = shift["summary"]
        parts = [f"{SHIFT_FEATURES[k]} {s[a][k]['mean']:.3g} vs {s[b][k]['mean']:.3g} (KS D={t['statistic']:.3f}, "
                 f"p={t['p_value']:.2g})" for k, t in tests.items()]
        shifted = [SHIFT_FEATURES[k] for k, t in tests.items() if t["p_value"] < 0.01]
        out.append(f"{a.capitalize()} vs {b}: " + "; ".join(parts) + ". "
                   + (f"Distributions differ (p < 0.01) in {', '.join(shifted)}." if shifted
                      else "No statistic differs at p < 0.01."))
    if "domain_auc" in shift:
        auc = shift["domain_auc"]
        out.append(f"A logistic regression on these four image statistics tells test images from training images "
                   f"with cross-validated AUC {auc:.3f} (0.5 = indistinguishable): "
                   + ("a strong acquisition shift." if auc > 0.75 else "a moderate shift." if auc > 0.6
                      else "little shift in these statistics."))
    return out


# --- comparison: Task D ------------------------------------------------------------------------------------------

COMPARE_METRICS = ("accuracy", "balanced_accuracy", "recall", "specificity", "f1", "roc_auc", "pr_auc")
CI_METRICS = ("accuracy", "f1", "roc_auc")


def comparison(groups: dict[tuple[str, str], list[Run]], n_boot: int | None = None) -> list[dict]:
    """Per model x strategy: test metrics at the validation threshold (mean and sd over seeds), bootstrap 95%
    CIs over the test images of the first seed's run, training time and peak memory."""
    out = []
    for (model, strategy), runs in groups.items():
        row = {"model": model, "strategy": strategy, "seeds": [r.seed for r in runs]}
        for key in COMPARE_METRICS:
            values = [r.at("test").get(key) for r in runs]
            row[key] = _mean_sd([v for v in values if v is not None])
        row["val_roc_auc"] = _mean_sd([r.metrics["val"].get("roc_auc") for r in runs
                                       if r.metrics["val"].get("roc_auc") is not None])
        # training = preparing the inputs (the frozen backbone's pass for `features`) + fitting
        row["train_seconds"] = _mean_sd([r.metrics["seconds"]["prepare"] + r.metrics["seconds"]["fit"] for r in runs])
        row["total_seconds"] = _mean_sd([r.metrics["seconds"]["total"] for r in runs])
        row["peak_rss_mb"] = _mean_sd([r.metrics["peak_rss_mb"] for r in runs])
        cuda = [r.metrics.get("cuda_peak_mb") for r in runs if r.metrics.get("cuda_peak_mb") is not None]
        row["cuda_peak_mb"] = _mean_sd(cuda) if cuda else None
        row["trainable_params"] = runs[0].metrics["trainable_params"]
        first = runs[0]
        row["ci_seed"], row["n_boot"] = first.seed, n_boot or N_BOOT
        if first.binary and "test" in first.predictions:
            p = first.predictions["test"]
            row["ci"] = {k: bootstrap_ci(p.y, p.prob, BOOTSTRAP_METRICS[k], threshold=first.threshold,
                                         n_boot=n_boot or N_BOOT)
                         for k in CI_METRICS}
            row["first_seed"] = {k: first.at("test").get(k) for k in CI_METRICS}
        out.append(row)
    return out


def _mean_sd(values: list[float]) -> dict:
    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)) if values else None,
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None, "n": len(values)}


def mcnemar_tests(groups: dict[tuple[str, str], list[Run]]) -> list[dict]:
    """Exact McNemar tests on the same test images, predictions at each run's validation threshold; runs are
    paired by seed: finetune vs features for each model, and every pair of models for each strategy."""
    models = list(dict.fromkeys(m for m, _ in groups))
    strategies = list(dict.fromkeys(s for _, s in groups))
    pairs = [((m, "finetune"), (m, "features")) for m in models
             if (m, "finetune") in groups and (m, "features") in groups]
    pairs += [((a, s), (b, s)) for s in strategies for a, b in itertools.combinations(models, 2)
              if (a, s) in groups and (b, s) in groups]
    out = []
    for ga, gb in pairs:
        by_seed = {r.seed: r for r in groups[gb]}
        for ra in groups[ga]:
            rb = by_seed.get(ra.seed)
            if rb is None or not (ra.binary and rb.binary):
                continue
            pa, pb = ra.predictions["test"], rb.predictions["test"]
            index = {f: i for i, f in enumerate(pb.files)}
            if set(index) != set(pa.files):
                continue   # not the same test images: no paired test
            order = np.array([index[f] for f in pa.files])
            result = mcnemar(pa.y, (pa.prob >= ra.threshold).astype(int), (pb.prob[order] >= rb.threshold).astype(int))
            out.append({"a": f"{ga[0]} {ga[1]}", "b": f"{gb[0]} {gb[1]}", "seed": ra.seed, "n": len(pa.y),
                        "accuracy_a": ra.at("test")["accuracy"], "accuracy_b": rb.at("test")["accuracy"], **result})
    return out


def best_on_validation(rows: list[dict]) -> dict:
    """The model x strategy a user should pick: highest mean validation AUC (never a test metric)."""
    return max(rows, key=lambda r: -1.0 if r["val_roc_auc"]["mean"] is None else r["val_roc_auc"]["mean"])


def comparison_findings(table: list[dict], tests: list[dict]) -> list[str]:
    out = []
    ranked = [r for r in table if r["roc_auc"]["mean"] is not None]
    if ranked:
        best = best_on_validation(ranked)
        out.append(f"Chosen on validation (highest mean val AUC, {_ms(best['val_roc_auc'])}): {best['model']} "
                   f"{best['strategy']}; on test: AUC {_ms(best['roc_auc'])}, accuracy at the validation threshold "
                   f"{_ms(best['accuracy'])} over {len(best['seeds'])} seed(s). The test split never chooses.")
        fastest = min(ranked, key=lambda r: r["train_seconds"]["mean"])
        out.append(f"Fastest to train: {fastest['model']} {fastest['strategy']} ({fastest['train_seconds']['mean']:.1f} s "
                   f"per run, test accuracy {_ms(fastest['accuracy'])}).")
    if tests:
        significant = [t for t in tests if t["p_value"] < 0.05]
        out.append(f"{len(significant)} of {len(tests)} paired McNemar tests have p < 0.05 (uncorrected; with "
                   f"{len(tests)} tests, Bonferroni would ask p < {0.05 / len(tests):.4f}).")
        for t in significant[:6]:
            better = t["a"] if t["only_a_correct"] > t["only_b_correct"] else t["b"]
            out.append(f"Seed {t['seed']}: {t['a']} vs {t['b']}: {t['only_a_correct']} test images only the first got "
                       f"right, {t['only_b_correct']} only the second (p={t['p_value']:.3g}): {better} is better.")
    return out


def _ms(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("mean") is None:
        return "n/a"
    return f"{d['mean']:.{digits}f}" + (f" ± {d['sd']:.{digits}f}" if d.get("sd") is not None else "")


# --- Grad-CAM -------------------------------------------------------------------------------------------------

def last_conv(module):
    """Grad-CAM's target layer: the last nn.Conv2d of the backbone (a generic rule for every ConvNet)."""
    from torch import nn

    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def gradcam_overlays(model, pixels, *, mean, std, targets: list[int], batch_size: int = 16) -> list:
    """Grad-CAM of class targets[i] at the backbone's last Conv2d over each uint8 (C, H, W) image in `pixels`:
    (image, overlay) pairs, both uint8 RGB (H, W, 3) at the model's input size."""
    import torch
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from .data.transforms import normalize

    layer = last_conv(model.backbone)
    if layer is None:
        raise TransferlabError(f"{type(model.backbone).__name__} has no Conv2d layer for Grad-CAM")
    model.cpu().eval().requires_grad_(True)
    out = []
    with GradCAM(model=model, target_layers=[layer]) as cam:
        for start in range(0, len(pixels), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(pixels[start:start + batch_size]))
            maps = cam(input_tensor=normalize(batch, mean, std),
                       targets=[ClassifierOutputTarget(t) for t in targets[start:start + batch_size]])
            rgb = np.broadcast_to(batch.numpy().transpose(0, 2, 3, 1), (*batch.shape[:1], *batch.shape[2:], 3))
            out += [(np.ascontiguousarray(img), show_cam_on_image(img.astype(np.float32) / 255, m, use_rgb=True,
                                                                  image_weight=0.55))
                    for img, m in zip(rgb, maps)]
    return out


def error_overlays(run: Run, files: list[str]) -> list[tuple[np.ndarray, np.ndarray]]:
    """(image, Grad-CAM overlay for the positive class) of each of the run's files (paths relative to its data
    root), decoded and resized exactly as the model saw them."""
    from .data.images import load_images
    from .evaluation import load_model

    if not files:
        return []
    model, config = load_model(run.path)
    root = Path(config["data"]["root"])
    loaded = load_images([root / f for f in files], config["model"]["image_size"], progress=False)
    pos = config["data"]["classes"].index(run.positive)
    return gradcam_overlays(model, loaded.pixels, mean=config["model"]["mean"], std=config["model"]["std"],
                            targets=[pos] * len(files))


# --- everything -------------------------------------------------------------------------------------------------

def analyze_study(study_dir: str | Path, runs: list[dict], *, gradcam: bool = True) -> dict:
    """Everything sections D and E (and the data checks) need, measured on the study's runs."""
    loaded = load_study_runs(study_dir, runs)
    groups = group_runs(loaded)
    first = loaded[0]
    per_run = {r.name: analyze_run(r) for r in loaded}
    rows = splits_table(first)
    root = first.config["data"]["root"]
    stats = image_statistics(root, rows)
    balance = split_balance(first)
    leak = leakage(root, rows)
    shift = distribution_shift(stats)
    same = same_splits(loaded)
    table, tests = comparison(groups), mcnemar_tests(groups)
    gallery, gradcam_failures = {}, []
    if gradcam:
        for key, group in groups.items():
            run = group[0]
            errors = per_run[run.name].get("errors", [])
            try:
                gallery[key] = list(zip(errors, error_overlays(run, [e["file"] for e in errors])))
            except (RuntimeError, ValueError, TransferlabError) as exc:   # an architecture Grad-CAM cannot handle: say so, go on
                gradcam_failures.append(f"Grad-CAM failed for {run.name}: {str(exc).splitlines()[0][:200]}")
    return {
        "runs": loaded, "groups": groups, "per_run": per_run,
        "run_findings": {r.name: run_findings(r, per_run[r.name]) for r in loaded},
        "balance": balance, "leakage": leak, "image_stats": stats, "shift": shift, "same_splits": same,
        "data_findings": data_findings(balance, leak, shift, same, first.positive),
        "comparison": table, "mcnemar": tests, "comparison_findings": comparison_findings(table, tests),
        "gallery": gallery, "gradcam_failures": gradcam_failures,
    }
