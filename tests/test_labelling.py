"""A few labels on a new set (issue 22): which images to label, whole-set estimates from them, recalibration,
the agreement estimators, the per-set decision, and label-free adaptation that must change what it claims to."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import external_hospital, features_run, fewer_resamples
from transferlab import cli
from transferlab.analysis import agreement
from transferlab.analysis.decision import verdict
from transferlab.analysis.external import evaluate
from transferlab.analysis.labelling import LabelDesign, allocate, labelled_estimates
from transferlab.rundir import read_csv, write_csv


# --- the sampling design and the estimates, on synthetic predictions with a known truth --------------------------

def _model(n=748, seed=0, prevalence=0.74):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    score = np.clip(np.where(y == 1, rng.normal(0.75, 0.2, n), rng.normal(0.35, 0.2, n)), 0.001, 0.999)
    probs = np.c_[1 - score, score]
    return y, probs, (score >= 0.5).astype(int)


def test_allocation_spends_the_budget_two_a_stratum_at_least():
    sizes = np.array([100, 50, 3, 1])
    n = allocate(20, sizes, np.array([1.0, 5.0, 1.0, 1.0]))
    assert n.sum() == 20 and (n <= sizes).all() and (n >= np.minimum(sizes, 2)).all() and n[1] > n[0]
    assert allocate(3, sizes, np.ones(4)).sum() == 3


def test_choice_is_seeded_and_stratified_by_class_and_confidence():
    y, probs, pred = _model()
    design = LabelDesign.fit(probs, pred)
    a, b = design.choose(probs, pred, 50, seed=3), design.choose(probs, pred, 50, seed=3)
    assert len(a) == 50 and (a == b).all() and len(set(a)) == 50
    strata = design.strata(probs, pred)
    assert len(np.unique(strata)) == 8 and set(np.unique(strata[a])) == set(np.unique(strata))
    # labels go where the model is unsure: the least confident stratum of each class gets more than the most
    for c in (0, 1):
        low, high = c * 5, c * 5 + 3
        assert (strata[a] == low).sum() > (strata[a] == high).sum()
    assert LabelDesign.from_dict(json.loads(json.dumps(design.to_dict()))).cuts == design.cuts


def test_every_image_labelled_gives_the_exact_metrics():
    y, probs, pred = _model(n=200)
    strata = LabelDesign.fit(probs, pred).strata(probs, pred)
    est = labelled_estimates(strata, pred, np.arange(200), y, classes=["N", "P"], pos=1, scores=probs[:, 1])
    acc = (pred == y).mean()
    assert est["accuracy"]["estimate"] == pytest.approx(acc) and est["accuracy"]["ci"] == pytest.approx([acc, acc])
    assert est["sensitivity"]["estimate"] == pytest.approx((pred[y == 1] == 1).mean())
    from sklearn.metrics import roc_auc_score
    assert est["roc_auc"]["estimate"] == pytest.approx(roc_auc_score(y, probs[:, 1]))


def test_intervals_cover_the_truth_and_are_narrower_than_random_labels():
    y, probs, pred = _model()
    design = LabelDesign.fit(probs, pred)
    strata = design.strata(probs, pred)
    truth = (pred == y).mean()
    covered, width, width_random = 0, [], []
    rng = np.random.default_rng(0)
    for seed in range(60):
        chosen = design.choose(probs, pred, 50, seed)
        ci = labelled_estimates(strata, pred, chosen, y[chosen], classes=["N", "P"], pos=1, n_draws=1000,
                                seed=seed)["accuracy"]["ci"]
        covered += ci[0] <= truth <= ci[1]
        width.append(ci[1] - ci[0])
        at_random = np.sort(rng.choice(len(y), 50, replace=False))
        ci = labelled_estimates(np.zeros(len(y), int), pred, at_random, y[at_random], classes=["N", "P"], pos=1,
                                n_draws=1000, seed=seed)["accuracy"]["ci"]
        width_random.append(ci[1] - ci[0])
    assert covered >= 52 and np.mean(width) / 2 <= 0.08 and np.mean(width) < np.mean(width_random)


def test_three_classes():
    rng = np.random.default_rng(1)
    y = rng.choice(3, 600, p=[0.5, 0.3, 0.2])
    logits = np.eye(3)[y] * 2 + rng.normal(0, 1, (600, 3))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    pred = probs.argmax(1)
    design = LabelDesign.fit(probs, pred)
    chosen = design.choose(probs, pred, 60, seed=0)
    est = labelled_estimates(design.strata(probs, pred), pred, chosen, y[chosen], classes=list("abc"), scores=probs)
    assert est["accuracy"]["ci"][0] <= (pred == y).mean() <= est["accuracy"]["ci"][1]
    assert "sensitivity" not in est and set(est["class_share"]) == set("abc") and est["roc_auc"]["estimate"] > 0.7


# --- the agreement estimators -------------------------------------------------------------------------------------

def _run_dir(path, val_true, val_pred, target_pred):
    path.mkdir(parents=True)
    write_csv(path / "predictions.csv", [{"split": "val", "file": f"v{i}", "label": t, "predicted": p}
                                         for i, (t, p) in enumerate(zip(val_true, val_pred))])
    write_csv(path / "predictions-new.csv", [{"file": f"t{i}", "label": "", "predicted": p}
                                             for i, p in enumerate(target_pred)])
    return path


def test_gde_is_the_agreement_with_the_other_runs(tmp_path):
    val = ["a"] * 10
    runs = [_run_dir(tmp_path / "r1", val, val, ["a"] * 10),
            _run_dir(tmp_path / "r2", val, val, ["a"] * 8 + ["b"] * 2),
            _run_dir(tmp_path / "r3", val, val, ["a"] * 6 + ["b"] * 4)]
    est = agreement.agreement_estimates(runs, "new")
    assert est["r1"]["gde"] == pytest.approx((0.8 + 0.6) / 2) and est["r3"]["gde"] == pytest.approx((0.6 + 0.8) / 2)
    assert "aline_d" in est["r1"] and agreement.agreement_estimates(runs[:1], "new") == {}


def test_aline_d_recovers_accuracies_on_the_line():
    from scipy.stats import norm
    acc_s = np.array([0.9, 0.8, 0.7])
    slope, bias = 0.8, -0.3
    pairs = [(0, 1), (0, 2), (1, 2)]
    agree_s = np.array([0.85, 0.8, 0.75])
    agree_t = norm.cdf(slope * norm.ppf(agree_s) + bias)
    # accuracies on the same line as agreement: probit(acc_t) = slope x probit(acc_s) + bias, and the pairwise
    # relation of ALine-D holds exactly when agreement follows the same line
    acc_t = norm.cdf(slope * norm.ppf(acc_s) + bias)
    got = agreement.aline_d(acc_s, agree_s, agree_t, pairs)
    assert got == pytest.approx(list(acc_t), abs=0.02)


# --- the decision per set -----------------------------------------------------------------------------------------

VAL = {"roc_auc": 0.99, "at_threshold": {"balanced_accuracy": 0.96}}


def _labelled(ba, ba_ci, auc, auc_ci):
    return {"has_labels": True, "n": 500, "accuracy": ba, "roc_auc": auc,
            "at_threshold": {"accuracy": ba, "balanced_accuracy": ba}, "ci": {"balanced_accuracy": ba_ci, "roc_auc": auc_ci}}


@pytest.mark.parametrize("result, expected", [
    (_labelled(0.95, [0.93, 0.97], 0.99, [0.98, 1.0]), "usable"),
    (_labelled(0.80, [0.77, 0.83], 0.985, [0.97, 0.995]), "recalibrate"),
    (_labelled(0.80, [0.77, 0.83], 0.90, [0.87, 0.93]), "retrain"),
    (_labelled(0.52, [0.47, 0.57], 0.55, [0.49, 0.61]), "not_shown"),
    ({"shift": {"headline": {"kind": "not_shown", "why": "far", "label_budget": 50, "high": 0.9}}}, "not_shown"),
    ({"shift": {"headline": {"kind": "range", "why": "differ", "label_budget": 50, "low": 0.7, "high": 0.98}}}, "label"),
    ({"shift": {"headline": {"kind": "estimate", "accuracy": 0.95, "domain_auc": 0.52}}}, "usable"),
])
def test_decision(result, expected):
    v = verdict(result, VAL)
    assert v["verdict"] == expected and v["why"]


# --- end to end: label budget, labels, recalibration, through the API and the CLI --------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory, xray_dir):
    return features_run(tmp_path_factory, xray_dir, "labelling-run")


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    return external_hospital(tmp_path_factory, "hospital_c", patients_per_class=10, seed=11)


@pytest.fixture(autouse=True)
def _fewer_resamples(monkeypatch):
    fewer_resamples(monkeypatch, 30)


def _fill(to_label, root, every=1):
    """The to-label file with the true labels (the class folder) filled in for every `every`-th row."""
    rows = read_csv(to_label)
    for i, r in enumerate(rows):
        if i % every == 0:
            r["label"] = r["path"].split("/")[-2]
    write_csv(to_label, rows)
    return rows


def test_label_budget_then_labels_then_recalibrate(run, external, capsys):
    assert cli.main(["evaluate", str(run.path), "--data", str(external), "--label-budget", "16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    to_label = run.path / "to-label-hospital_c.csv"
    rows = read_csv(to_label)
    assert len(rows) == 16 and all(r["label"] == "" for r in rows) and "--labels" in out
    assert (run.path / "label-design-hospital_c.json").exists()
    _fill(to_label, external)
    assert cli.main(["evaluate", str(run.path), "--data", str(external), "--labels", str(to_label), "--recalibrate",
                     "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "from labels" in out and "recalibrated" in out and "what to do:" in out
    result = json.loads((run.path / "eval-hospital_c.json").read_text())
    block = result["labelled"]
    for key in ("accuracy", "balanced_accuracy", "sensitivity", "specificity", "roc_auc"):
        lo, hi = block[key]["ci"]
        assert lo <= block[key]["estimate"] <= hi and block[key]["n_labels"] == 16, key
    truth = result["at_threshold"]["accuracy"]
    assert block["accuracy"]["ci"][0] - 0.05 <= truth <= block["accuracy"]["ci"][1] + 0.05
    recal = result["recalibrated"]
    assert 0 <= recal["threshold"] <= 1 and recal["temperature"] > 0 and recal["other_images"]["n"] == 40 - 16
    assert {"accuracy", "ci"} <= set(recal["other_images"]["recalibrated"])
    assert "predicted_recalibrated" in read_csv(run.path / "predictions-hospital_c.csv")[0]
    assert result["next_step"]["verdict"] in ("usable", "recalibrate", "retrain", "not_shown")


def test_labels_for_an_unlabelled_folder_and_any_subset(run, external, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    names = {}
    for f in external.rglob("*.jpeg"):
        shutil.copy(f, flat / f.name)
        names[f.name] = f.parent.name
    labels = tmp_path / "mine.csv"   # labels chosen by the user, not by --label-budget, paths relative to the folder
    write_csv(labels, [{"path": n, "label": c.lower()} for n, c in sorted(names.items())[::3]])
    result = evaluate(run.path, data=flat, labels=labels, progress=False, n_boot=20)
    assert not result["has_labels"] and "not chosen by --label-budget" in result["labelled"]["how_sampled"]
    assert result["labelled"]["n_labels"] == len(sorted(names)[::3])
    assert result["next_step"]["verdict"] in ("usable", "recalibrate", "retrain", "not_shown")


def test_choice_and_recalibration_read_no_folder_label(run, external, tmp_path):
    """The folder's labels shuffled: the images chosen, the adapted probabilities and the recalibrated rule (which
    reads only the labels file) are unchanged."""
    files = sorted(external.rglob("*.jpeg"))
    shuffled = np.random.default_rng(0).permutation([f.parent.name for f in files])
    (external / "shuffled.csv").write_text("path,label\n" + "".join(f"{f.relative_to(external)},{c}\n"
                                                                    for f, c in zip(files, shuffled)))
    a = evaluate(run.path, data=external, name="a", label_budget=12, adapt="prior,bn", progress=False, n_boot=20)
    b = evaluate(run.path, data=external, name="b", manifest="shuffled.csv", label_budget=12, adapt="prior,bn",
                 progress=False, n_boot=20)
    assert [r["path"] for r in read_csv(run.path / "to-label-a.csv")] == [r["path"] for r in read_csv(run.path / "to-label-b.csv")]
    for method in ("prior", "bn"):
        pa = [r[f"prob_PNEUMONIA_{method}"] for r in read_csv(run.path / "predictions-a.csv")]
        pb = [r[f"prob_PNEUMONIA_{method}"] for r in read_csv(run.path / "predictions-b.csv")]
        assert pa == pb, method
    _fill(run.path / "to-label-a.csv", external)
    ra = evaluate(run.path, data=external, name="a", labels=run.path / "to-label-a.csv", recalibrate=True,
                  progress=False, n_boot=20, shift=False)
    rb = evaluate(run.path, data=external, name="b", manifest="shuffled.csv", labels=run.path / "to-label-a.csv",
                  recalibrate=True, progress=False, n_boot=20, shift=False)
    assert ra["recalibrated"]["threshold"] == rb["recalibrated"]["threshold"]
    assert ra["labelled"]["accuracy"] == rb["labelled"]["accuracy"]
    assert a["shift"]["headline"] == b["shift"]["headline"]


def test_batchnorm_adaptation_moves_a_shifted_set_towards_validation(run, external, tmp_path):
    """Darkened copies of the images: --adapt bn must change the probabilities (a no-op would not) and bring
    them back towards those of the original images."""
    from PIL import Image
    dark = tmp_path / "dark"
    for f in external.rglob("*.jpeg"):
        (dark / f.parent.name).mkdir(parents=True, exist_ok=True)
        img = np.asarray(Image.open(f).convert("L"), dtype=float)
        Image.fromarray(np.clip(img * 0.5, 0, 255).astype(np.uint8)).save(dark / f.parent.name / f.name)
    evaluate(run.path, data=external, name="orig", shift=False, progress=False, n_boot=0)
    evaluate(run.path, data=dark, name="dark", adapt="bn", shift=False, progress=False, n_boot=0)
    orig = {r["file"]: float(r["prob_PNEUMONIA"]) for r in read_csv(run.path / "predictions-orig.csv")}
    rows = read_csv(run.path / "predictions-dark.csv")
    plain = np.array([float(r["prob_PNEUMONIA"]) for r in rows])
    adapted = np.array([float(r["prob_PNEUMONIA_bn"]) for r in rows])
    reference = np.array([orig[r["file"]] for r in rows])
    assert np.abs(adapted - plain).max() > 0.01
    assert np.abs(adapted - reference).mean() < np.abs(plain - reference).mean()


def test_prior_adaptation_survives_an_em_prior_of_one():
    """EM's prior reaching 1 made the re-chosen threshold a rounding artefact (accuracy 0.762 -> 0.258 on the
    harness's noise copy): with the prior floored, Youden's threshold keeps every decision, and the adapted
    probabilities do move towards the estimated prior."""
    from transferlab.analysis.adaptation import _prior_step
    rng = np.random.default_rng(0)
    y = (rng.random(400) < 0.7).astype(int)
    s = np.clip(np.where(y == 1, rng.normal(0.8, 0.15, 400), rng.normal(0.3, 0.15, 400)), 0.01, 0.99)
    source = {"probs": np.c_[1 - s, s], "y": y}
    target = np.c_[np.full(300, 0.02), np.full(300, 0.98)] + np.r_[np.zeros(150), np.full(150, 0.01)][:, None] * [1, -1]
    config = {"data": {"classes": ["NORMAL", "PNEUMONIA"]}, "settings": {"threshold_method": "youden"}}
    adapted, threshold, info = _prior_step(target, 0.5, config=config, source={**source, "pos": 1})
    assert info["prior"]["PNEUMONIA"] > 0.99 and 0 < threshold < 1
    assert not np.allclose(adapted, target)
    plain_pred = (target[:, 1] >= 0.5)
    assert ((adapted[:, 1] >= threshold) == plain_pred).mean() > 0.9


# --- bad input: one line, before any work ------------------------------------------------------------------------

@pytest.mark.parametrize("args, message", [
    (["--label-budget", "0"], "--label-budget must be at least 1"),
    (["--tta", "0"], "--tta must be at least 1"),
])
def test_bad_numbers_are_usage_errors(run, external, args, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", str(run.path), "--data", str(external), *args])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


def test_bad_labels_are_one_line(run, external, tmp_path, capsys):
    assert cli.main(["evaluate", str(run.path), "--data", str(external), "--recalibrate"]) == 2
    assert "--recalibrate needs --labels" in capsys.readouterr().err
    assert cli.main(["evaluate", str(run.path), "--data", str(external), "--labels", str(tmp_path / "no.csv")]) == 2
    assert "no such file" in capsys.readouterr().err
    bad = tmp_path / "bad.csv"
    first = sorted(external.rglob("*.jpeg"))[0]
    write_csv(bad, [{"path": str(first), "label": "COVID"}])
    assert cli.main(["evaluate", str(run.path), "--data", str(external), "--labels", str(bad), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "COVID" in err and "row 2" in err


def test_train_init_continues_from_a_run_on_labelled_target_images(run, external, tmp_path, capsys):
    """A few labelled target images: --init re-fits the run's head on them; evaluate then scores only the
    target's other images and puts the starting run beside the new one."""
    few = tmp_path / "few"
    for c in ("NORMAL", "PNEUMONIA"):
        (few / c).mkdir(parents=True)
        for f in sorted((external / c).glob("*.jpeg"))[:8]:
            shutil.copy(f, few / c / f.name)
    out = tmp_path / "adapted"
    assert cli.main(["train", "--data", str(few), "--init", str(run.path), "--strategy", "features", "--epochs", "5",
                     "--test-fraction", "0", "--val-fraction", "0.25", "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["init"] == str(run.path.resolve()) and config["model"]["image_size"] == 64
    capsys.readouterr()
    result = evaluate(out, data=external, progress=False, n_boot=20, shift=False)
    assert result["n"] == 40 - 16 and any("trained or validated on" in n for n in result["notes"])
    assert result["versus_init"]["run"] == str(run.path.resolve()) and "p_value" in result["versus_init"]["mcnemar"]


def test_train_init_refuses_other_classes_and_unfinished_runs(run, tmp_path, capsys):
    other = tmp_path / "other"
    for c in ("CAT", "DOG"):
        (other / c).mkdir(parents=True)
    assert cli.main(["train", "--data", str(other), "--init", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a finished run" in capsys.readouterr().err
