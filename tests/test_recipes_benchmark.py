"""benchmarks/recipes.py --shifts: the leave-one-family-out choice and the rule that changes a default, on
synthetic per-run rows (no training), the shift families, and one tiny end-to-end run of the script."""
from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from transferlab.rundir import read_csv

ROOT = Path(__file__).resolve().parents[1]


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"benchmark_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)   # recipes.py puts benchmarks/ on sys.path for its own `import shift`
    return module


recipes = load("recipes")
selection = load("recipe_shifts")
FAMILIES = selection.FAMILIES
NOISE = [0.004, -0.003, 0.001]   # seed-to-seed noise shared by every variant of a seed (paired comparisons)


def run_row(variant: str, seed: int, *, family_gain: dict | None = None, val_auc: float = 0.90,
            test_acc: float = 0.85, jitter: float = 0.0) -> dict:
    """One run's row as recipes.py makes it: clean numbers and every shift's AUC / accuracy on both copies.
    family_gain: {family: AUC (and accuracy) added to that family's shifts, on validation and test copies}."""
    n = NOISE[seed] + jitter * (seed - 1)
    gain = family_gain or {}
    shifts = {}
    for source in ("val", "test"):
        shifts[source] = {s: {"roc_auc": 0.80 + gain.get(f, 0) + n, "accuracy": 0.75 + gain.get(f, 0) + n}
                          for f, names in FAMILIES.items() for s in names}
    shifts["test"][selection.CLEAN] = {"roc_auc": 0.90 + n, "accuracy": 0.85 + n}
    return {"variant": variant, "seed": seed, "val_loss": 0.30, "val_roc_auc": val_auc + n, "val_accuracy": 0.85,
            "test_roc_auc": 0.90 + n, "test_accuracy": test_acc + n, "shifts": shifts}


def rows_of(**variants) -> list[dict]:
    """Three seeds of the default and of each variant (keyword: run_row's options; names use _ for spaces)."""
    out = [run_row("default", s) for s in range(3)]
    for name, options in variants.items():
        out += [run_row(name.replace("_", " "), s, jitter=0.002, **options) for s in range(3)]
    return out


def decide(rows):
    folds = [selection.fold(rows, family) for family in FAMILIES]
    return folds, selection.recommend(folds)


def test_the_families_partition_the_shifts_exactly():
    shift = load("shift")
    named = [s for names in shift.FAMILIES.values() for s in names]
    assert sorted(named) == sorted(set(named)) == sorted({**shift.COVARIATE, **shift.ACQUISITION})
    assert list(shift.FAMILIES) == ["intensity", "degradation", "acquisition"]
    assert shift.FAMILIES["acquisition"] == list(shift.ACQUISITION)
    assert set(shift.FAMILIES["intensity"]) == {"gamma 0.6", "gamma 1.6", "contrast 0.6"}


def test_a_variant_that_wins_only_on_intensity_is_not_recommended():
    rows = rows_of(intensity_trick={"family_gain": {"intensity": 0.05, "degradation": -0.02, "acquisition": -0.02}})
    folds, recommended = decide(rows)
    by = {f["family"]: f for f in folds}
    assert by["intensity"]["chosen"] == "intensity trick"          # chosen on intensity's validation copies ...
    assert by["intensity"]["held_auc_vs_default"][3] < 0 and not by["intensity"]["helps"]   # ... loses elsewhere
    assert by["degradation"]["chosen"] == by["acquisition"]["chosen"] == "default"
    assert recommended == "default"
    assert "no gain on the families held out from intensity" in selection.why_not([by["intensity"]])


def test_a_variant_that_wins_everywhere_and_keeps_clean_accuracy_is_recommended():
    rows = rows_of(robust={"family_gain": {f: 0.03 for f in FAMILIES}})
    folds, recommended = decide(rows)
    assert [f["chosen"] for f in folds] == ["robust"] * 3 and all(f["helps"] for f in folds)
    assert recommended == "robust"
    assert all(f["worst_acc"][1][0] > f["default_worst_acc"][1][0] for f in folds)
    json.dumps(folds)   # written to recipes-STRATEGY-shifts.json as they are (no numpy scalars)


