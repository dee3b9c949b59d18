"""Section E: why the test numbers are what they are, run by run, for the run chosen on validation in detail."""
from __future__ import annotations

from ...analysis import Run
from ...formatting import fmt
from .. import plots
from ..blocks import Section, Table, error_gallery
from .external import external_subsection


def test_analysis_section(a: dict) -> Section:
    s = Section("section-E", "E — Why the test numbers are what they are")
    analysed = [r for r in a["runs"] if a["per_run"].get(r.name)]
    if not analysed:
        s.p("The test-set analysis needs a two-class problem with a test split.")
        return s
    if analysed[0].multiclass:
        return _multiclass_analysis(s, a, analysed)
    rows = []
    for r in analysed:
        x = a["per_run"][r.name]
        g, pv, cal, fit = x["gap"], x["prevalence"], x["calibration"], x["fitting"]
        rows.append([r.name, fmt(r.threshold), fmt(g["val_accuracy"]), fmt(g["test_accuracy"]), fmt(g["accuracy_gap"], "+.3f"),
                     fmt(pv["expected_test_accuracy"]), fmt(g["val_roc_auc"]), fmt(g["test_roc_auc"]),
                     f"{fmt(pv['val_sensitivity'])} / {fmt(pv['test_sensitivity'])}",
                     f"{fmt(pv['val_specificity'])} / {fmt(pv['test_specificity'])}",
                     fmt(cal["val"]["ece"]), fmt(cal["test"]["ece"]),
                     f"{fmt(fit.get('best_epoch'), '')} / {fmt(fit.get('last_epoch'), '')}",
                     f"{fmt(fit.get('gap_best'), '+.3f')} / {fmt(fit.get('gap_last'), '+.3f')}"])
    s.table(Table(["run", "threshold (val)", "val acc.", "test acc.", "gap", "expected test acc.*", "val AUC", "test AUC",
                   "sensitivity val / test", "specificity val / test", "ECE val", "ECE test", "best / last epoch",
                   "val−train loss: best / last"], rows,
                  "Every run. *Accuracy the validation sensitivity and specificity would give at the test set's "
                  "class balance: prev × sens + (1 − prev) × spec."))
    first_runs, chosen = _key_findings(s, a)
    s.h3("Calibration and threshold")
    s.images([(plots.reliability([(f"{r.model} {r.strategy} s{r.seed}", a["per_run"][r.name]["calibration"])
                               for r in first_runs]),
            "Reliability diagrams (10 equal-width bins) on validation and test; the diagonal is perfect calibration."),
             (plots.threshold_curves([(f"{r.model} {r.strategy} s{r.seed}", a["per_run"][r.name]["threshold_curve"])
                                    for r in first_runs]),
            "Sensitivity and specificity as the threshold moves, validation dashed and test solid; black line: the "
            "threshold chosen on validation (used for every reported number); dotted: the test set's own Youden "
            "threshold, for diagnosis only.")])
    return _errors_and_external(s, a)


GRADCAM_TEXT = ("Grad-CAM (pytorch-grad-cam) for the class the model predicted, on the last convolution of the "
                "backbone; red = regions that raised that class's score. Each pair: the image as the model sees it, "
                "then the overlay. A 'flat' map means no region at that layer raised the predicted class's score: the "
                "overlay is blank and explains nothing.")


def _multiclass_analysis(s: Section, a: dict, analysed: list[Run]) -> Section:
    """Section E for three or more classes: the same questions, per class; no threshold to move."""
    classes = analysed[0].classes
    rows = []
    for r in analysed:
        x = a["per_run"][r.name]
        g, mix, cal, fit = x["gap"], x["class_mix"], x["calibration"], x["fitting"]
        rows.append([r.name, fmt(g["val_accuracy"]), fmt(g["test_accuracy"]), fmt(g["accuracy_gap"], "+.3f"),
                     fmt(mix["expected_test_accuracy"]), fmt(g["val_balanced_accuracy"]), fmt(g["test_balanced_accuracy"]),
                     fmt(g["val_roc_auc"]), fmt(g["test_roc_auc"]),
                     *[f"{fmt(v)} / {fmt(t)}" for v, t in zip(mix["val_recall"], mix["test_recall"])],
                     fmt(cal["val"]["ece"]), fmt(cal["test"]["ece"]),
                     f"{fmt(fit.get('best_epoch'), '')} / {fmt(fit.get('last_epoch'), '')}"])
    s.table(Table(["run", "val acc.", "test acc.", "gap", "expected test acc.*", "val bal. acc.", "test bal. acc.",
                   "val macro AUC", "test macro AUC", *[f"{c} recall val / test" for c in classes], "ECE val",
                   "ECE test", "best / last epoch"], rows,
                  "Every run; decisions by the most probable class (no threshold to choose or move). *Accuracy the "
                  "validation recall of each class would give at the test set's class mix: Σ share_test × recall_val. "
                  "ECE: of the predicted class's probability against how often it is right."))
    first_runs, chosen = _key_findings(s, a)
    confused = a["per_run"][chosen.name]["confused"]
    if confused:
        s.table(Table(["true", "predicted", "test images", "share of the true class"],
                      [[x["true"], x["predicted"], str(x["count"]), f"{x['share_of_true']:.1%}"] for x in confused],
                      f"Confused pairs on test, {chosen.name}."))
    s.h3("Calibration")
    s.image(plots.reliability([(f"{r.model} {r.strategy} s{r.seed}", a["per_run"][r.name]["calibration"])
                               for r in first_runs]),
            "Reliability of the predicted class's probability (10 equal-width bins) on validation and test; the "
            "diagonal is perfect calibration. The threshold plot of two-class studies does not apply: no threshold.")
    return _errors_and_external(s, a)


def _key_findings(s: Section, a: dict) -> tuple[list[Run], Run]:
    """The findings of the run chosen on validation (analysis.runs.chosen_run: the highest validation AUC, then the
    lowest validation loss), then every group's first run folded away."""
    first_runs = [g[0] for g in a["groups"].values() if a["per_run"].get(g[0].name)]
    chosen = next(r for r in a["runs"] if r.name == a["chosen_run"])
    s.h3(f"Key findings: {chosen.name}, the run chosen on validation (highest validation AUC, then lowest "
         f"validation loss)")
    s.findings(a["run_findings"][chosen.name])
    for r in first_runs:
        if r is not chosen:
            s.details(f"{r.model} — {r.strategy} (seed {r.seed}): the same findings", a["run_findings"][r.name])
    return first_runs, chosen


def _errors_and_external(s: Section, a: dict) -> Section:
    """The most confident test errors with Grad-CAM, then each external set."""
    s.findings(a["gradcam_failures"])
    if a["gallery"]:
        s.h3("Most confident test errors, with Grad-CAM")
        s.p(GRADCAM_TEXT)
        for (model, strategy), items in a["gallery"].items():
            seed = a["groups"][(model, strategy)][0].seed
            error_gallery(s, items, f"{model} {strategy}, seed {seed}", "test", a["runs"][0].positive)
    for name, ext in a["external"].items():
        external_subsection(s, name, ext, a)
    return s

