"""A study's finished runs scored again: on the --external sets, with --tta views, and the --ensemble of the runs
best on validation. Each result is written into the run (or ensemble) directory and kept while it still stands."""
from __future__ import annotations

import json
from pathlib import Path

from ..rundir import RunDir
from .config import StudyConfig


def evaluate_external(config: StudyConfig, out: Path, runs: list[dict]) -> list[dict]:
    """Every run on every --external set (every image scored; shift estimates; --adapt beside). A result newer
    than the run's model and made with the same adaptations is kept."""
    from ..analysis.agreement import annotate
    from ..analysis.adaptation import parse_adapt
    from ..analysis.external import default_name, evaluate

    sets, adapt = [], parse_adapt(config.adapt)
    for data in config.external:
        name = default_name(Path(data))
        name = name if name not in {s["name"] for s in sets} else f"{name}_{len(sets) + 1}"
        sets.append({"name": name, "data": data})
        for i, r in enumerate(runs, 1):
            run = RunDir(out / r["run"])
            if _kept(run.evaluation(name), [run.weights], lambda saved: saved.get("adapt") == adapt):
                continue
            print(f"external {name}: run {i}/{len(runs)} {r['run']}", flush=True)
            result = evaluate(run.path, data=data, name=name, adapt=adapt, device=config.train.get("device", "auto"),
                              progress=config.train.get("progress", True), skip_bad=config.train.get("skip_bad", False))
            for note in result["notes"]:
                print(f"note: {note}", flush=True)
        annotate([out / r["run"] for r in runs], name)   # what the runs' agreement says about each one's accuracy
    return sets


TTA_SPLITS = ("val", "test")   # the ensemble's test-time threshold is chosen on its members' validation views


def evaluate_tta(config: StudyConfig, out: Path, run_names: list[str]) -> None:
    """--tta N: every run scored with N-view test-time augmentation on its validation and test splits, through
    `evaluate` (eval-SPLIT-tta.json and predictions-SPLIT-tta.csv in the run directory). A result newer than the
    run's model and made with as many views is kept."""
    from ..analysis.comparison import N_BOOT
    from ..analysis.external import evaluate

    if config.tta == 1:
        return
    for i, name in enumerate(run_names, 1):
        run = RunDir(out / name)
        for split in [s for s in TTA_SPLITS if s in run.read_metrics()]:
            if _kept(run.evaluation(f"{split}-tta"), [run.weights],
                     lambda saved: saved.get("tta", {}).get("views") == config.tta):
                continue
            print(f"test-time augmentation x{config.tta}: run {i}/{len(run_names)} {name}, {split}", flush=True)
            evaluate(run.path, split=split, name=f"{split}-tta", tta=config.tta, shift=False, n_boot=N_BOOT,
                     device=config.train.get("device", "auto"), progress=config.train.get("progress", True))


def study_ensemble(config: StudyConfig, out: Path, runs: list[dict], external: list[dict] = ()) -> dict | None:
    """--ensemble K: the mean of the K runs best on validation (ensembles.ensemble) as OUT/ensemble-topK, with
    --tta also scored with test-time augmentation, and on each --external set (`external`, evaluate_external's
    sets) from its members' results there; {"run": "ensemble-topK", "k": K}. Each kept while newer than what it
    was made from (every run's metrics; their test-time results; the members' results on the set)."""
    from ..analysis.comparison import N_BOOT
    from ..analysis.ensemble_scoring import made_from, score_from_members
    from ..ensembles import ensemble, evaluate_tta as ensemble_tta

    if not config.ensemble:
        return None
    name = f"ensemble-top{config.ensemble}"
    folder, candidates = RunDir(out / name), [RunDir(out / r["run"]) for r in runs]
    if not _kept(folder.config, [c.metrics for c in candidates],
                 lambda saved: folder.metrics.exists() and saved.get("ensemble", {}).get("k") == config.ensemble
                 and saved["ensemble"]["candidates"] == len(candidates)):
        print(f"ensemble of the {config.ensemble} runs best on validation: {folder.path}", flush=True)
        ensemble([c.path for c in candidates], folder.path, k=config.ensemble)
    if config.tta > 1 and "test" in folder.read_metrics():
        sources = [folder.metrics, *(c.evaluation(f"{s}-tta") for c in candidates for s in TTA_SPLITS
                                     if c.evaluation(f"{s}-tta").exists())]
        if not _kept(folder.evaluation("test-tta"), sources,
                     lambda saved: saved.get("tta", {}).get("views") == config.tta):
            print(f"test-time augmentation x{config.tta}: {name}", flush=True)
            ensemble_tta(folder.path, views=config.tta, n_boot=N_BOOT)
    for s in external:
        if not _kept(folder.evaluation(s["name"]), made_from(folder, s["name"]), lambda saved: True):
            print(f"external {s['name']}: {name}", flush=True)
            score_from_members(folder.path, s["name"], n_boot=N_BOOT)
    return {"run": name, "k": config.ensemble}


def _kept(saved: Path, sources: list[Path], same) -> bool:
    """Whether a result written earlier still stands: every file it was made from exists and is older, and
    same(its JSON) holds."""
    return saved.exists() and all(p.exists() and saved.stat().st_mtime >= p.stat().st_mtime for p in sources) \
        and same(json.loads(saved.read_text()))

