"""Data parallel on the CPU: 2 processes over gloo, started by Lightning from the command line as a user would."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from transferlab.engine import load_checkpoint
from transferlab.rundir import read_csv
from transferlab.training import train

FAST = dict(image_size=64, batch_size=16, val_fraction=0.25, progress=False, device="cpu")


def _cli_args(settings: dict) -> list[str]:
    args = []
    for key, value in settings.items():
        flag = "--" + key.replace("_", "-")
        if value is False and key == "progress":
            args.append("--no-progress")
        else:
            args += [flag, str(value)]
    return args


def _run(argv: list[str], cache: Path, timeout: float = 240) -> subprocess.CompletedProcess:
    """A command in its own session, so that a timeout ends Lightning's child process too."""
    env = {**os.environ, "TRANSFERLAB_CACHE": str(cache), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen([sys.executable, *argv], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"timed out: {argv}\n{err[-3000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def _without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_features_two_gloo_processes_equal_one_process(xray_dir, tmp_path):
    """features under DDP: each process extracts half of the images and all of them are gathered; every process
    then trains the head on all features with the same seed (equal by design), and validation/test are scored
    on all images, each once. Separate feature caches: each run extracts its own features."""
    settings = dict(model="efficientnet_lite0", strategy="features", epochs=4, **FAST)
    one = train(data=str(xray_dir), out=str(tmp_path / "one"), cache_dir=str(tmp_path / "cache-one"), **settings)
    done = _run(["-m", "transferlab", "train", "--data", str(xray_dir), "--out", str(tmp_path / "two"),
                 "--devices", "2", *_cli_args(settings)], tmp_path / "cache-two")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("run directory:") == 1             # only rank 0 reports
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    ref = one.read_metrics()
    for split in ("train", "val", "test"):
        assert two[split]["n"] == ref[split]["n"]
        for key in ("loss", "roc_auc", "accuracy"):
            assert two[split][key] == pytest.approx(ref[split][key], abs=1e-6), (split, key)
    assert two["threshold"] == pytest.approx(ref["threshold"], abs=1e-6)
    # equal up to float32 summation order (the thread count follows the CPUs free at the start of each run)
    two_history, one_history = (_without_seconds(read_csv(p)) for p in (tmp_path / "two" / "history.csv", one.history))
    assert len(two_history) == len(one_history)
    for a, b in zip(two_history, one_history):
        assert a.keys() == b.keys() and all(float(a[k]) == pytest.approx(float(b[k]), rel=1e-5) for k in a), (a, b)
    rows, ref_rows = read_csv(tmp_path / "two" / "predictions.csv"), read_csv(one.predictions)
    assert [(r["split"], r["file"]) for r in rows] == [(r["split"], r["file"]) for r in ref_rows]   # each once
    assert (tmp_path / "two" / "splits.csv").read_text() == one.splits.read_text()
    # both processes worked: each predicted its half of every split; each trained the head on all the features
    ranks, alone = _ranks(tmp_path / "two"), _ranks(one.path)
    assert alone["world_size"] == 1 and ranks["world_size"] == 2
    for split in ("train", "val", "test"):
        shares = [r["images_predicted"][split] for r in ranks["ranks"]]
        assert sorted(shares) == [ref[split]["n"] // 2, -(-ref[split]["n"] // 2)], (split, shares)
        assert alone["ranks"][0]["images_predicted"][split] == ref[split]["n"]
    assert [r["images_trained"] for r in ranks["ranks"]] == [alone["ranks"][0]["images_trained"]] * 2 != [0, 0]


def _ranks(run: Path) -> dict:
    """ranks.json: the world size and what each process did, in rank order."""
    ranks = json.loads((run / "ranks.json").read_text())
    assert [r["rank"] for r in ranks["ranks"]] == list(range(ranks["world_size"]))
    return ranks


RESUMABLE = """import sys
from transferlab import cli, engine
step = engine.Classifier.training_step
def interrupted(self, batch, batch_idx):
    if self.current_epoch == {epoch}:
        raise KeyboardInterrupt
    return step(self, batch, batch_idx)
engine.Classifier.training_step = interrupted
sys.exit(cli.main(sys.argv[1:]))
"""


def test_finetune_two_gloo_processes_interrupted_resumed_and_close_to_one_process(xray_dir, tmp_path):
    """finetune under DDP: the global batch of 16 is split into 8 per process, over a different shuffle, and
    BatchNorm sees 8 images at a time (SyncBatchNorm is CUDA-only), so training differs from one process, within
    noise: on these 48 test images the ROC AUCs agree within 0.15. What must be equal is: each process trained on
    its half of every epoch and predicted its half of each split, and the gathered predictions are those one
    process makes with the same weights. Interrupted in its third epoch (in both processes), the run resumes from
    last.ckpt with the epochs it had finished unchanged."""
    settings = dict(model="efficientnet_lite0", strategy="finetune", epochs=3, patience=5, **FAST)
    one = train(data=str(xray_dir), out=str(tmp_path / "one"), **settings).read_metrics()
    script = tmp_path / "interrupt_at_epoch_3.py"
    script.write_text(RESUMABLE.format(epoch=2))
    argv = ["train", "--data", str(xray_dir), "--out", str(tmp_path / "two"), "--devices", "2", *_cli_args(settings)]
    killed = _run([str(script), *argv], tmp_path / "cache")
    assert killed.returncode != 0
    run = tmp_path / "two"
    assert (run / "checkpoints" / "last.ckpt").exists() and not (run / "metrics.json").exists()
    before = load_checkpoint(run / "checkpoints" / "last.ckpt")["history"]   # the epochs finished before the kill
    assert len(before) == 2
    done = _run(["-m", "transferlab", *argv, "--resume"], tmp_path / "cache")
    assert done.returncode == 0, done.stderr[-3000:]
    history = _without_seconds(read_csv(run / "history.csv"))
    assert [int(r["epoch"]) for r in history] == [1, 2, 3]
    for row, kept in zip(history, before):
        for key in ("train_loss", "val_loss", "val_auc"):
            assert float(row[key]) == pytest.approx(kept[key], abs=1e-12), (row["epoch"], key)
    two = json.loads((run / "metrics.json").read_text())
    assert two["epochs_run"] == 3 and two["test"]["n"] == one["test"]["n"] and two["val"]["n"] == one["val"]["n"]
    assert two["test"]["roc_auc"] > 0.75 and one["test"]["roc_auc"] > 0.75
    assert abs(two["test"]["roc_auc"] - one["test"]["roc_auc"]) <= 0.15
    # the resumed call ran epoch 3: each process on its half of the training images (DistributedSampler)
    ranks = _ranks(run)
    assert ranks["world_size"] == 2
    n_train, trained = one["train"]["n"], [r["images_trained"] for r in ranks["ranks"]]
    assert all(0 < t <= -(-n_train // 2) for t in trained) and sum(trained) >= n_train - 2, (trained, n_train)
    for split in ("val", "test"):
        shares = [r["images_predicted"][split] for r in ranks["ranks"]]
        assert sorted(shares) == [two[split]["n"] // 2, -(-two[split]["n"] // 2)], (split, shares)
    # the test predictions gathered from two processes = one process's, from the same model.safetensors
    from transferlab.analysis.external import evaluate

    alone = evaluate(run, split="test", shift=False, progress=False, device="cpu")
    assert alone["n"] == two["test"]["n"] and alone["roc_auc"] == pytest.approx(two["test"]["roc_auc"], abs=1e-6)
    gathered = {r["file"]: r for r in read_csv(run / "predictions.csv") if r["split"] == "test"}
    for row in read_csv(run / "predictions-test.csv"):
        for column in [c for c in row if c.startswith("prob_")]:
            assert float(row[column]) == pytest.approx(float(gathered[row["file"]][column]), abs=1e-5), row["file"]


def test_distributed_options_are_checked_in_one_line():
    from transferlab.config import TrainConfig
    from transferlab.errors import TransferlabError

    with pytest.raises(TransferlabError, match="^devices= must be at least 1, not 0$"):
        TrainConfig(devices=0)
    with pytest.raises(TransferlabError, match="^num_nodes= must be at least 1, not 0$"):
        TrainConfig(num_nodes=0)
    with pytest.raises(TransferlabError, match="^device='cuda:1' names one GPU; with devices=2 use device="):
        TrainConfig(device="cuda:1", devices=2)


def test_padded_predictions_are_kept_once_in_dataset_order():
    """What DistributedSampler(shuffle=False) hands 2 processes for 5 images: [0, 2, 4] and [1, 3, 0] (padded)."""
    import torch

    from transferlab.distributed import gather_shards, once_each

    index = torch.tensor([[0, 2, 4], [1, 3, 0]])
    logits = index[..., None].float() * torch.tensor([1.0, -1.0])
    kept_logits, kept_index = once_each(index, logits, index)
    assert kept_index.tolist() == [0, 1, 2, 3, 4] and kept_logits[:, 0].tolist() == [0, 1, 2, 3, 4]
    assert gather_shards(lambda part: torch.arange(5)[part], 5).tolist() == [0, 1, 2, 3, 4]   # one process
