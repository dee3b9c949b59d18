"""Do two sets of images differ? One test for every pair the tool compares: a run's training vs test split (the
data checks) and its validation split vs an external set (`evaluate`).

- per-image statistics (mean intensity, contrast, stored width and height), compared by two-sample KS tests;
- a domain classifier: a logistic regression that tells the two sets apart from per-image features (backbone
  features where a model is at hand, else the image statistics), its cross-validated AUC (0.5 = indistinguishable)
  with a permutation p-value. A set is "distinguishable" at AUC >= DOMAIN_AUC_FLAG and p < DOMAIN_P_FLAG.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from sklearn import metrics as skm

N_PERMUTATIONS = 100      # label permutations for the domain classifier's p-value
DOMAIN_AUC_FLAG = 0.6     # a set is "distinguishable" at this cross-validated AUC and p < DOMAIN_P_FLAG
DOMAIN_P_FLAG = 0.01
STATISTICS_LIMIT = 600    # images a side whose statistics are read (sampled)
IMAGE_STATISTICS = {"mean": "mean intensity", "contrast": "contrast (intensity sd)", "width": "width (px)",
                    "height": "height (px)"}


def file_statistics(paths: list[Path], *, limit: int | None = STATISTICS_LIMIT, seed: int = 0) -> dict:
    """Per image (at most `limit`, sampled): mean intensity and contrast (sd) of the grayscale image in [0, 1],
    and the stored width and height; unreadable files are left out."""
    from PIL import Image

    from ..data.images import ImageError, decode_image, read_bytes

    def stats(path: Path):
        try:
            with Image.open(path) as im:
                width, height = im.size
        except (OSError, ValueError):   # e.g. DICOM: PIL cannot open it, decode_image can
            width = height = None
        try:
            arr, _ = decode_image(read_bytes(path), path, min_size=128)
        except (ImageError, OSError):
            return None
        if width is None:
            height, width = arr.shape[:2]
        gray = arr.mean(axis=2) if arr.ndim == 3 else arr
        gray = gray.astype(np.float32) / 255
        return float(gray.mean()), float(gray.std()), width, height

    paths = list(paths)
    if limit is not None and len(paths) > limit:
        paths = [paths[i] for i in sorted(np.random.default_rng(seed).choice(len(paths), limit, replace=False))]
    with ThreadPoolExecutor(8) as pool:
        values = [v for v in pool.map(stats, paths) if v is not None]
    arr = np.array(values, dtype=np.float64).reshape(-1, 4)
    return {key: arr[:, i] for i, key in enumerate(IMAGE_STATISTICS)}


def statistics_matrix(stats: dict) -> np.ndarray:
    """file_statistics as one row per image, sizes on a log scale (a classifier's input)."""
    x = np.column_stack([stats[k] for k in IMAGE_STATISTICS])
    x[:, 2:] = np.log(np.maximum(x[:, 2:], 1))
    return x


def statistics_shift(source: dict, target: dict) -> dict:
    """Two-sample KS tests of each image statistic between source and target."""
    from scipy.stats import ks_2samp

    out = {}
    for key in IMAGE_STATISTICS:
        if key in source and key in target and len(source[key]) and len(target[key]):
            stat, p = ks_2samp(source[key], target[key])
            out[key] = {"source_mean": float(np.mean(source[key])), "target_mean": float(np.mean(target[key])),
                        "ks": float(stat), "p_value": float(p)}
    return out


def domain_classifier(source: np.ndarray, target: np.ndarray, *, source_weight: np.ndarray | None = None,
                      n_permutations: int | None = None, max_per_side: int = 1000, seed: int = 0) -> dict:
    """How well a logistic regression on per-image features tells target from source images: cross-validated
    (5-fold, weighted) AUC, 0.5 = indistinguishable, with a permutation p-value (domain labels shuffled)."""
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    n_permutations = N_PERMUTATIONS if n_permutations is None else n_permutations
    rng = np.random.default_rng(seed)
    w_source = np.ones(len(source)) if source_weight is None else np.asarray(source_weight, dtype=float)
    keep_s = rng.permutation(len(source))[:max_per_side]
    keep_t = rng.permutation(len(target))[:max_per_side]
    x = np.concatenate([source[keep_s], target[keep_t]]).astype(np.float64)
    d = np.r_[np.zeros(len(keep_s), int), np.ones(len(keep_t), int)]
    w = np.r_[w_source[keep_s] * len(keep_s) / max(w_source[keep_s].sum(), 1e-12), np.ones(len(keep_t))]
    folds = min(5, int(np.bincount(d, minlength=2).min()))
    if folds < 2:
        return {"auc": None, "p_value": None, "n_source": len(keep_s), "n_target": len(keep_t),
                "note": "too few images on one side for a cross-validated domain classifier"}
    # PCA over both sides ignores which side an image is on, so it leaves the permutation test valid
    x = StandardScaler().fit_transform(PCA(min(32, x.shape[1], len(x) - 1), random_state=seed).fit_transform(x))

    def cv_auc(labels: np.ndarray) -> float:
        scores = np.zeros(len(labels))
        for train, test in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, labels):
            clf = LogisticRegression(C=0.1, max_iter=500).fit(x[train], labels[train], sample_weight=w[train])
            scores[test] = clf.decision_function(x[test])
        return float(skm.roc_auc_score(labels, scores, sample_weight=w))

    auc = cv_auc(d)
    null = np.array([cv_auc(rng.permutation(d)) for _ in range(n_permutations)])
    p = float((1 + np.sum(null >= auc)) / (1 + n_permutations))
    return {"auc": auc, "p_value": p, "null_auc_95": float(np.quantile(null, 0.95)) if n_permutations else None,
            "n_source": len(keep_s), "n_target": len(keep_t), "n_permutations": n_permutations,
            "distinguishable": bool(auc >= DOMAIN_AUC_FLAG and p < DOMAIN_P_FLAG)}
