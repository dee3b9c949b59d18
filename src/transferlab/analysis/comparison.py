"""Task D: runs compared - test metrics over seeds with bootstrap CIs, and paired McNemar tests."""
from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np

from ..formatting import MISSING
from ..metrics import BOOTSTRAP_METRICS, bootstrap_ci, mcnemar
from ..rundir import RunDir
from .runs import Run

N_BOOT = 1000   # bootstrap resamples of the test images for the 95% CIs

COMPARE_METRICS = ("accuracy", "balanced_accuracy", "recall", "specificity", "f1", "roc_auc", "pr_auc")
CI_METRICS = ("accuracy", "f1", "roc_auc")


def comparison_table(groups: dict[tuple[str, str], list[Run]], n_boot: int | None = None) -> list[dict]:
    """Per model x strategy: test metrics at the validation threshold (mean and sd over seeds), bootstrap 95%
    CIs over the test images of the first seed's run, training time and peak memory. The times leave out the runs
    whose features were read from the cache (`cached_features`: their seeds), which skipped the backbone's pass."""
    out = []
    for (model, strategy), runs in groups.items():
        row = {"model": model, "strategy": strategy, "seeds": [r.seed for r in runs]}
        for key in COMPARE_METRICS:
            values = [r.at("test").get(key) for r in runs]
            row[key] = _mean_sd([v for v in values if v is not None])
        row["val_roc_auc"] = _mean_sd([r.metrics["val"].get("roc_auc") for r in runs
                                       if r.metrics["val"].get("roc_auc") is not None])
        # training = preparing the inputs (the frozen backbone's pass for `features`) + fitting
        timed = [r for r in runs if not r.metrics.get("features_from_cache")]
        row["train_seconds"] = _mean_sd([r.metrics["seconds"]["prepare"] + r.metrics["seconds"]["fit"] for r in timed])
        row["total_seconds"] = _mean_sd([r.metrics["seconds"]["total"] for r in timed])
        row["cached_features"] = [r.seed for r in runs if r.metrics.get("features_from_cache")]
        row["peak_rss_mb"] = _mean_sd([r.metrics["peak_rss_mb"] for r in runs])
        cuda = [r.metrics.get("cuda_peak_mb") for r in runs if r.metrics.get("cuda_peak_mb") is not None]
        row["cuda_peak_mb"] = _mean_sd(cuda) if cuda else None
        row["trainable_params"] = runs[0].metrics["trainable_params"]
        first = runs[0]
        row["ci_seed"], row["n_boot"] = first.seed, n_boot or N_BOOT
        cis = test_cis(first, n_boot)
        if cis:
            row["ci"] = cis
            row["first_seed"] = {k: first.at("test").get(k) for k in CI_METRICS}
        out.append(row)
    return out