def test_each_chosen_variant_is_judged_on_its_own_folds():
    rows = rows_of(intensity_trick={"family_gain": {"intensity": 0.05, "degradation": -0.02, "acquisition": -0.02}},
                   robust={"family_gain": {f: 0.03 for f in FAMILIES}})
    folds = [selection.fold(rows, family) for family in FAMILIES]
    assert [f["chosen"] for f in folds] == ["intensity trick", "robust", "robust"]
    assert selection.why_not([f for f in folds if f["chosen"] == "robust"]) == ""
    assert selection.why_not([f for f in folds if f["chosen"] == "intensity trick"]) != ""
    assert selection.recommend([f for f in folds if f["chosen"] != "intensity trick"]) == "robust"
    # both chosen; the rule judges each variant on its own folds: robust qualifies, the trick does not
    assert selection.recommend(folds) == "robust"


def test_a_variant_that_wins_on_shifts_but_loses_clean_test_accuracy_is_not_recommended():
    rows = rows_of(robust_but_worse={"family_gain": {f: 0.03 for f in FAMILIES}, "test_acc": 0.80})
    folds, recommended = decide(rows)
    assert all(f["chosen"] == "robust but worse" and f["helps"] for f in folds)
    assert all(f["clean_acc_vs_default"][3] < 0 for f in folds)
    assert recommended == "default"
    assert selection.why_not(folds) == "lower clean test accuracy beyond its CI"


def test_a_variant_below_the_default_on_clean_validation_is_never_chosen():
    rows = rows_of(worse_clean={"family_gain": {f: 0.05 for f in FAMILIES}, "val_auc": 0.85})
    folds, recommended = decide(rows)
    assert [f["chosen"] for f in folds] == ["default"] * 3 and recommended == "default"


def test_one_seed_is_not_enough_to_change_a_default():
    rows = [r for r in rows_of(robust={"family_gain": {f: 0.03 for f in FAMILIES}}) if r["seed"] == 1]   # seed 1: no jitter
    folds, recommended = decide(rows)
    assert [f["chosen"] for f in folds] == ["robust"] * 3 and recommended == "default"
    assert selection.why_not(folds) == f"fewer than {selection.MIN_SEEDS} seeds"   # (1 seed: its CIs are points)
    assert selection.recommend(folds, min_seeds=1) == "robust"


def test_an_ensemble_is_compared_with_its_members_and_never_chosen():
    rows = rows_of(bigger={"family_gain": {f: 0.01 for f in FAMILIES}})
    rows += [{**run_row("ensemble", s, family_gain={f: 0.05 for f in FAMILIES}, val_auc=0.95),
              "members": ["default", "bigger"]} for s in range(3)]
    folds, recommended = decide(rows)
    assert "ensemble" not in {f["chosen"] for f in folds} and recommended != "ensemble"
    lines = selection.ensemble_lines(rows)
    assert lines[1].startswith("ensemble (mean of default, bigger; 2x the cost of one)")
    assert lines[3].startswith("- vs default: mean shift AUC Δ +0.0500 [") and lines[4].startswith("- vs bigger: ")
    table = recipes.summarise([{**r, "seconds": 1.0} for r in rows], ["default", "bigger", "ensemble"])
    assert [e["ensemble"] for e in table] == [False, False, True]
    assert recipes.choose(table)["variant"] != "ensemble"   # its higher validation AUC does not make it a default
    one = selection.mean_ci([0.9])
    assert selection.cell(one) == "0.9000 (one seed: no CI)" and selection.delta(one) == "+0.9000 (one seed: no CI)"


def test_the_shift_subset_is_stratified_fixed_and_capped():
    items = [(Path(f"n{i}.jpeg"), "NORMAL") for i in range(30)] + [(Path(f"p{i}.jpeg"), "PNEUMONIA") for i in range(70)]
    sub = selection.stratified_subset(items, 20)
    assert len(sub) == 20 and sum(lbl == "NORMAL" for _, lbl in sub) == 6
    assert sub == selection.stratified_subset(items, 20) and selection.stratified_subset(items, 500) == items


