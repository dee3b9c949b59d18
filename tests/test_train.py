"""End to end: both strategies train, evaluate and write a complete run directory."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import interrupt_training
from safetensors.torch import load_file

from transferlab import cli
from transferlab.config import STRATEGY_DEFAULTS
from transferlab.analysis.external import evaluate
from transferlab.evaluation import load_model
from transferlab.metrics import choose_threshold
from transferlab.models.heads import create_model
from transferlab.rundir import read_csv
from transferlab.training import train

FAST = dict(image_size=64, batch_size=16, progress=False, val_fraction=0.25)


def test_features_strategy_end_to_end(xray_dir, tmp_path):
    run = train(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=15,
                out=str(tmp_path / "run"), **FAST)
    for path in (run.config, run.splits, run.history, run.metrics, run.predictions, run.weights):
        assert path.exists(), path
    metrics = run.read_metrics()
    assert metrics["threshold_chosen_on"] == "val" and metrics["positive_class"] == "PNEUMONIA"
    # predictions.csv: one probability per class, and the threshold is the one its validation rows give
    rows = read_csv(run.predictions)
    assert list(rows[0]) == ["split", "file", "label", "prob_NORMAL", "prob_PNEUMONIA", "predicted"]
    for r in rows:
        assert float(r["prob_NORMAL"]) + float(r["prob_PNEUMONIA"]) == pytest.approx(1, abs=1e-6)
        assert r["predicted"] == ("PNEUMONIA" if float(r["prob_PNEUMONIA"]) >= metrics["threshold"] else "NORMAL")
    val = [r for r in rows if r["split"] == "val"]
    assert metrics["threshold"] == pytest.approx(choose_threshold(
        [r["label"] == "PNEUMONIA" for r in val], [float(r["prob_PNEUMONIA"]) for r in val], "youden"), abs=1e-9)
    assert len(val) == metrics["val"]["n"]
    # the synthetic task is easy: genuine ImageNet features separate the classes
    assert metrics["val"]["roc_auc"] > 0.9
    assert set(metrics) >= {"train", "val", "test"}
    for key in ("loss", "accuracy", "balanced_accuracy", "precision", "recall", "specificity", "f1",
                "roc_auc", "pr_auc", "confusion_matrix"):
        assert key in metrics["test"]
    assert metrics["trainable_params"] == 1280 * 2 + 2      # only the new head trains
    history = read_csv(run.history)
    assert len(history) == metrics["epochs_run"] and {"train_loss", "val_loss", "val_acc", "lr", "seconds"} <= set(history[0])
    config = run.read_config()
    assert config["data"]["fingerprint"] and config["environment"]["torch"] == torch.__version__


def test_features_backbone_untouched(xray_dir, tmp_path):
    """Fixed feature extractor: backbone weights *and BatchNorm running statistics* equal the ImageNet ones.
    A cache of its own: features found in a cache would skip the backbone pass this test is about."""
    run = train(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=3,
                out=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"), **FAST)
    assert list((tmp_path / "cache" / "features").glob("*.npy"))   # the backbone did run here
    trained = load_file(str(run.weights))
    pretrained = create_model("efficientnet_lite0", 2).state_dict()
    backbone_keys = [k for k in pretrained if k.startswith("backbone.")]
    assert any("running_mean" in k for k in backbone_keys)
    for k in backbone_keys:
        assert torch.equal(trained[k], pretrained[k]), k
    assert not torch.equal(trained["head.weight"], pretrained["head.weight"])


def test_finetune_end_to_end_and_evaluate(xray_dir, tmp_path):
    run = train(data=str(xray_dir), model="mobilenet_v3_small", weights="none", strategy="finetune", epochs=2,
                out=str(tmp_path / "run"), **FAST)
    metrics = run.read_metrics()
    assert metrics["trainable_params"] == metrics["total_params"]
    assert metrics["epochs_run"] == 2
    # evaluate() rebuilds the same splits and reproduces the run's own test metrics
    result = evaluate(run.path, split="test", progress=False)
    assert result["n"] == metrics["test"]["n"]
    assert result["roc_auc"] == pytest.approx(metrics["test"]["roc_auc"], abs=1e-6)
    model, config = load_model(run.path)
    assert config["model"]["name"] == "mobilenet_v3_small"


def test_same_seed_same_result(xray_dir, tmp_path):
    """Each run computes its own features (separate caches), so the whole run must be deterministic."""
    a, b = (train(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=3,
                  out=str(tmp_path / name), cache_dir=str(tmp_path / f"cache-{name}"), **FAST) for name in "ab")
    assert a.splits.read_text() == b.splits.read_text()
    assert a.predictions.read_text() == b.predictions.read_text()
    ma, mb = a.read_metrics(), b.read_metrics()
    assert ma["val"] == mb["val"] and ma["test"] == mb["test"]
    assert load_file(str(a.weights))["head.weight"].equal(load_file(str(b.weights))["head.weight"])


def test_validation_split_is_patient_disjoint_on_real_data(real_subset, tmp_path):
    run = train(data=str(real_subset), model="efficientnet_lite0", strategy="features", epochs=2,
                out=str(tmp_path / "run"), test_fraction=0.2, **FAST)
    rows = read_csv(run.splits)
    patients = {split: {r["patient"] for r in rows if r["split"] == split} for split in ("train", "val", "test")}
    assert patients["val"] and patients["test"]
    assert not patients["train"] & patients["val"]
    assert not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    assert cli.main(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "missing" in err and "\n" not in err
    assert cli.main(["train", "--data", str(tmp_path), "--model", "resnet19", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert "resnet18" in err and "\n" not in err


def test_cli_train_runs(xray_dir, tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = cli.main(["train", "--data", str(xray_dir), "--model", "efficientnet_lite0", "--strategy", "features",
                     "--epochs", "2", "--image-size", "64", "--no-progress", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    val = metrics["val"]["at_threshold"]
    assert (f"  val: accuracy {val['accuracy']:.3f}  balanced {val['balanced_accuracy']:.3f}  AUC "
            f"{metrics['val']['roc_auc']:.3f}  (n={val['n']}, threshold {metrics['threshold']:.3f} chosen on val)") in printed
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert settings["epochs"] == 2 and settings["strategy"] == "features"
    # a finished run is never overwritten silently
    assert cli.main(["train", "--data", str(xray_dir), "--epochs", "2", "--out", str(out)]) == 2


# --- the head on cached features: whole epochs in one Lightning step, same optimisation --------------------

def test_features_epoch_is_minibatch_steps_with_the_cosine_schedule(xray_dir, tmp_path, one_thread):
    import math

    from transferlab.engine import load_checkpoint

    run = train(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=4, patience=10,
                out=str(tmp_path / "run"), **{**FAST, "batch_size": 8})
    views = run.read_config()["settings"]["feature_views"]   # the head trains on every view of every image
    n_train = views * sum(1 for r in read_csv(run.splits) if r["split"] == "train")
    ckpt = load_checkpoint(run.checkpoints / "last.ckpt")
    steps = {int(state["step"]) for state in ckpt["optimizer_states"][0]["state"].values()}
    per_epoch = n_train // 8 + (n_train % 8 > 1)          # mini-batches of 8, no last batch of one
    assert steps == {4 * per_epoch}, (steps, n_train)
    lrs = [float(r["lr"]) for r in read_csv(run.history)]
    lr = STRATEGY_DEFAULTS["features"]["lr"]
    assert lrs == pytest.approx([lr * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)])
    assert train(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=2, balance="sampler",
                 out=str(tmp_path / "sampler"), **FAST).read_metrics()["epochs_run"] == 2


def test_features_interrupted_and_resumed_is_bit_identical(xray_dir, tmp_path, monkeypatch, one_thread):
    settings = dict(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=5, patience=10,
                    lr=0.01, seed=2, **FAST)
    reference = train(**settings, out=str(tmp_path / "reference"))
    uninterrupt = interrupt_training(monkeypatch, epoch=3)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(**settings, out=str(tmp_path / "run"))
    uninterrupt()
    resumed = train(**settings, out=str(tmp_path / "run"), resume=True)
    assert resumed.weights.read_bytes() == reference.weights.read_bytes()
    history = [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(resumed.history)]
    assert history == [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(reference.history)]


def test_threads_follow_the_free_cpus(monkeypatch):
    from transferlab import runtime

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(runtime, "free_cpus", lambda: 0.6)      # another job holds 1.4 of 2 CPUs
        assert runtime.choose_threads() == 1 and runtime.choose_threads(2) == 2
        monkeypatch.setattr(runtime, "free_cpus", lambda: 1.8)
        assert runtime.choose_threads() == 2
        with runtime.cpu_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
