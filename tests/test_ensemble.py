"""Ensembles of finished runs: K best on validation, mean probabilities, threshold chosen on validation."""
from __future__ import annotations

import numpy as np
import pytest

from transferlab import cli
from transferlab.ensembles import ensemble, rank_runs
from transferlab.evaluation import split_metrics
from transferlab.metrics import choose_threshold
from transferlab.prediction import predict
from transferlab.rundir import read_csv
from transferlab.training import train


@pytest.fixture(scope="module")
def runs(tmp_path_factory, xray_dir):
    root = tmp_path_factory.mktemp("ensemble-runs")
    return [train(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=4, seed=seed,
                  split_seed=0, out=str(root / f"seed{seed}"), image_size=64, batch_size=16, progress=False,
                  val_fraction=0.25)
            for seed in range(3)]


def _probs(run, split, classes):
    rows = sorted((r for r in read_csv(run.predictions) if r["split"] == split), key=lambda r: r["file"])
    return rows, np.array([[float(r[f"prob_{c}"]) for c in classes] for r in rows])


def test_mean_of_the_best_on_validation(runs, tmp_path):
    out = ensemble([r.path for r in runs], tmp_path / "top2", k=2)
    config, metrics = out.read_config(), out.read_metrics()
    best = rank_runs([r.path for r in runs])[:2]
    assert [m["val_roc_auc"] for m in config["ensemble"]["members"]] == \
        [b.read_metrics()["val"]["roc_auc"] for b in best]
    classes = metrics["classes"]
    pos = classes.index(metrics["positive_class"])
    for split in ("val", "test"):
        rows, mine = _probs(out, split, classes)
        expected = np.mean([_probs(b, split, classes)[1] for b in best], axis=0)
        np.testing.assert_allclose(mine, expected, rtol=1e-6)
        labels = np.array([classes.index(r["label"]) for r in rows])
        if split == "val":
            threshold = choose_threshold((labels == pos).astype(int), mine[:, pos], "youden")
            assert metrics["threshold"] == pytest.approx(threshold)
        got = metrics[split]["at_threshold"]["accuracy"]
        assert got == pytest.approx(split_metrics(labels, mine, pos, metrics["threshold"], classes)["at_threshold"]["accuracy"])
    assert {"only_a_correct", "only_b_correct", "p_value"} <= set(metrics["vs_best_run"]["test_mcnemar"])


def test_predict_with_an_ensemble_averages_its_members(runs, tmp_path, xray_dir):
    out = ensemble([r.path for r in runs], tmp_path / "top3", k=3)
    images = sorted((xray_dir / "test").rglob("*.jpeg"))[:4]
    rows = predict(out.path, images)
    members = [predict(r.path, images) for r in runs]
    for i, row in enumerate(rows):
        assert row["prob_PNEUMONIA"] == pytest.approx(np.mean([m[i]["prob_PNEUMONIA"] for m in members]))
        assert row["threshold"] == out.read_metrics()["threshold"]


def test_cli_and_one_line_errors(runs, tmp_path, capsys, xray_dir):
    paths = [str(r.path) for r in runs]
    assert cli.main(["ensemble", *paths, "--k", "2", "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "McNemar" in out and "test:" in out.replace(" test:", "test:")
    assert cli.main(["ensemble", *paths, "--k", "5", "--out", str(tmp_path / "f")]) == 2
    assert "ensemble of 5 runs" in capsys.readouterr().err
    assert cli.main(["ensemble", *paths, "--k", "2"]) == 2
    assert "--out is required" in capsys.readouterr().err
    other = train(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=2, seed=0,
                  split_seed=5, out=str(tmp_path / "other-split"), image_size=64, batch_size=16, progress=False,
                  val_fraction=0.25)
    assert cli.main(["ensemble", paths[0], str(other.path), "--k", "2", "--out", str(tmp_path / "g")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different" in err


def test_evaluate_an_ensemble_on_another_set_scores_its_members_mean(runs, tmp_path, xray_dir, capsys):
    from transferlab.analysis.external import evaluate
    from transferlab.rundir import RunDir

    out = ensemble([r.path for r in runs], tmp_path / "top2", k=2)
    result = evaluate(out.path, data=xray_dir / "test", name="other", n_boot=50, progress=False)
    members = [RunDir(m) for m in out.members()]
    theirs = [{r["file"]: float(r["prob_PNEUMONIA"]) for r in read_csv(m.path / "predictions-other.csv")}
              for m in members]   # each member evaluated on the set, as a run is
    mine = read_csv(out.path / "predictions-other.csv")
    assert len(mine) == result["n"] == len(list((xray_dir / "test").rglob("*.jpeg")))
    for row in mine:
        assert float(row["prob_PNEUMONIA"]) == pytest.approx(np.mean([t[row["file"]] for t in theirs]))
    metrics = out.read_metrics()
    classes, threshold = metrics["classes"], metrics["threshold"]
    labels = np.array([classes.index(r["label"]) for r in mine])
    probs = np.array([[float(r[f"prob_{c}"]) for c in classes] for r in mine])
    expected = split_metrics(labels, probs, classes.index("PNEUMONIA"), threshold, classes)
    assert result["threshold"] == threshold and result["members"] == [str(m.path) for m in members]
    assert result["at_threshold"]["accuracy"] == pytest.approx(expected["at_threshold"]["accuracy"])
    assert result["roc_auc"] == pytest.approx(expected["roc_auc"]) and "ci" in result
    assert out.read_evaluation("other")["n"] == result["n"]

    assert cli.main(["evaluate", str(out.path), "--data", str(xray_dir / "test"), "--name", "other"]) == 0
    assert "written:" in capsys.readouterr().out
    assert cli.main(["evaluate", str(out.path), "--adapt", "prior"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--adapt" in err and "member" in err
