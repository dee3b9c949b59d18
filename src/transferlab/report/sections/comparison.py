"""Section D: the models and strategies compared (CIs, McNemar tests, time), the ensemble and test-time augmentation."""
from __future__ import annotations

from ...formatting import fmt
from .. import plots
from ..blocks import Section, Table, fmt_ci, fmt_mean_sd


def comparison_section(a: dict) -> Section:
    s = Section("section-D", "D — Comparison of models and strategies")
    rows = [_comparison_cells(r) for r in a["comparison"]]
    seed, n_boot = (a["comparison"][0]["ci_seed"], a["comparison"][0]["n_boot"]) if a["comparison"] else (0, 0)
    s.table(Table(["model", "strategy", "seeds", "test ROC-AUC", f"seed {seed} [95% CI]", "test accuracy",
                   f"seed {seed} [95% CI]", "test F1", f"seed {seed} [95% CI]", "balanced acc.", "train s",
                   "total s", "peak RSS MB", "trainable params"], rows,
                  f"Mean ± sd over seeds; then the first seed's run (seed {seed}) alone, with its 95% CI: percentile "
                  f"bootstrap ({n_boot} resamples of the test images). Accuracy and F1 at each run's validation "
                  f"threshold. Times are wall-clock seconds per run: train = preparing the inputs (for features: the frozen "
                  f"backbone's one pass over the images) + the training epochs; total adds decoding and evaluation; "
                  f"runs that read their features from the cache (an earlier run's pass) are left out of both (cached "
                  f"features: not comparable). Peak RSS is the study process's peak resident memory at the "
                  f"end of the run: the runs share one process, so it only grows along the study; CUDA peak memory "
                  f"is per run, and section A measures each model's memory in isolation."))
    s.findings(a["comparison_findings"])
    tests = a["mcnemar"]
    if tests:
        s.table(Table(["A", "B", "seed", "test images", "acc. A", "acc. B", "only A right", "only B right", "p (exact)"],
                      [[t["a"], t["b"], str(t["seed"]), str(t["n"]), fmt(t["accuracy_a"]), fmt(t["accuracy_b"]),
                        str(t["only_a_correct"]), str(t["only_b_correct"]), fmt(t["p_value"], ".3g")] for t in tests],
                      "Exact McNemar tests on the same test images, runs paired by seed, predictions at each run's "
                      "validation threshold: each pair of strategies per model, and model vs model per strategy."))
    else:
        s.p("No paired McNemar test: the study needs two strategies or two models.")
    points = [{"label": f"{r['model']} {r['strategy']}", "strategy": r["strategy"], "x": r["train_seconds"]["mean"],
               "x_sd": r["train_seconds"]["sd"], "y": r["accuracy"]["mean"], "y_sd": r["accuracy"]["sd"]}
              for r in a["comparison"] if r["train_seconds"]["mean"] is not None]
    s.image(plots.accuracy_vs_time(points), "Test accuracy vs training time (error bars: sd over seeds).")
    if a.get("ensemble"):
        _ensemble_table(s, a["ensemble"])
    if a.get("tta"):
        _tta_table(s, a["tta"])
    return s


def _comparison_cells(r: dict) -> list[str]:
    """A row of the comparison table: a run group (mean ± sd over seeds, then the first seed's CIs) or an ensemble."""
    ci, first, memory = r.get("ci", {}), r.get("first_seed", {}), fmt_mean_sd(r["peak_rss_mb"], ".0f")
    if r.get("cuda_peak_mb"):
        memory += f" (CUDA {fmt_mean_sd(r['cuda_peak_mb'], '.0f')})"
    return [r["model"], r["strategy"], str(len(r["seeds"])),
            fmt_mean_sd(r["roc_auc"]), fmt_ci(first.get("roc_auc"), ci.get("roc_auc")),
            fmt_mean_sd(r["accuracy"]), fmt_ci(first.get("accuracy"), ci.get("accuracy")),
            fmt_mean_sd(r["f1"]), fmt_ci(first.get("f1"), ci.get("f1")),
            fmt_mean_sd(r["balanced_accuracy"]), _seconds(r, "train_seconds"), _seconds(r, "total_seconds"),
            memory, fmt(r["trainable_params"], ",d")]


def _seconds(r: dict, key: str) -> str:
    """A time cell: mean ± sd over the runs timed, saying how many read their features from the cache instead."""
    cached = len(r.get("cached_features") or [])
    if r[key]["mean"] is None and cached:
        return "cached features: not comparable"
    return fmt_mean_sd(r[key], ".1f") + (f" ({cached} cached left out)" if cached else "")


def _ensemble_table(s: Section, e: dict) -> None:
    s.h3(f"Ensemble of the {len(e['members'])} runs best on validation")
    cells = _comparison_cells(e)
    s.table(Table(["ensemble", "members", "test ROC-AUC [95% CI]", "test accuracy [95% CI]", "test F1 [95% CI]",
                   "balanced acc.", "train s (members)", "total s (members)"],
                  [[e["run"], ", ".join(e["members"]), cells[4], cells[6], *cells[8:12]]],
                  f"The mean of the members' probabilities ({e['run']}/), members ranked on validation AUC (then "
                  f"validation loss), its threshold chosen on validation; 95% CIs: percentile bootstrap "
                  f"({e['n_boot']} resamples of the test images). Times: the members' sums."))
    t = e.get("vs_best_run")
    if t:
        better = ("the ensemble" if t["only_a_correct"] > t["only_b_correct"] else
                  t["run"] if t["only_b_correct"] > t["only_a_correct"] else "neither")
        s.findings([f"Against {t['run']}, the run chosen on validation (the ensemble's best member): test accuracy "
                    f"{fmt(t['accuracy_ensemble'])} vs {fmt(t['accuracy_run'])}; {t['only_a_correct']} test images "
                    f"only the ensemble got right, "
                    f"{t['only_b_correct']} only the run (exact McNemar p={fmt(t['p_value'], '.3g')}"
                    + (f": {better} is better at p < 0.05)." if t["p_value"] < 0.05 else
                       ", no significant difference).")])


def _tta_table(s: Section, rows: list[dict]) -> None:
    views = rows[0]["views"]
    s.h3(f"Test-time augmentation ({views} views)")
    s.table(Table(["model", "strategy", "seeds", "test ROC-AUC", f"with TTA ×{views}", "test accuracy",
                   f"with TTA ×{views}", "balanced acc.", f"with TTA ×{views}", "threshold (val)", "TTA threshold (val)"],
                  [[r["model"], r["strategy"], str(r["seeds"]),
                    *[fmt_mean_sd(r[f"{kind}_{key}"]) for key in ("roc_auc", "accuracy", "balanced_accuracy")
                      for kind in ("plain", "tta")], fmt_mean_sd(r["plain_threshold"]), fmt_mean_sd(r["tta_threshold"])]
                   for r in rows],
                  f"The same test images ({rows[0]['n']}, the whole test split) scored plain and as the mean "
                  f"probability over {views} views (the image and {views - 1} random views of the training "
                  f"augmentation); mean ± sd over seeds. Accuracy at each decision rule: the plain one at the run's "
                  f"validation threshold, the TTA one at a threshold re-chosen on validation's {views}-view "
                  f"probabilities. Nothing is chosen on test."))
