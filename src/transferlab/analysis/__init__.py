"""Why the test numbers are what they are (Task E), and how the runs compare (Task D), measured on the runs.

Every function reads finished run directories (metrics.json, predictions.csv, history.csv, splits.csv) and
returns numbers; `*_findings` turn those numbers into sentences. Nothing here chooses anything on the test
set: the decision threshold is always the one each run chose on validation. Where a test-set optimum is
shown (the test's own Youden threshold) it is a diagnosis of the shift, never a reported result.

Binary problems only, except `shift` (external sets, any number of classes) (the positive class's probability is in predictions.csv); other problems get the
data checks and the comparison of accuracies.

One module per question: runs (loading) · gap (validation vs test, fitting) · calibration (probabilities and
threshold) · errors (top errors, Grad-CAM) · splits (balance, leakage, image statistics) · comparison (Task D)
· shift (any target set: label-free prevalence, covariate shift and accuracy estimates, adaptation).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import TransferlabError
from ..formatting import fmt as _f
from .calibration import _calibration_sentence, _threshold_sentence, calibration, threshold_curve, top_label_calibration
from .comparison import comparison_findings, comparison_table, ensemble_comparison, mcnemar_tests, tta_table
from .errors import confused_pairs, error_overlays, top_errors
from .external_text import adaptation_findings, external_errors, external_results
from .gap import _fitting_sentence, class_mix_effect, fitting, prevalence_effect, split_balance, val_test_gap
from .runs import Run, chosen_run, group_runs, load_run, load_study_runs
from .splits import data_findings, distribution_shift, image_statistics, leakage, same_splits, splits_table

def analyze_run(run: Run) -> dict:
    if not {"val", "test"} <= set(run.predictions):
        return {}
    if run.multiclass:
        return {"gap": val_test_gap(run), "class_mix": class_mix_effect(run), "calibration": top_label_calibration(run),
                "fitting": fitting(run), "errors": top_errors(run), "confused": confused_pairs(run)}
    if not run.binary:
        return {}
    return {"gap": val_test_gap(run), "prevalence": prevalence_effect(run), "calibration": calibration(run),
            "threshold_curve": threshold_curve(run), "fitting": fitting(run), "errors": top_errors(run)}


def multiclass_findings(run: Run, a: dict) -> list[str]:
    """Sentences for three or more classes: the gap, which classes the test set over- or under-represents and
    what that does to accuracy, per-class recall, calibration, fitting, the most confused pairs."""
    g, mix, cal = a["gap"], a["class_mix"], a["calibration"]
    out = [f"Test accuracy (decision: the most probable class) is {g['test_accuracy']:.3f} vs {g['val_accuracy']:.3f} "
           f"on validation (gap {g['accuracy_gap']:+.3f}); balanced accuracy {_f(g['test_balanced_accuracy'])} vs "
           f"{_f(g['val_balanced_accuracy'])}; macro one-vs-rest AUC {_f(g['test_roc_auc'])} vs {_f(g['val_roc_auc'])}."]
    diffs = sorted(zip(run.classes, mix["val_shares"], mix["test_shares"]), key=lambda t: -abs(t[2] - t[1]))
    c, v, t = diffs[0]
    out.append(f"The test set {'over' if t > v else 'under'}-represents {c} ({t:.1%} vs {v:.1%} in validation; "
               + "; ".join(f"{cc} {tt:.1%} vs {vv:.1%}" for cc, vv, tt in diffs[1:]) + "). With each class recognised "
               f"as on validation, the test's class mix alone predicts accuracy {mix['expected_test_accuracy']:.3f} "
               f"(sum of test share x validation recall); measured {mix['test_accuracy']:.3f}, so the class mix accounts "
               f"for {mix['from_class_mix']:+.3f} of the gap and changed per-class recall for {mix['from_recalls']:+.3f}.")
    out.append("Recall per class, validation -> test: " + ", ".join(
        f"{c} {_f(v)} -> {_f(t)}" for c, v, t in zip(run.classes, mix["val_recall"], mix["test_recall"])) + ".")
    out.append(f"Calibration of the predicted class's probability: ECE {cal['val']['ece']:.3f} on validation and "
               f"{cal['test']['ece']:.3f} on test; mean confidence on test {cal['test']['mean_predicted']:.3f} vs "
               f"accuracy {cal['test']['positive_share']:.3f} ("
               + ("over-confident" if cal["test"]["mean_predicted"] > cal["test"]["positive_share"] else "under-confident")
               + "). No threshold: three or more classes are decided by the most probable class.")
    if a["fitting"]:
        out.append(_fitting_sentence(a["fitting"]))
    if a["confused"]:
        out.append("Most confused on test: " + "; ".join(
            f"{x['true']} called {x['predicted']} {x['count']} times ({x['share_of_true']:.0%} of {x['true']})"
            for x in a["confused"][:3]) + ".")
    return out


# --- per run: findings ----------------------------------------------------------------------------------------

def run_findings(run: Run, a: dict) -> list[str]:
    """Sentences built from one run's measured numbers."""
    if not a:
        return []
    if run.multiclass:
        return multiclass_findings(run, a)
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


