"""Label-free adaptation to a target set, one entry per method (`evaluate --adapt`, `predict --adapt`, `study
--adapt`), always reported beside the unadapted result:

    prior      posteriors re-weighted to the class proportions EM estimates for the target (Saerens et al. 2002),
               the decision threshold re-chosen with the run's method on validation reweighted to that prior
    bn         BatchNorm statistics re-estimated on the target's unlabelled images, matched to validation's
               (models.batchnorm.adapt_batchnorm); weights and threshold unchanged
    bn+prior   both, in that order

Each method is a sequence of steps; a step takes the probabilities so far and returns new ones, a threshold and
what it did. Every step compares with the run's validation images (the `source` of `external.source_side`),
and none reads a target label.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..errors import TransferlabError
from ..metrics import choose_threshold
from . import shift as sh

ADAPT_HELP = {"prior": "posteriors re-weighted to the class proportions EM estimates for the target (Saerens et al. "
                       "2002), decision threshold re-chosen on validation for that prior",
              "bn": "BatchNorm statistics re-estimated on the target's unlabelled images (AdaBN); weights and "
                    "threshold unchanged",
              "bn+prior": "both: BatchNorm first, then the prior"}
METHODS = {"prior": ("prior",), "bn": ("bn",), "bn+prior": ("bn", "prior")}
ADAPTATIONS = tuple(METHODS)


def parse_adapt(value) -> list[str]:
    """'prior', 'bn', 'bn+prior', a comma list of those, or 'all' -> the adaptations to report."""
    if not value:
        return []
    items = [v.strip() for v in (value.split(",") if isinstance(value, str) else value) if v and v.strip()]
    items = list(ADAPTATIONS) if items == ["all"] else ["bn+prior" if v == "prior+bn" else v for v in items]
    bad = [v for v in items if v not in ADAPTATIONS]
    if bad:
        raise TransferlabError(f"--adapt must be a comma list of {', '.join(ADAPTATIONS)} (or all), not {bad[0]!r}")
    return list(dict.fromkeys(items))


def run_threshold_method(config: dict) -> str:
    """The method the run chose its decision threshold with (the one reader of it)."""
    return config["settings"].get("threshold_method", "youden")


def calibration_of(source: dict) -> tuple[float, np.ndarray]:
    """Validation's bias-corrected temperature scaling, fitted once per source (shift estimates and every
    adaptation read this one)."""
    if "calibration" not in source:
        source["calibration"] = sh.fit_calibration(source["probs"], source["y"])
    return source["calibration"]


def target_prior_of(probs: np.ndarray, source: dict) -> np.ndarray:
    """EM estimate of a target's class prior on its probabilities calibrated on validation: fitted once per
    distinct set of probabilities (the shift estimate, --adapt prior and --adapt bn share it)."""
    fitted = source.setdefault("target_priors", {})
    key = hashlib.sha1(np.ascontiguousarray(probs).tobytes()).hexdigest()
    if key not in fitted:
        fitted[key] = sh.em_prior(sh.calibrate(probs, calibration_of(source)), source_prior_of(source))
    return fitted[key]


def source_prior_of(source: dict) -> np.ndarray:
    return np.bincount(source["y"], minlength=source["probs"].shape[1]) / len(source["y"])


def adapted_probabilities(adapt: list[str], model, config: dict, pixels: np.ndarray, probs: np.ndarray,
                          source: dict | None, score) -> dict:
    """{method: (target probabilities, decision threshold, what was done)} for each adaptation (none without the
    run's validation images, which every adaptation compares with). `score(pixels, model=...)`: probabilities and
    features of images under the run's normalisation."""
    if source is None:
        return {}
    done: dict[tuple, tuple] = {(): (probs, source["threshold"], {})}   # steps taken -> their result, shared
    for method in adapt:
        for i in range(1, len(METHODS[method]) + 1):
            steps = METHODS[method][:i]
            if steps not in done:
                before, threshold, info = done[steps[:-1]]
                after, threshold, more = STEPS[steps[-1]](before, threshold, model=model, config=config,
                                                          pixels=pixels, source=source, score=score)
                done[steps] = (after, threshold, {**info, **more})
    return {method: done[METHODS[method]] for method in adapt}


def _batchnorm_step(probs: np.ndarray, threshold, *, model, config, pixels: np.ndarray, source: dict, score):
    """Target probabilities from a copy of the model whose BatchNorm layers match the target to validation
    (validation's classes mixed at the target's prior, estimated by EM from `probs`)."""
    from ..models.batchnorm import adapt_batchnorm, batchnorm_statistics

    if len(pixels) < 8:
        raise TransferlabError(f"--adapt bn needs at least 8 target images to estimate BatchNorm statistics "
                               f"(got {len(pixels)})")
    norm = dict(mean=config["model"]["mean"], std=config["model"]["std"], device=score.device,
                progress=score.progress)
    k = source["probs"].shape[1]
    if "batchnorm" not in source:
        source["batchnorm"] = batchnorm_statistics(model, source["pixels"], source["y"], k, **norm)
    # validation's classes mixed at the target's estimated prior: a change of prevalence alone changes nothing
    prior = target_prior_of(probs, source)
    adapted, layers = adapt_batchnorm(model, pixels, source["batchnorm"], prior=prior, **norm)
    return score(pixels, model=adapted)[0], threshold, {
        "batchnorm_layers": layers, "batchnorm_source_mixed_at": dict(zip(config["data"]["classes"], prior.tolist()))}


def _prior_step(probs: np.ndarray, threshold, *, config, source: dict, **_):
    """Posteriors calibrated on validation and re-weighted to the EM estimate of the target's prior; for a
    binary run, the threshold re-chosen with the run's own method on validation reweighted to that prior."""
    k = probs.shape[1]
    calibration = calibration_of(source)
    source_prior = source_prior_of(source)
    # EM's prior can reach 0 or 1 (a strong covariate shift): floored, so that the adapted posteriors keep their
    # order and validation's reweighting keeps both classes (an empty class made the threshold a rounding artefact)
    target_prior = np.clip(target_prior_of(probs, source), sh.PRIOR_FLOOR, None)
    target_prior /= target_prior.sum()
    adapted = sh.adapt_prior(sh.calibrate(probs, calibration), source_prior, target_prior)
    info = {"prior": dict(zip(config["data"]["classes"], target_prior.tolist()))}
    if threshold is not None and k == 2:
        pos = source["pos"]
        val_adapted = sh.adapt_prior(sh.calibrate(source["probs"], calibration), source_prior, target_prior)
        weight = (target_prior / np.clip(source_prior, 1e-12, None))[source["y"]]
        info["threshold_method"] = run_threshold_method(config)
        threshold = choose_threshold((source["y"] == pos).astype(int), val_adapted[:, pos], info["threshold_method"],
                                     sample_weight=weight)
    return adapted, threshold, info


STEPS = {"bn": _batchnorm_step, "prior": _prior_step}