def test_cis(run: Run, n_boot: int | None = None) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap 95% CIs of one run's test accuracy, F1 and AUC at its decision rule (resampling the
    test images); {} without test predictions."""
    if "test" not in run.predictions or not (run.binary or run.multiclass):
        return {}
    p = run.predictions["test"]
    if run.binary:
        return {k: bootstrap_ci(p.y, p.prob, BOOTSTRAP_METRICS[k], threshold=run.threshold, n_boot=n_boot or N_BOOT)
                for k in CI_METRICS}
    return {k: bootstrap_ci(p.true, p.probs, BOOTSTRAP_METRICS[k], n_boot=n_boot or N_BOOT)   # the most probable class
            for k in CI_METRICS}


TTA_METRICS = ("roc_auc", "accuracy", "balanced_accuracy")


def tta_table(groups: dict[tuple[str, str], list[Run]], name: str = "test-tta") -> list[dict]:
    """Per model x strategy: test metrics plain and with test-time augmentation (eval-NAME.json, which `study
    --tta` writes into each run), each at its own decision rule (the TTA threshold re-chosen on validation's views),
    mean and sd over seeds; groups whose runs have no such file are left out."""
    out = []
    for (model, strategy), runs in groups.items():
        results = [result for r in runs if (result := RunDir(r.path).read_evaluation(name)) is not None]
        if not results:
            continue
        row = {"model": model, "strategy": strategy, "seeds": len(results), "views": results[0]["tta"]["views"],
               "n": results[0].get("n")}
        for key in TTA_METRICS:
            for kind, entries in (("plain", results), ("tta", [r["tta"] for r in results])):
                values = [{**e, **e.get("at_threshold", {})}.get(key) for e in entries]
                row[f"{kind}_{key}"] = _mean_sd([v for v in values if v is not None])
        for kind, entries in (("plain", results), ("tta", [r["tta"] for r in results])):
            row[f"{kind}_threshold"] = _mean_sd([e["threshold"] for e in entries if e.get("threshold") is not None])
        out.append(row)
    return out


def _mean_sd(values: list[float]) -> dict:
    values = [float(v) for v in values]
    return {"mean": float(np.mean(values)) if values else None,
            "sd": float(np.std(values, ddof=1)) if len(values) > 1 else None, "n": len(values)}


def mcnemar_tests(groups: dict[tuple[str, str], list[Run]]) -> list[dict]:
    """Exact McNemar tests on the same test images, each run's decisions by its validation-chosen rule (any number
    of classes: right or wrong is what is paired); runs are
    paired by seed: every pair of strategies for each model (finetune vs features, ... vs lpft), and every pair of
    models for each strategy."""
    models = list(dict.fromkeys(m for m, _ in groups))
    strategies = list(dict.fromkeys(s for _, s in groups))
    pairs = [((m, a), (m, b)) for m in models for a, b in itertools.combinations(strategies, 2)
             if (m, a) in groups and (m, b) in groups]
    pairs += [((a, s), (b, s)) for s in strategies for a, b in itertools.combinations(models, 2)
              if (a, s) in groups and (b, s) in groups]
    out = []
    for ga, gb in pairs:
        by_seed = {r.seed: r for r in groups[gb]}
        for ra in groups[ga]:
            rb = by_seed.get(ra.seed)
            if rb is None or "test" not in ra.predictions or "test" not in rb.predictions:
                continue
            pa, pb = ra.predictions["test"], rb.predictions["test"]
            index = {f: i for i, f in enumerate(pb.files)}
            if set(index) != set(pa.files):
                continue   # not the same test images: no paired test
            order = np.array([index[f] for f in pa.files])
            result = mcnemar(pa.true, pa.pred, pb.pred[order])   # each run's own decisions (validation-chosen rule)
            out.append({"a": f"{ga[0]} {ga[1]}", "b": f"{gb[0]} {gb[1]}", "seed": ra.seed, "n": len(pa.y),
                        "accuracy_a": ra.at("test")["accuracy"], "accuracy_b": rb.at("test")["accuracy"], **result})
    return out


def ensemble_comparison(ensemble: Run, chosen: Run, n_boot: int | None = None) -> dict:
    """An ensemble directory as a row of the comparison table (its test metrics, bootstrap CIs), with its members
    and the exact McNemar test on the test images against `chosen`, the run chosen on validation (runs.chosen_run),
    which is its best member when it was made from the same runs (left out otherwise)."""
    row = comparison_table({ensemble.group: [ensemble]}, n_boot)[0]
    row["run"] = ensemble.name
    row["members"] = [Path(m["run"]).name for m in ensemble.config["ensemble"]["members"]]
    vs = ensemble.metrics.get("vs_best_run")
    if vs and Path(vs["run"]).name == chosen.name:
        row["vs_best_run"] = {"run": chosen.name, "model": chosen.model, "strategy": chosen.strategy,
                              "seed": chosen.seed, "accuracy_ensemble": ensemble.at("test")["accuracy"],
                              "accuracy_run": chosen.at("test")["accuracy"], **vs["test_mcnemar"]}
    return row


def best_on_validation(rows: list[dict]) -> dict:
    """The model x strategy a user should pick: highest mean validation AUC (never a test metric). One run of it
    or of another group may be the run chosen on validation (runs.chosen_run), which is a single run's score."""
    return max(rows, key=lambda r: -1.0 if r["val_roc_auc"]["mean"] is None else r["val_roc_auc"]["mean"])


def comparison_findings(table: list[dict], tests: list[dict]) -> list[str]:
    out = []
    ranked = [r for r in table if r["roc_auc"]["mean"] is not None]
    if ranked:
        best = best_on_validation(ranked)
        out.append(f"Best on validation (highest mean val AUC, {_ms(best['val_roc_auc'])}): {best['model']} "
                   f"{best['strategy']}; on test: AUC {_ms(best['roc_auc'])}, accuracy at the validation threshold "
                   f"{_ms(best['accuracy'])} over {len(best['seeds'])} seed(s). The test split never chooses.")
        timed = [r for r in ranked if r["train_seconds"]["mean"] is not None]
        if timed:
            fastest = min(timed, key=lambda r: r["train_seconds"]["mean"])
            out.append(f"Fastest to train: {fastest['model']} {fastest['strategy']} "
                       f"({fastest['train_seconds']['mean']:.1f} s per run, test accuracy {_ms(fastest['accuracy'])}).")
        out += cached_features_note(table)
    if tests:
        significant = [t for t in tests if t["p_value"] < 0.05]
        out.append(f"{len(significant)} of {len(tests)} paired McNemar tests have p < 0.05 (uncorrected; with "
                   f"{len(tests)} tests, Bonferroni would ask p < {0.05 / len(tests):.4f}).")
        for t in significant[:6]:
            better = t["a"] if t["only_a_correct"] > t["only_b_correct"] else t["b"]
            out.append(f"Seed {t['seed']}: {t['a']} vs {t['b']}: {t['only_a_correct']} test images only the first got "
                       f"right, {t['only_b_correct']} only the second (p={t['p_value']:.3g}): {better} is better.")
    return out


def cached_features_note(table: list[dict]) -> list[str]:
    """One sentence naming the runs left out of the timings because their features came from the cache."""
    left_out = [f"{r['model']} {r['strategy']} seed{'s' * (len(r['cached_features']) > 1)} "
                f"{', '.join(map(str, r['cached_features']))}" for r in table if r.get("cached_features")]
    if not left_out:
        return []
    return [f"Times compare like with like: left out are the runs whose frozen-backbone features were read from the "
            f"cache, computed by an earlier run (cached features: not comparable): {'; '.join(left_out)}."]


def _ms(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("mean") is None:
        return MISSING
    return f"{d['mean']:.{digits}f}" + (f" ± {d['sd']:.{digits}f}" if d.get("sd") is not None else "")
