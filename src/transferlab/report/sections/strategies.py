"""Sections B, C and LP-FT: one per strategy, its runs' test metrics and curves per model."""
from __future__ import annotations

from .. import plots
from ..blocks import Section, Table, mean_sd

STRATEGY_SECTIONS = {"finetune": ("B", "B — Fine-tuning the whole network"),
                     "features": ("C", "C — Frozen backbone as a fixed feature extractor"),
                     "lpft": ("LPFT", "B+C — Linear probe, then fine-tuning (LP-FT)")}
ALWAYS_SHOWN = ("finetune", "features")   # a study without them says so; lpft's section only when it has runs


TEST_COLUMNS = [("balanced_accuracy", "balanced acc."), ("recall", "sensitivity"), ("specificity", "specificity"),
                ("precision", "precision"), ("f1", "F1"), ("pr_auc", "PR-AUC")]   # after the key columns


def strategy_section(a: dict, strategy: str) -> Section:
    sid, title = STRATEGY_SECTIONS[strategy]
    s = Section(f"section-{sid}", title)
    groups = {k: v for k, v in a["groups"].items() if k[1] == strategy}
    if not groups:
        s.p(f"The {strategy} strategy is not part of this study.")
        return s
    rows = []
    for (model, _), runs in groups.items():
        rows.append([model, str(len(runs)), mean_sd([r.at("test").get("roc_auc") for r in runs]),
                     mean_sd([r.at("test").get("accuracy") for r in runs]),
                     mean_sd([r.metrics.get("threshold") for r in runs]),
                     mean_sd([r.metrics.get("best_epoch") for r in runs], ".1f") + " / " +
                     mean_sd([r.metrics.get("epochs_run") for r in runs], ".1f"),
                     mean_sd([r.metrics["val"].get("roc_auc") for r in runs]),
                     *[mean_sd([r.at("test").get(k) for r in runs]) for k, _ in TEST_COLUMNS]])
    s.table(Table(["model", "seeds", "test ROC-AUC", "test accuracy", "threshold (val)", "best epoch / run",
                   "val ROC-AUC", *[f"test {label}" for _, label in TEST_COLUMNS]], rows,
                  "Test metrics at each run's validation-chosen threshold (ROC-AUC and PR-AUC are threshold-free); "
                  "mean ± sd over seeds."))
    for (model, _), runs in groups.items():
        first = runs[0]
        s.h3(f"{model} — {strategy}")
        best = [int(r.metrics["best_epoch"]) for r in runs if r.metrics.get("best_epoch")]
        figures = [(plots.learning_curves([r.history for r in runs], f"{model} {strategy}", best),
                    "Learning curves: training and validation loss and accuracy per epoch; dotted: the best "
                    "epoch (on validation), whose weights each run keeps"
                    + ("; dashed: phase 2 (fine-tuning from the best probe head) starts." if strategy == "lpft"
                       else "."))]
        if first.multiclass and "test" in first.predictions:
            p = first.predictions["test"]
            curves = [(c, (p.true == k).astype(int), p.probs[:, k]) for k, c in enumerate(first.classes)]
            figures += [(plots.confusion(first.at("test")["confusion_matrix"], first.classes,
                                         f"test, seed {first.seed}, most probable class"),
                         f"Confusion matrix on test (seed {first.seed}; rows: true class)."),
                        (plots.roc_pr(curves, f"{model} {strategy}, seed {first.seed}"),
                         "One-vs-rest ROC and precision-recall curves on test, one per class (first seed).")]
        if first.binary:
            cm = first.at("test")["confusion_matrix"]
            curves = [(f"seed {r.seed}", r.predictions["test"].y, r.predictions["test"].prob) for r in runs
                      if "test" in r.predictions]
            figures += [(plots.confusion(cm, [first.negative, first.positive],
                                         f"test, seed {first.seed}, threshold {first.threshold:.3f}"),
                         f"Confusion matrix on test (seed {first.seed}, at its validation threshold)."),
                        (plots.roc_pr(curves, f"{model} {strategy}"), "ROC and precision-recall curves on test, one per seed.")]
        s.images(figures)
    return s
