"""Three classes end to end on real images: the bundled sample as NORMAL / BACTERIA / VIRUS (scripts/make_3class.py)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from transferlab import cli
from transferlab.demo import sample_path
from transferlab.analysis.external import evaluate
from transferlab.exporting import export
from transferlab.prediction import predict
from transferlab.rundir import RunDir, read_csv, write_csv
from transferlab.training import train

CLASSES = ["BACTERIA", "NORMAL", "VIRUS"]
SETTINGS = dict(model="efficientnet_lite0", strategy="features", epochs=4, image_size=64, max_images=60)

pytestmark = pytest.mark.usefixtures("one_thread")


def _make_3class():
    path = Path(__file__).resolve().parents[1] / "scripts" / "make_3class.py"
    spec = importlib.util.spec_from_file_location("make_3class", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "three.csv"
    write_csv(path, _make_3class().three_class_rows(sample_path()))
    return path


@pytest.fixture(scope="module")
def run(manifest, tmp_path_factory) -> RunDir:
    return train(data=str(sample_path()), manifest=str(manifest), progress=False,
                 out=str(tmp_path_factory.mktemp("run3") / "run"), **SETTINGS)


def test_make_3class_labels_from_file_names(manifest):
    rows = {r["path"]: r for r in read_csv(manifest)}
    assert rows["val/PNEUMONIA/person1030_virus_1722.jpeg"] == {
        "path": "val/PNEUMONIA/person1030_virus_1722.jpeg", "label": "VIRUS", "patient_id": "person1030", "split": "val"}
    assert rows["val/PNEUMONIA/person1001_bacteria_2932.jpeg"]["label"] == "BACTERIA"
    assert rows["test/NORMAL/IM-0185-0001.jpeg"]["label"] == "NORMAL"
    counts = {}
    for r in rows.values():
        counts[r["split"], r["label"]] = counts.get((r["split"], r["label"]), 0) + 1
    # the sample: train 120 NORMAL / 120 bacteria / 60 virus, val 40 / 35 / 25, test 60 / 51 / 39
    assert counts == {("train", "NORMAL"): 120, ("train", "BACTERIA"): 120, ("train", "VIRUS"): 60,
                      ("val", "NORMAL"): 40, ("val", "BACTERIA"): 35, ("val", "VIRUS"): 25,
                      ("test", "NORMAL"): 60, ("test", "BACTERIA"): 51, ("test", "VIRUS"): 39}


def test_metrics_and_predictions_are_right_for_three_classes(run):
    metrics = run.read_metrics()
    assert metrics["classes"] == CLASSES
    # no binary leftovers: no positive class, no threshold, and nothing claims one was chosen on val
    assert (metrics["positive_class"], metrics["threshold"], metrics["threshold_chosen_on"]) == (None, None, None)
    assert metrics["decision"].startswith("argmax")
    rows = read_csv(run.predictions)
    assert list(rows[0]) == ["split", "file", "label", *(f"prob_{c}" for c in CLASSES), "predicted"]
    for split in ("train", "val", "test"):
        m, chosen = metrics[split], [r for r in rows if r["split"] == split]
        probs = np.array([[float(r[f"prob_{c}"]) for c in CLASSES] for r in chosen])
        y = np.array([CLASSES.index(r["label"]) for r in chosen])
        pred = np.array([CLASSES.index(r["predicted"]) for r in chosen])
        assert len(chosen) == m["n"] and np.allclose(probs.sum(1), 1, atol=1e-5)
        assert (pred == probs.argmax(1)).all()
        confusion = np.zeros((3, 3), int)
        np.add.at(confusion, (y, pred), 1)
        assert m["confusion_matrix"] == confusion.tolist()
        assert m["accuracy"] == pytest.approx(np.trace(confusion) / len(y))
        for c, name in enumerate(CLASSES):
            per = m["per_class"][name]
            assert per["recall"] == pytest.approx(confusion[c, c] / confusion[c].sum())
            negatives = confusion.sum() - confusion[c].sum()
            assert per["specificity"] == pytest.approx((negatives - (confusion[:, c].sum() - confusion[c, c])) / negatives)
            assert per["roc_auc"] == pytest.approx(roc_auc_score(y == c, probs[:, c]), abs=1e-6)
        assert m["roc_auc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-6)
        top2 = np.argsort(-probs, axis=1)[:, :2]
        assert m["top_k_accuracy"]["2"] == pytest.approx(np.mean([t in row for t, row in zip(y, top2)]))
        assert {"f1", "f1_weighted", "balanced_accuracy", "precision", "recall", "specificity"} <= set(m)
    history = read_csv(run.history)
    assert all(0 <= float(h["val_auc"]) <= 1 for h in history)


def test_cli_summary_and_positive_class(run, manifest, capsys):
    common = ["--data", str(sample_path()), "--manifest", str(manifest), "--no-progress",
              *(f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items())]
    assert cli.main(["train", *common, "--out", str(run.path), "--resume"]) == 0   # finished: prints its summary
    out = capsys.readouterr().out
    test = run.read_metrics()["test"]
    assert f" test: accuracy {test['accuracy']:.3f}  balanced {test['balanced_accuracy']:.3f}  macro F1 " \
           f"{test['f1']:.3f}  macro AUC {test['roc_auc']:.3f}  (n={test['n']}, argmax)" in out
    assert "threshold" not in out
    code = cli.main(["train", *common, "--positive-class", "VIRUS", "--out", str(run.path.parent / "other")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("error: --positive-class is only for two classes") and "\n" not in err


def test_evaluate_three_classes(run):
    result = evaluate(run.path, split="test", progress=False)
    assert result["n"] == 150 and result["decision"] == "argmax"   # the whole test split (no --max-images)
    assert set(result["per_class"]) == set(CLASSES) and np.array(result["confusion_matrix"]).sum() == 150


def test_predict_and_export_three_classes(run, tmp_path):
    import onnxruntime as ort

    from transferlab.data.images import load_images

    recorded = {r["file"]: r for r in read_csv(run.predictions) if r["split"] == "test"}
    files = sorted(recorded)[:4]
    rows = predict(run.path, [sample_path() / f for f in files], cam=True, out=tmp_path / "p.csv")
    for f, row in zip(files, rows):
        assert "threshold" not in row and Path(row["cam"]).exists()
        assert [row[f"prob_{c}"] for c in CLASSES] == pytest.approx(
            [float(recorded[f][f"prob_{c}"]) for c in CLASSES], abs=1e-5)
        assert row["predicted"] == recorded[f]["predicted"]
    path = export(run.path, "onnx", tmp_path / "m.onnx")
    meta = json.loads((tmp_path / "m.onnx.json").read_text())
    assert meta["output"]["classes"] == CLASSES and meta["output"]["shape"] == ["batch", 3]
    assert meta["positive_class"] is None and meta["threshold"] is None and "threshold_rule" not in meta
    assert meta["decision"].startswith("argmax")
    pixels = load_images([sample_path() / f for f in files], 64, progress=False).pixels
    x = np.broadcast_to(pixels, (len(files), 3, 64, 64)).astype(np.float32)
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
    want = np.array([[r[f"prob_{c}"] for c in CLASSES] for r in rows])
    assert np.abs(got - want).max() < 1e-4


def test_three_class_study_report(manifest, tmp_path):
    """A 3-class study end to end: every section of the report is written for three classes."""
    from transferlab.analysis import comparison
    from transferlab.study.config import StudyConfig
    from transferlab.study.run import run_study

    config = StudyConfig(data=str(sample_path()), models=["efficientnet_lite0", "mobilenet_v3_small"],
                         strategies=["features"], seeds=1, out=str(tmp_path / "s"), measure_catalog=False,
                         train=dict(manifest=str(manifest), **{k: v for k, v in SETTINGS.items()
                                                               if k not in ("model", "strategy")}),
                         model_overrides={"mobilenet_v3_small": {"weights": "none"}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(comparison, "N_BOOT", 50)
        out = run_study(config)
    md = (out / "report.md").read_text()
    for c in CLASSES:   # data section: one share per class; section E: recall per class
        assert f"{c} share" in md and f"{c} recall val / test" in md
    assert "positive class" not in md and "threshold (youden)" not in md
    analysis = json.loads((out / "analysis.json").read_text())
    run = RunDir(out / "runs" / "efficientnet_lite0-features-seed0")
    rows = [r for r in read_csv(run.predictions) if r["split"] == "test"]
    confused = analysis["per_run"][run.path.name]["confused"]
    true_pairs = {}
    for r in rows:
        if r["label"] != r["predicted"]:
            true_pairs[r["label"], r["predicted"]] = true_pairs.get((r["label"], r["predicted"]), 0) + 1
    assert {(x["true"], x["predicted"]): x["count"] for x in confused} == true_pairs
    table = {r["model"]: r for r in analysis["comparison"]}
    lo, hi = table["efficientnet_lite0"]["ci"]["accuracy"]
    assert lo <= table["efficientnet_lite0"]["accuracy"]["mean"] <= hi
    (test,) = analysis["mcnemar"]   # paired on right/wrong for any number of classes
    other = RunDir(out / "runs" / "mobilenet_v3_small-features-seed0")
    b = {r["file"]: r["predicted"] == r["label"] for r in read_csv(other.predictions) if r["split"] == "test"}
    a = {r["file"]: r["predicted"] == r["label"] for r in rows}
    assert test["only_a_correct"] == sum(a[f] and not b[f] for f in a)
    assert test["only_b_correct"] == sum(b[f] and not a[f] for f in a)


def test_label_budget_labels_and_recalibration_for_three_classes(run, manifest, tmp_path):
    """The sample's test images as an unlabelled folder: 30 chosen, labelled from the manifest, then whole-set
    estimates per class and a recalibrated rule (temperature and class biases: the argmax moves)."""
    import shutil

    truth = {Path(r["path"]).name: r["label"] for r in read_csv(manifest) if r["split"] == "test"}
    flat = tmp_path / "flat"
    flat.mkdir()
    for f in (sample_path() / "test").rglob("*.jpeg"):
        shutil.copy(f, flat / f.name)
    first = evaluate(run.path, data=flat, label_budget=30, progress=False, n_boot=20, shift=False)
    to_label = Path(first["label_budget"]["file"])
    rows = read_csv(to_label)
    assert len(rows) == 30
    for r in rows:
        r["label"] = truth[Path(r["path"]).name]
    write_csv(to_label, rows)
    result = evaluate(run.path, data=flat, labels=to_label, recalibrate=True, progress=False, n_boot=20, shift=False)
    block = result["labelled"]
    assert set(block["class_share"]) == set(CLASSES) and "sensitivity" not in block
    lo, hi = block["accuracy"]["ci"]
    measured = np.mean([truth[Path(r["file"]).name] == r["predicted"]
                        for r in read_csv(run.path / "predictions-flat.csv")])
    assert lo - 0.05 <= measured <= hi + 0.05
    assert result["recalibrated"]["threshold"] is None and len(result["recalibrated"]["bias"]) == 3
    assert result["next_step"]["verdict"] in ("usable", "recalibrate", "retrain", "not_shown")