def analyze_study(study_dir: str | Path, runs: list[dict], *, gradcam: bool = True,
                  external: list[dict] = (), ensemble: str | None = None) -> dict:
    """Everything sections D and E (and the data checks) need, measured on the study's runs; `external`: the
    study's --external sets ({name, data}), whose eval-<name>.json each run holds; `ensemble`: the study's
    ensemble directory (--ensemble), compared in section D beside the run groups and shown on the external sets,
    but kept out of everything else."""
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
    table, tests = comparison_table(groups), mcnemar_tests(groups)
    gallery, gradcam_failures = {}, []
    if gradcam:
        for key, group in groups.items():
            run = group[0]
            errors = per_run[run.name].get("errors", [])
            try:
                gallery[key] = list(zip(errors, error_overlays(run, [e["file"] for e in errors],
                                                               [e["predicted"] for e in errors])))
            except (RuntimeError, ValueError, TransferlabError) as exc:   # an architecture Grad-CAM cannot handle: say so, go on
                gradcam_failures.append(f"Grad-CAM failed for {run.name}: {str(exc).splitlines()[0][:200]}")
    chosen = chosen_run(loaded)
    combined = load_run(Path(study_dir) / ensemble) if ensemble else None
    ext = external_section_data([*loaded, *([combined] if combined else [])], chosen, list(external), gradcam,
                                gradcam_failures)
    return {
        "chosen_run": chosen.name,
        "ensemble": ensemble_comparison(combined, chosen) if combined else None,
        "tta": tta_table({**groups, **({combined.group: [combined]} if combined else {})}),
        "runs": loaded, "groups": groups, "per_run": per_run, "external": ext,
        "run_findings": {r.name: run_findings(r, per_run[r.name]) for r in loaded},
        "balance": balance, "leakage": leak, "image_stats": stats, "shift": shift, "same_splits": same,
        "data_findings": data_findings(balance, leak, shift, same, first.positive),
        "comparison": table, "mcnemar": tests, "comparison_findings": comparison_findings(table, tests),
        "gallery": gallery, "gradcam_failures": gradcam_failures,
    }


def external_section_data(loaded: list[Run], best: Run, sets: list[dict], gradcam: bool, failures: list[str]) -> dict:
    """Per external set: every run's result, and for `best`, the run chosen on validation, its findings and its
    most confident errors with Grad-CAM."""
    results = external_results([r.path for r in loaded], sets)
    if not results:
        return {}
    out = {}
    for s in sets:
        if s["name"] not in results:
            continue
        per_run = results[s["name"]]
        chosen = per_run.get(best.name) or next(iter(per_run.values()))
        entry = {"data": s["data"], "results": per_run, "best_run": best.name, "next_step": chosen.get("next_step"),
                 "findings": chosen.get("findings", []) + adaptation_findings(chosen), "gallery": []}
        if gradcam and chosen.get("has_labels"):
            errors = external_errors(best.path, s["name"])
            try:
                entry["gallery"] = list(zip(errors, error_overlays(best, [e["file"] for e in errors],
                                                                   [e["predicted"] for e in errors],
                                                                   root=chosen["data"])))
            except (RuntimeError, ValueError, TransferlabError) as exc:
                failures.append(f"Grad-CAM failed for {best.name} on {s['name']}: {str(exc).splitlines()[0][:200]}")
        out[s["name"]] = entry
    return out