@pytest.mark.usefixtures("one_thread")
def test_recipes_shifts_end_to_end(xray_dir, tmp_path, capsys, monkeypatch):
    """Two tiny features runs and their ensemble, every shift on validation and test copies, the tables and the
    SHIFTS line; the copies chosen on come from the validation split only, and a second call reuses every
    evaluation."""
    monkeypatch.setitem(recipes.VARIANTS, "features", [*recipes.VARIANTS["features"],
                                                       ("ensemble of two", {"ensemble": ["default", "lr 1e-2"]})])
    out = tmp_path / "recipes"
    argv = ["--data", str(xray_dir), "--strategy", "features", "--seeds", "1", "--max-images", "40",
            "--image-size", "32", "--variants", "ensemble of two", "--shifts", "--shift-images", "6",
            "--out", str(out)]   # its members are run with it
    start = time.perf_counter()
    assert recipes.main(argv) == 0
    first = time.perf_counter() - start
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-2].startswith("SUMMARY strategy=features ")
    assert lines[-1].startswith("SHIFTS strategy=features recommended=default change_default=no "
                                "default_mean_shift_auc=")
    text = (out / "recipes-features-shifts.md").read_text()
    assert "| recipe | seeds | clean val AUC | clean test AUC | clean test acc |" in text
    assert "| chosen on | chosen variant |" in text
    for family in FAMILIES:
        assert f"\n| {family} | " in text
    assert "mean shift AUC >= clean AUC - 0.01:" in text and "`python benchmarks/recipes.py --data " in text
    doc = json.loads((out / "recipes-features-shifts.json").read_text())
    assert [(r["variant"], r["seed"]) for r in doc["runs"]] == [("default", 0), ("lr 1e-2", 0), ("ensemble of two", 0)]
    # the ensemble: scored from its members' results on each set, compared with them, never chosen
    assert "ensemble of two (mean of default, lr 1e-2; 2x the cost of one)" in text and "- vs lr 1e-2: " in text
    assert "ensemble of two" not in {f["chosen"] for f in doc["folds"]}
    member_auc = [json.loads((out / "features" / v / "seed0" / "eval-shift-test-6-blur_sigma_3.json").read_text())
                  for v in ("default", "lr_1e-2")]
    mine = json.loads((out / "features" / "ensemble_of_two" / "seed0" / "eval-shift-test-6-blur_sigma_3.json").read_text())
    assert mine["members"] and mine["n"] == member_auc[0]["n"] == 6
    for r in doc["runs"]:
        assert set(r["shifts"]["val"]) == set(selection.SHIFTS)
        assert set(r["shifts"]["test"]) == set(selection.SHIFTS) | {selection.CLEAN}
    # no test image takes part in a choice: the validation copies are made of validation images only
    splits = read_csv(out / "features" / "default" / "seed0" / "splits.csv")
    stems = {split: {Path(r["file"]).stem for r in splits if r["split"] == split} for split in ("val", "test")}
    sets = out / "features" / "shift-sets"
    for source in ("val", "test"):
        folders = [f for f in (sets / f"{source}-6").iterdir() if f.is_dir()]
        assert len(folders) == len(selection.SHIFTS) + (source == "test")
        for folder in folders:
            files = [f for f in folder.rglob("*") if f.is_file()]
            assert len(files) == 6 and all(f.name[6:-4] in stems[source] for f in files), folder
    assert len(stems["val"]) > 6 and not stems["val"] & stems["test"]   # a subset of it, the same in every set
    assert len({tuple(sorted(f.name for f in folder.rglob("*.png"))) for folder in (sets / "val-6").iterdir()}) == 1
    # an interrupted benchmark continues: every eval-NAME.json is reused
    evals = sorted((out / "features").glob("*/seed0/eval-shift-*.json"))
    assert len(evals) == 3 * (2 * len(selection.SHIFTS) + 1)
    before = [f.stat().st_mtime_ns for f in evals]
    assert recipes.main(argv) == 0
    assert [f.stat().st_mtime_ns for f in evals] == before
    assert capsys.readouterr().out.strip().splitlines()[-1] == lines[-1]
    # seeds from another session count: seed 1 runs now, seed 0 is taken from the earlier output as it is
    earlier = out / "recipes-features-shifts.json"
    again = [*argv[:-1], str(tmp_path / "again"), "--first-seed", "1", "--reuse", str(earlier)]
    assert recipes.main(again) == 0
    merged = json.loads((tmp_path / "again" / "recipes-features-shifts.json").read_text())
    assert [(r["variant"], r["seed"]) for r in merged["runs"]] == [
        ("default", 0), ("default", 1), ("lr 1e-2", 0), ("lr 1e-2", 1), ("ensemble of two", 0), ("ensemble of two", 1)]
    assert merged["runs"][0] == doc["runs"][0] and not (tmp_path / "again" / "features" / "default" / "seed0").exists()
    assert set(merged["runs"][1]["shifts"]["test"]) == set(selection.SHIFTS) | {selection.CLEAN}
    capsys.readouterr()
    with pytest.raises(SystemExit):   # another budget: refused before anything trains
        recipes.main([*argv[:-1], str(tmp_path / "other"), "--image-size", "48", "--reuse", str(earlier)])
    assert "was made with other image_size (image_size=32)" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()
    print(f"first call {first:.0f} s")
