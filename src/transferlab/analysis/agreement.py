"""Accuracy on a new set from how a study's runs agree with each other there (no labels needed).

- GDE, generalisation-disagreement equality (Jiang et al., ICLR 2022): for runs of one recipe that differ only
  by their randomness, a run's error on a set is close to its disagreement with the other runs on that set.
- ALine-D, agreement-on-the-line (Baek et al., NeurIPS 2022): across models, probit(accuracy) on a shifted set is
  linear in probit(accuracy) on the source set, with the same slope and bias as the models' pairwise agreement;
  agreement needs no labels, so the line fitted on agreement predicts each model's accuracy. Needs >= 3 runs.

Both read finished run directories: predictions.csv (validation: labels and decisions) and
predictions-NAME.csv (the set `evaluate --data ... --name NAME` scored), and take no target label.
"""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
from scipy.stats import norm

from ..rundir import read_csv

CLIP = 1e-4


def _decisions(path: Path, split: str | None = None) -> dict[str, tuple[str, str]]:
    rows = read_csv(path)
    return {r["file"]: (r.get("label", ""), r["predicted"]) for r in rows if split is None or r.get("split") == split}


def agreement_estimates(run_dirs: list[str | Path], name: str) -> dict[str, dict]:
    """{run name: {"gde": ..., "aline_d": ... (>= 3 runs), "runs": n}} for the runs that scored set `name`,
    on the images every run scored; {} with fewer than two such runs."""
    runs = [Path(p) for p in run_dirs if (Path(p) / f"predictions-{name}.csv").exists()
            and (Path(p) / "predictions.csv").exists()]
    if len(runs) < 2:
        return {}
    val = [_decisions(p / "predictions.csv", "val") for p in runs]
    target = [_decisions(p / f"predictions-{name}.csv") for p in runs]
    val_files = sorted(set.intersection(*(set(v) for v in val)))
    target_files = sorted(set.intersection(*(set(t) for t in target)))
    if not val_files or not target_files:
        return {}
    val_pred = np.array([[v[f][1] for f in val_files] for v in val])
    val_true = np.array([val[0][f][0] for f in val_files])
    target_pred = np.array([[t[f][1] for f in target_files] for t in target])
    n = len(runs)
    val_acc = (val_pred == val_true).mean(1)
    pairs = list(itertools.combinations(range(n), 2))
    agree_val = np.array([(val_pred[i] == val_pred[j]).mean() for i, j in pairs])
    agree_target = np.array([(target_pred[i] == target_pred[j]).mean() for i, j in pairs])
    out = {}
    for i, run in enumerate(runs):
        others = [k for k, (a, b) in enumerate(pairs) if i in (a, b)]
        out[run.name] = {"gde": float(agree_target[others].mean()), "runs": n, "n_target": len(target_files)}
    if n >= 3:
        for run, value in zip(runs, aline_d(val_acc, agree_val, agree_target, pairs)):
            out[run.name]["aline_d"] = value
    return out


def _probit(p):
    return norm.ppf(np.clip(p, CLIP, 1 - CLIP))


def aline_d(val_acc: np.ndarray, agree_val: np.ndarray, agree_target: np.ndarray, pairs: list[tuple[int, int]]
            ) -> list[float]:
    """Baek et al.'s ALine-D: the slope a from agreement's line (probit target vs probit source, least squares),
    then per pair (probit acc_t[i] + probit acc_t[j]) / 2 = probit agree_t[ij] + a x ((probit acc_s[i] +
    probit acc_s[j]) / 2 - probit agree_s[ij]), solved for every run's target accuracy by least squares."""
    x, y = _probit(agree_val), _probit(agree_target)
    slope = float(np.polyfit(x, y, 1)[0]) if np.ptp(x) > 1e-9 else 1.0
    a = np.zeros((len(pairs), len(val_acc)))
    b = np.empty(len(pairs))
    source = _probit(val_acc)
    for row, (i, j) in enumerate(pairs):
        a[row, [i, j]] = 0.5
        b[row] = y[row] + slope * ((source[i] + source[j]) / 2 - x[row])
    solution = np.linalg.lstsq(a, b, rcond=None)[0]
    return [float(v) for v in norm.cdf(solution)]


def annotate(run_dirs: list[str | Path], name: str) -> int:
    """Add the agreement estimates to every run's eval-NAME.json (shift.accuracy), with the headline, findings
    and decision that follow from them; returns how many runs were annotated (0 with fewer than two runs)."""
    from ..rundir import RunDir
    from .decision import verdict
    from .shift import accuracy_headline, shift_findings

    estimates = agreement_estimates(run_dirs, name)
    done = 0
    for path in map(Path, run_dirs):
        run = RunDir(path)
        result = run.read_evaluation(name) if path.name in estimates else None
        if result is None:
            continue
        shift = result.get("shift")
        if not shift:
            continue
        shift["accuracy"].update({m: v for m, v in estimates[path.name].items() if m in ("gde", "aline_d")})
        shift["accuracy"]["agreement_runs"] = estimates[path.name]["runs"]
        shift["headline"] = accuracy_headline(shift)
        if result.get("truth"):
            acc = result["truth"]["accuracy"]
            result["truth"]["accuracy_error"].update({m: shift["accuracy"][m] - acc for m in ("gde", "aline_d")
                                                      if m in shift["accuracy"]})
        result["findings"] = shift_findings(shift, result.get("truth"), name=f"the {name} set",
                                            positive=result.get("positive_class"))
        result["next_step"] = verdict(result, run.read_metrics().get("val", {}))
        run.write_evaluation(result)
        done += 1
    return done
