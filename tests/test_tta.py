"""Test-time augmentation (--tta N) at evaluate and predict: the mean over N views, beside the plain result."""
from __future__ import annotations

import numpy as np
import pytest

from transferlab import cli
from transferlab.analysis.external import evaluate
from transferlab.data.images import load_images
from transferlab.evaluation import load_model, probabilities_and_features, tta_probabilities
from transferlab.metrics import choose_threshold
from transferlab.rundir import read_csv
from transferlab.runtime import resolve_device
from transferlab.training import train


@pytest.fixture(scope="module")
def run(tmp_path_factory, xray_dir):
    out = tmp_path_factory.mktemp("tta-run") / "run"
    return train(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=5, out=str(out),
                 image_size=64, batch_size=16, progress=False, val_fraction=0.25)


def _split(run, name):
    config = run.read_config()
    rows = [r for r in read_csv(run.splits) if r["split"] == name]
    root = config["data"]["root"]
    pixels = load_images([f"{root}/{r['file']}" for r in rows], config["model"]["image_size"], progress=False).pixels
    labels = np.array([config["data"]["classes"].index(r["label"]) for r in rows])
    return pixels, labels


def test_views_are_seeded_and_one_view_is_the_plain_model(run):
    model, config = load_model(run.path)
    pixels, _ = _split(run, "test")
    kw = dict(mean=config["model"]["mean"], std=config["model"]["std"], device=resolve_device("cpu"))
    plain = probabilities_and_features(model, pixels, **kw)[0]
    np.testing.assert_allclose(tta_probabilities(model, pixels, views=1, **kw), plain)
    four = tta_probabilities(model, pixels, views=4, **kw)
    np.testing.assert_array_equal(four, tta_probabilities(model, pixels, views=4, **kw))
    assert not np.allclose(four, plain) and np.allclose(four.sum(1), 1)


def test_evaluate_reports_tta_beside_the_plain_result(run):
    plain = evaluate(run.path, split="test", progress=False, n_boot=50, shift=False)
    result = evaluate(run.path, split="test", progress=False, n_boot=50, shift=False, tta=4)
    assert result["roc_auc"] == plain["roc_auc"] and "tta" not in plain
    tta = result["tta"]
    assert tta["views"] == 4 and {"accuracy", "roc_auc", "at_threshold", "ci"} <= set(tta)
    # its threshold is the run's method applied to validation's 4-view probabilities, never to test
    model, config = load_model(run.path)
    pixels, labels = _split(run, "val")
    val = tta_probabilities(model, pixels, views=4, mean=config["model"]["mean"], std=config["model"]["std"],
                            device=resolve_device("auto"))
    pos = config["data"]["classes"].index(run.read_metrics()["positive_class"])
    expected = choose_threshold((labels == pos).astype(int), val[:, pos], config["settings"]["threshold_method"])
    assert tta["threshold"] == pytest.approx(expected) and tta["threshold_chosen_on"] == "val, 4-view probabilities"
    rows = read_csv(run.path / "predictions-test.csv")
    assert {"prob_PNEUMONIA_tta", "predicted_tta"} <= set(rows[0])
    assert np.mean([r["predicted_tta"] == r["label"] for r in rows]) == pytest.approx(tta["at_threshold"]["accuracy"])


def test_cli_evaluate_and_predict_with_tta(run, xray_dir, tmp_path, capsys):
    assert cli.main(["evaluate", str(run.path), "--tta", "3", "--no-shift", "--no-progress"]) == 0
    assert "TTA x3" in capsys.readouterr().out
    images = sorted((xray_dir / "train" / "NORMAL").glob("*"))[:3]
    out = tmp_path / "p.csv"
    assert cli.main(["predict", str(run.path), *map(str, images), "--tta", "3", "--out", str(out), "--no-progress"]) == 0
    rows = read_csv(out)
    assert len(rows) == 3 and {"prob_NORMAL_tta", "predicted_tta", "threshold_tta"} <= set(rows[0])


def test_zero_views_fail_while_the_arguments_are_parsed(run, capsys):
    before = sorted(run.path.iterdir())
    with pytest.raises(SystemExit) as exit_:
        cli.main(["evaluate", str(run.path), "--tta", "0", "--no-shift", "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2
    assert err[-1] == "transferlab evaluate: error: argument --tta: --tta must be at least 1, not 0"
    assert sorted(run.path.iterdir()) == before   # nothing scored, nothing written


def test_validation_views_are_computed_once_for_val_then_test(run, monkeypatch):
    """A study scores validation with --tta, then test, whose threshold needs validation's views again: the
    second time they come from memory, and the result is the same as computed afresh."""
    import transferlab.evaluation
    from transferlab.analysis import external

    fresh = evaluate(run.path, split="test", progress=False, n_boot=20, shift=False, tta=3)
    external._TTA_SEEN.clear()
    calls = []

    def counting(model, pixels, **kwargs):
        calls.append(len(pixels))
        return tta_probabilities(model, pixels, **kwargs)

    monkeypatch.setattr(transferlab.evaluation, "tta_probabilities", counting)
    val = evaluate(run.path, split="val", progress=False, n_boot=20, shift=False, tta=3)
    test = evaluate(run.path, split="test", progress=False, n_boot=20, shift=False, tta=3)
    assert calls == [val["n"], test["n"]]   # validation augmented once, then test
    assert test["tta"]["threshold"] == fresh["tta"]["threshold"] and test["tta"]["roc_auc"] == fresh["tta"]["roc_auc"]
