"""Task E beyond diagnosis: external sets in every layout, label-free shift estimates, adaptation."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import external_hospital, features_run, fewer_resamples
from transferlab import cli
from transferlab.analysis import domain
from transferlab.analysis import shift as sh
from transferlab.analysis.adaptation import parse_adapt
from transferlab.analysis.external import evaluate
from transferlab.errors import TransferlabError
from transferlab.rundir import read_csv

# --- the estimators, on synthetic data with a known answer --------------------------------------------------------

K, DIM = 3, 16
MEANS = np.random.default_rng(1).normal(0, 0.6, (K, DIM))


def _sample(rng, prior, n, offset=0.0):
    y = rng.choice(K, n, p=prior)
    return MEANS[y] + rng.normal(0, 1, (n, DIM)) + offset, y


def _posterior(x, prior):
    """Bayes posteriors of the Gaussian classes under `prior`: a calibrated model trained at that prior."""
    ll = -0.5 * ((x[:, None, :] - MEANS[None]) ** 2).sum(-1) + np.log(prior)
    p = np.exp(ll - ll.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def source():
    rng = np.random.default_rng(0)
    x, y = _sample(rng, np.array([0.3, 0.5, 0.2]), 1500)
    probs = _posterior(x, np.full(K, 1 / K))   # trained with a class-weighted loss: equal priors
    return x, y, probs


def _estimate(source, target_prior, offset=0.0, n=1200, seed=2):
    x, y, probs = source
    xt, yt = _sample(np.random.default_rng(seed), np.array(target_prior), n, offset)
    pt = _posterior(xt, np.full(K, 1 / K))
    est = sh.estimate_shift(classes=list("abc"), val_y=y, val_probs=probs, val_pred=probs.argmax(1), target_probs=pt,
                            target_pred=pt.argmax(1), val_features=x, target_features=xt, n_boot=50,
                            n_permutations=100)
    return est, sh.compare_with_truth(est, yt, pt.argmax(1))


@pytest.mark.parametrize("target_prior", [(0.6, 0.2, 0.2), (0.1, 0.1, 0.8), (0.34, 0.33, 0.33)])
def test_prevalence_and_accuracy_under_pure_label_shift(source, target_prior):
    est, truth = _estimate(source, target_prior)
    assert truth["prevalence_error"]["em"] < 0.04 and truth["prevalence_error"]["bbse"] < 0.05
    for method in ("em", "bbse"):   # the 95% CIs hold the truth
        for c, true in truth["prevalence"].items():
            lo, hi = est["prevalence"][method][c]["ci"]
            assert lo - 0.01 <= true <= hi + 0.01, (method, c, lo, true, hi)
    assert abs(truth["accuracy_error"]["atc"]) < 0.04 and abs(truth["accuracy_error"]["label_shift"]) < 0.04
    assert not est["domain"]["distinguishable"] and est["reliability"]["reliable"]


def test_covariate_shift_is_flagged_and_no_accuracy_is_given_as_the_answer(source):
    est, _ = _estimate(source, (0.3, 0.5, 0.2), offset=0.4)
    assert est["domain"]["distinguishable"] and est["domain"]["auc"] > 0.7 and est["domain"]["p_value"] < 0.02
    assert est["reliability"]["reliable"] is False
    h = est["headline"]
    assert h["kind"] in ("range", "not_shown") and "accuracy" not in h and h["label_budget"] >= 50
    findings = sh.shift_findings(est)
    assert "cannot be estimated without labels" in findings[0] or "not been shown to work" in findings[0]
    assert f"--label-budget {h['label_budget']}" in findings[0]


def test_unflagged_target_gets_atc_as_its_headline(source):
    est, truth = _estimate(source, (0.6, 0.2, 0.2))
    assert est["headline"] == {"kind": "estimate", "accuracy": est["accuracy"]["atc"], "method": "atc",
                               "domain_auc": est["domain"]["auc"]}
    assert sh.shift_findings(est)[0].startswith("Expected accuracy on the target: ")


def _flagged(auc, values=(0.95, 0.97)):
    acc = dict(zip(sh.ACCURACY_ESTIMATORS, [values[0], values[1], values[1], values[1]]))
    return {"classes": ["a", "b"], "accuracy": acc, "domain": {"auc": auc, "distinguishable": True}}


def test_the_range_widens_with_the_distance_from_validation():
    near, far = sh.accuracy_headline(_flagged(0.65)), sh.accuracy_headline(_flagged(0.85))
    assert near["kind"] == far["kind"] == "range"
    assert near["low"] == pytest.approx(0.95 - sh.RANGE_WIDEN * 0.3) and near["high"] == 1.0
    assert far["low"] < near["low"] and far["low"] == pytest.approx(0.95 - sh.RANGE_WIDEN * 0.7)
    gone = sh.accuracy_headline(_flagged(sh.NOT_SHOWN_AUC))
    assert gone["kind"] == "not_shown" and gone["low"] is None
    assert "has not been shown to work" in sh.headline_text(gone)
    no_domain = sh.accuracy_headline({**_flagged(0.9), "domain": None})
    assert no_domain["kind"] == "not_shown"


def test_doc_follows_the_target_confidence():
    val_conf, val_correct = np.array([0.9, 0.9, 0.8, 0.8]), np.array([1, 1, 1, 0.0])
    assert sh.doc(val_conf, val_correct, np.array([0.85, 0.85])) == pytest.approx(0.75)
    assert sh.doc(val_conf, val_correct, np.array([0.65, 0.65])) == pytest.approx(0.55)


def test_bbse_inverts_the_confusion_matrix_exactly():
    # validation: class 0 always right; class 1 called 0 a quarter of the time
    val_y = np.array([0] * 4 + [1] * 4)
    val_pred = np.array([0, 0, 0, 0, 0, 1, 1, 1])
    # target predictions: 0.25 + 0.75 * 0.25 = 0.4375 predicted 0 when 75% are class 1
    target_pred = np.array([0] * 7 + [1] * 9)
    assert sh.bbse(val_y, val_pred, target_pred, 2) == pytest.approx([0.25, 0.75])


def test_adapt_prior_by_hand():
    probs = np.array([[0.5, 0.5], [0.8, 0.2]])
    adapted = sh.adapt_prior(probs, np.array([0.5, 0.5]), np.array([0.2, 0.8]))
    assert adapted[0] == pytest.approx([0.2, 0.8])
    assert adapted[1] == pytest.approx([0.8 * 0.2 / (0.8 * 0.2 + 0.2 * 0.8), 0.5])


def test_atc_by_hand():
    val_conf = np.array([0.6, 0.7, 0.8, 0.9, 0.95])
    val_correct = np.array([0, 1, 1, 1, 1.0])          # 20% wrong: threshold at the 20% quantile of confidence
    assert sh.atc(val_conf, val_correct, np.array([0.5, 0.55, 0.9, 0.99])) == pytest.approx(0.5)


def test_parse_adapt():
    assert parse_adapt("prior,bn") == ["prior", "bn"] and parse_adapt("all") == ["prior", "bn", "bn+prior"]
    assert parse_adapt(None) == []
    with pytest.raises(TransferlabError, match="--adapt"):
        parse_adapt("tent")


# --- external sets end to end ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory, xray_dir):
    return features_run(tmp_path_factory, xray_dir, "shift-run")


@pytest.fixture(scope="module")
def external(tmp_path_factory):
    return external_hospital(tmp_path_factory, "hospital_b", patients_per_class=8, seed=7)


@pytest.fixture(autouse=True)
def _fewer_resamples(monkeypatch):
    fewer_resamples(monkeypatch, 40)


def _quick(**kw):
    return dict(progress=False, n_boot=50, **kw)


def test_class_folders_scored_whole_with_files_written(run, external):
    result = evaluate(run.path, data=external, **_quick())
    n = sum(1 for _ in external.rglob("*.jpeg"))
    assert result["n"] == n == 32 and result["scored"] == "every image (no carving)" and result["has_labels"]
    assert result["layout"] == "class folders" and result["name"] == "hospital_b"
    saved = json.loads((run.path / "eval-hospital_b.json").read_text())
    assert saved["n"] == n and "shift" in saved and saved["at_threshold"]["threshold"] == run.read_metrics()["threshold"]
    rows = read_csv(run.path / "predictions-hospital_b.csv")
    assert len(rows) == n and {"prob_NORMAL", "prob_PNEUMONIA", "predicted", "label"} <= set(rows[0])
    # accuracy in the JSON is the accuracy of the written decisions
    acc = np.mean([r["predicted"] == r["label"] for r in rows])
    assert result["at_threshold"]["accuracy"] == pytest.approx(acc)
    assert result["truth"]["prevalence"]["PNEUMONIA"] == pytest.approx(0.5)


@pytest.mark.parametrize("layout", ["test-only", "all-splits", "manifest", "unlabelled"])
def test_every_layout(run, external, tmp_path, layout):
    root = tmp_path / "set"
    if layout == "test-only":
        shutil.copytree(external, root / "test")
        expect = dict(n=32, has_labels=True, name="set")
    elif layout == "all-splits":
        for split in ("train", "val", "test"):
            shutil.copytree(external, root / split)
        expect = dict(n=96, has_labels=True, name="set")
    elif layout == "manifest":
        shutil.copytree(external, root)
        files = sorted(root.rglob("*.jpeg"))[::2]
        (root / "list.csv").write_text("path,label\n" + "".join(f"{f.relative_to(root)},{f.parent.name.lower()}\n"
                                                                 for f in files))
        expect = dict(n=16, has_labels=True, name="set")
    else:
        root.mkdir()
        for f in external.rglob("*.jpeg"):
            shutil.copy(f, root / f.name)
        expect = dict(n=32, has_labels=False, name="set")
    result = evaluate(run.path, data=root, manifest="list.csv" if layout == "manifest" else None, **_quick())
    assert {k: result[k] for k in expect} == expect
    assert "shift" in result and result["shift"]["n_target"] == expect["n"]
    assert ("accuracy" in result) == expect["has_labels"]


def test_no_estimate_reads_the_target_labels(run, external):
    """The same images in the same order with their labels shuffled: the truth changes, no estimate does."""
    files = sorted(external.rglob("*.jpeg"))
    labels = [f.parent.name for f in files]
    shuffled = np.random.default_rng(0).permutation(labels)
    for name, column in (("true.csv", labels), ("shuffled.csv", shuffled)):
        (external / name).write_text("path,label\n" + "".join(f"{f.relative_to(external)},{c}\n"
                                                              for f, c in zip(files, column)))
    a = evaluate(run.path, data=external, manifest="true.csv", name="a", **_quick())
    b = evaluate(run.path, data=external, manifest="shuffled.csv", name="b", **_quick())
    for key in ("prevalence", "accuracy", "domain", "calibration", "reliability"):
        assert a["shift"][key] == b["shift"][key], key
    assert a["truth"]["accuracy"] != b["truth"]["accuracy"]


def test_adaptations_reported_beside_the_plain_result(run, external):
    result = evaluate(run.path, data=external, adapt="prior,bn,bn+prior", **_quick())
    assert set(result["adapted"]) == {"prior", "bn", "bn+prior"}
    bn = result["adapted"]["bn"]
    assert bn["batchnorm_layers"] > 10 and "accuracy" in bn
    prior = result["adapted"]["prior"]["prior"]
    assert sum(prior.values()) == pytest.approx(1)
    rows = read_csv(run.path / "predictions-hospital_b.csv")
    assert {"predicted_prior", "prob_PNEUMONIA_bn", "predicted_bn+prior"} <= set(rows[0])
    # BatchNorm re-estimated on these images changes the probabilities, and the saved model stays as it was
    assert any(r["prob_PNEUMONIA"] != r["prob_PNEUMONIA_bn"] for r in rows)
    again = evaluate(run.path, data=external, name="again", **_quick())
    assert again["roc_auc"] == result["roc_auc"]


def test_own_split_unchanged_and_cli_summary(run, external, capsys):
    own = evaluate(run.path, split="test", **_quick())
    assert own["n"] == run.read_metrics()["test"]["n"] and own["roc_auc"] == pytest.approx(run.read_metrics()["test"]["roc_auc"])
    assert (run.path / "eval-test.json").exists()
    code = cli.main(["evaluate", str(run.path), "--data", str(external), "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and len(out.splitlines()) < 15
    assert "every image (no carving)" in out and "eval-hospital_b.json" in out and "estimated" in out


def test_unknown_classes_are_scored_as_unlabelled(run, external, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(external / "NORMAL", other / "NORMAL")
    shutil.copytree(external / "PNEUMONIA", other / "COVID")
    result = evaluate(run.path, data=other, **_quick())
    assert not result["has_labels"] and "COVID" in result["notes"][0] and "accuracy" not in result


def test_missing_split_folder_is_one_line(run, external, capsys):
    code = cli.main(["evaluate", str(run.path), "--data", str(external), "--split", "test", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no test/ folder" in err


def test_unreadable_images_stop_evaluate_as_they_stop_train_unless_skip_bad(run, external, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(external, broken)
    (broken / "NORMAL" / "corrupt.jpeg").write_bytes(b"not a jpeg")
    code = cli.main(["evaluate", str(run.path), "--data", str(broken), "--no-shift", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "corrupt.jpeg" in err and "--skip-bad" in err
    assert not (run.path / "eval-broken.json").exists()
    code = cli.main(["evaluate", str(run.path), "--data", str(broken), "--no-shift", "--no-progress", "--skip-bad"])
    assert code == 0
    saved = json.loads((run.path / "eval-broken.json").read_text())
    assert saved["n"] == 32 and saved["n_unreadable"] == 1 and "corrupt.jpeg" in saved["unreadable"][0][0]


def test_split_check_and_external_sets_use_the_one_domain_test(monkeypatch):
    """analysis.splits (train vs test of a run) and analysis.shift (validation vs an external set) both call
    analysis.domain: one rule for "distinguishable"."""
    from transferlab.analysis import splits

    calls = []
    original = domain.domain_classifier

    def spy(source, target, **kw):
        calls.append((source.shape, target.shape))
        return original(source, target, **kw)

    monkeypatch.setattr(splits, "domain_classifier", spy)
    monkeypatch.setattr(sh, "domain_classifier", spy)
    monkeypatch.setattr(domain, "N_PERMUTATIONS", 100)   # p can reach 1/101 < DOMAIN_P_FLAG
    rng = np.random.default_rng(0)
    stats = {s: {"mean": rng.normal(m, 0.05, 60), "contrast": rng.normal(0.2, 0.02, 60),
                 "width": np.full(60, 224.0), "height": np.full(60, 224.0)}
             for s, m in (("train", 0.4), ("val", 0.4), ("test", 0.6))}
    found = splits.distribution_shift(stats)
    assert found["domain"]["distinguishable"] and set(found["ks"]) == {"train/val", "train/test", "val/test"}
    assert found["ks"]["train/test"]["mean"]["p_value"] < 1e-6 and found["ks"]["train/val"]["width"]["ks"] == 0
    finding = splits.data_findings({}, {"duplicate_groups_across_splits": 0, "files_hashed": 1,
                                        "duplicate_groups": 0, "patient_overlap": {}, "patients": {}},
                                   found, {"different": [], "same_test_images": True, "runs": 1, "n_test": 60}, None)
    assert any("the rule external sets are flagged by" in f for f in finding)
    features = rng.normal(size=(80, 8))
    sh.estimate_shift(classes=["a", "b"], val_y=np.r_[np.zeros(40, int), np.ones(40, int)],
                      val_probs=np.full((80, 2), 0.5), val_pred=np.zeros(80, int), target_probs=np.full((80, 2), 0.5),
                      target_pred=np.zeros(80, int), val_features=features, target_features=features + 1, n_boot=2)
    assert [c[0] for c in calls] == [(60, 4), (80, 8)]


def test_predict_with_adaptation(run, external, tmp_path, capsys):
    code = cli.main(["predict", str(run.path), str(external), "--adapt", "prior,bn", "--out", str(tmp_path / "p.csv"),
                     "--no-progress"])
    assert code == 0
    rows = read_csv(tmp_path / "p.csv")
    assert len(rows) == 32 and {"predicted", "predicted_prior", "predicted_bn", "prob_PNEUMONIA_bn"} <= set(rows[0])
    plain = evaluate(run.path, data=external, name="plain", shift=False, **_quick())
    # the plain decisions are those of evaluate, at the same validation threshold
    decisions = {r["file"]: r["predicted"] for r in read_csv(run.path / "predictions-plain.csv")}
    assert sorted(decisions.values()) == sorted(r["predicted"] for r in rows) and plain["n"] == 32
