"""Reliability: bad input never crashes, interrupted work is never lost, checkpoints load safely.

Every bad file is made here, at run time, and every case goes through the real CLI (`cli.main`): an error is
exit code 2 and one stderr line starting "error:"; --skip-bad is exit 0, a warning and bad_files.csv.
Tiny images, few epochs and one torch thread (on 2 shared cores, more threads mostly wait on each other)
keep the file short; the kill-and-resume test needs bit-identical results, so every run here uses 1 thread.
"""
from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import interrupt_training, make_xray_dataset, sigkill_when
from PIL import Image

from transferlab import cli, engine
from transferlab.errors import TransferlabError
from transferlab.rundir import read_csv
from transferlab.training import train

SMALL = ["--model", "mobilenet_v3_small", "--weights", "none", "--strategy", "finetune", "--epochs", "1",
         "--image-size", "32", "--batch-size", "8", "--val-fraction", "0.25", "--test-fraction", "0", "--no-progress"]
# 4 epochs of 5 steps, a high learning rate: every step moves the weights a lot, and they are compared bit for bit
RESUMABLE = ["--model", "mobilenet_v3_small", "--weights", "none", "--strategy", "finetune", "--epochs", "4",
             "--image-size", "64", "--batch-size", "8", "--val-fraction", "0.25", "--lr", "0.01",
             "--backbone-lr-factor", "1", "--seed", "3", "--no-progress"]
TIMINGS = ("seconds", "peak_rss_mb", "cuda_peak_mb")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_dir(tmp_path_factory) -> Path:
    return make_xray_dataset(tmp_path_factory.mktemp("small"), patients_per_class=6, images_per_patient=1, size=32)


@pytest.fixture
def data(small_dir, tmp_path) -> Path:
    """A fresh copy of the small dataset, to spoil."""
    return Path(shutil.copytree(small_dir, tmp_path / "data"))


def run_cli(capsys, *args) -> tuple[int, list[str], str]:
    code = cli.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, err.strip().splitlines(), out


def assert_one_line_error(code, err, *fragments):
    assert code == 2 and len(err) == 1 and err[0].startswith("error:"), err
    for fragment in fragments:
        assert fragment in err[0], (fragment, err[0])


# ---------------------------------------------------------------- bad files

def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header says width x height: it is refused from the header, before any pixel is decoded."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(bytes(64)))
                     + chunk(b"IEND", b""))


def _locked(path: Path, monkeypatch) -> None:
    Image.fromarray(np.full((32, 32), 90, np.uint8)).save(path)
    path.chmod(0)
    if os.access(path, os.R_OK):   # root reads anyway: let the file system say no
        read_bytes = pathlib.Path.read_bytes

        def refuse(self):
            if self.name == path.name:
                raise PermissionError(13, "Permission denied", str(self))
            return read_bytes(self)
        monkeypatch.setattr(pathlib.Path, "read_bytes", refuse)


BAD_FILES = {   # name -> (how to make it in a class folder, the reason the tool gives)
    "empty.jpeg": (lambda p, mp: p.write_bytes(b""), "empty file (0 bytes)"),
    "truncated.jpeg": (lambda p, mp: p.write_bytes((p.parent / "IM-0000-0001.jpeg").read_bytes()[:300]), "corrupt"),
    "text.png": (lambda p, mp: p.write_text("not an image at all"), "not an image"),
    "tiny.png": (lambda p, mp: Image.new("L", (1, 1)).save(p), "too small (1x1 px"),
    "huge.png": (lambda p, mp: _png_header(p, 20_000, 20_000), "too large"),
    "locked.png": (_locked, "permission denied"),
    "broken.jpeg": (lambda p, mp: p.symlink_to(p.parent / "gone.jpeg"), "file not found"),
}


def make_bad(data: Path, name: str, monkeypatch) -> Path:
    path = data / "train" / "NORMAL" / name
    BAD_FILES[name][0](path, monkeypatch)
    return path


@pytest.mark.parametrize("name", BAD_FILES)
def test_bad_file_is_one_line_error(name, data, tmp_path, capsys, monkeypatch):
    path = make_bad(data, name, monkeypatch)
    code, err, _ = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *SMALL)
    assert_one_line_error(code, err, "1 of 13 images cannot be read", str(path), BAD_FILES[name][1], "--skip-bad")
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_skip_bad_warns_and_lists_every_file(data, tmp_path, capsys, monkeypatch):
    bad = sorted(str(make_bad(data, name, monkeypatch)) for name in BAD_FILES)
    (data / "train" / "NORMAL" / ".DS_Store").write_bytes(b"\0\1")     # hidden
    (data / "train" / "PNEUMONIA" / "notes.txt").write_text("x")        # not an image extension
    out = tmp_path / "run"
    code, err, _ = run_cli(capsys, "train", "--data", data, "--out", out, "--skip-bad", *SMALL)
    assert code == 0, err
    assert err == ["warning: left out 2 files that are not images of a class: train/NORMAL/.DS_Store (hidden); "
                   "train/PNEUMONIA/notes.txt (not an image file (.txt))",
                   f"warning: skipped {len(BAD_FILES)} unreadable images (listed in {out / 'bad_files.csv'})"]
    rows = read_csv(out / "bad_files.csv")
    assert sorted(r["file"] for r in rows) == bad
    assert all(r["reason"] for r in rows)
    counts = json.loads((out / "config.json").read_text())["data"]
    assert counts["skipped_at_discovery"] == 2 and counts["bad_files_skipped"] == len(BAD_FILES)
    assert (out / "metrics.json").exists()


def test_check_data_lists_every_bad_file(data, capsys, monkeypatch):
    bad = [make_bad(data, name, monkeypatch) for name in BAD_FILES]
    code, err, out = run_cli(capsys, "check-data", "--data", data)
    assert code == 1      # documented: unreadable images
    assert f"unreadable images: {len(bad)}" in out
    lines = {line.strip().split(": ")[0]: line for line in out.splitlines()}
    for path in bad:
        assert BAD_FILES[path.name][1] in lines[f"train/NORMAL/{path.name}"]


def _manifest(data: Path, extra_rows: str = "") -> Path:
    rows = [f"{p.relative_to(data).as_posix()},{p.parent.name},{p.stem}" for p in sorted(data.rglob("*.jpeg"))]
    manifest = data / "manifest.csv"
    manifest.write_text("path,label,patient_id\n" + "\n".join(rows) + "\n" + extra_rows)
    return manifest


def test_manifest_trains_end_to_end(data, tmp_path, capsys):
    out = tmp_path / "run"
    code, err, _ = run_cli(capsys, "train", "--data", data, "--manifest", _manifest(data), "--out", out, *SMALL)
    assert code == 0 and err == []
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["classes"] == ["NORMAL", "PNEUMONIA"]
    assert len(read_csv(out / "splits.csv")) == 12 and (out / "metrics.json").exists()


def test_train_warns_when_the_official_test_folder_shares_patients(data, tmp_path, capsys):
    for cls in ("NORMAL", "PNEUMONIA"):   # an official test/ of 2 + 2 images; 1 patient and 1 image come from train
        (data / "test" / cls).mkdir(parents=True)
    train_normal = sorted((data / "train" / "NORMAL").iterdir())
    shutil.copy(train_normal[0], data / "test" / "NORMAL" / "IM-0000-0009.jpeg")        # patient IM-0000 again
    shutil.copy(train_normal[1], data / "test" / "NORMAL" / "IM-7777-0001.jpeg")        # a byte copy, new id
    for k, src in enumerate(sorted((data / "train" / "PNEUMONIA").iterdir())[:2]):
        Image.open(src).rotate(90).save(data / "test" / "PNEUMONIA" / f"person{900 + k}_virus_{k}.jpeg")
    out = tmp_path / "run"
    code, err, _ = run_cli(capsys, "train", "--data", data, "--out", out, *SMALL)
    assert code == 0 and err == [
        "warning: test (the official test/ folder, used as given) shares 1 patient with train/val (1 of its 4 "
        "images) and 2 images byte-identical to train/val images: its scores may be optimistic"]
    shared = json.loads((out / "config.json").read_text())["data"]["shared_with_train"]
    assert shared["test"] == {"against": "train/val", "patients": 1, "images": 1, "identical": 2, "of": 4}
    assert shared["val"] == {"against": "train", "patients": 0, "images": 0, "identical": 0, "of": shared["val"]["of"]}


def _two_splits_differ(data: Path) -> None:
    for cls in ("NORMAL", "COVID"):
        (data / "test" / cls).mkdir(parents=True)
        shutil.copy(next((data / "train" / "NORMAL").iterdir()), data / "test" / cls / "IM-9999-0001.jpeg")


def _all_test_images_bad(data: Path) -> None:
    for cls in ("NORMAL", "PNEUMONIA"):
        (data / "test" / cls).mkdir(parents=True)
        (data / "test" / cls / "IM-9999-0001.jpeg").write_bytes(b"")


DATASET_ERRORS = {   # case -> (spoil the dataset, extra options, what the one error line says)
    "empty class folder": (lambda d: (d / "train" / "EMPTY").mkdir(), [], "class folder without images: EMPTY"),
    "class folder of hidden files only": (
        lambda d: ((d / "train" / "EMPTY").mkdir(), (d / "train" / "EMPTY" / ".DS_Store").write_bytes(b"x")),
        [], "class folder without images: EMPTY"),
    "one class only": (lambda d: shutil.rmtree(d / "train" / "PNEUMONIA"), [], "only one class (NORMAL)"),
    "different classes in train and test": (_two_splits_differ, [], "class folders differ between splits: test/"),
    "manifest with missing files": (lambda d: _manifest(d, "train/NORMAL/IM-0404-0001.jpeg,NORMAL,IM-0404\n"),
                                    ["--manifest", "manifest.csv"], "1 of 13 listed files do not exist"),
    "every test image unreadable, --skip-bad": (_all_test_images_bad, ["--skip-bad"], "the test split needs readable images"),
}


@pytest.mark.parametrize("case", DATASET_ERRORS)
def test_bad_dataset_is_one_line_error(case, data, tmp_path, capsys):
    spoil, options, message = DATASET_ERRORS[case]
    spoil(data)
    code, err, _ = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *options, *SMALL)
    assert_one_line_error(code, err, message)
    if "manifest" in case:
        assert "IM-0404-0001.jpeg" in err[0]


# ---------------------------------------------------------------- checkpoints load safely

class _Payload:
    """Unpickling this would create a file: the code a crafted checkpoint could run."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


def test_crafted_checkpoint_is_refused(data, tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "payload-ran"
    (out / "checkpoints").mkdir(parents=True)
    torch.save({"state_dict": _Payload(marker), "epoch": 0}, out / "checkpoints" / "last.ckpt")
    marker.unlink(missing_ok=True)   # torch.save does not run it, but make sure
    code, err, _ = run_cli(capsys, "train", "--data", data, "--out", out, "--resume", *SMALL)
    assert_one_line_error(code, err, "last.ckpt", "refused", "weights_only")
    assert not marker.exists()

    (out / "checkpoints" / "last.ckpt").write_bytes(b"PK\3\4 half a checkpoint")
    code, err, _ = run_cli(capsys, "train", "--data", data, "--out", out, "--resume", *SMALL)
    assert_one_line_error(code, err, "last.ckpt", "corrupt")


def test_corrupt_safetensors_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": {"name": "mobilenet_v3_small"},
                                                 "data": {"classes": ["NORMAL", "PNEUMONIA"]}, "settings": {}}))
    (run / "model.safetensors").write_bytes(struct.pack("<Q", 10**12) + b"{}")   # header 'length' of 1 TB
    code, err, _ = run_cli(capsys, "evaluate", run)
    assert_one_line_error(code, err, "model.safetensors", "cannot be loaded")


# ---------------------------------------------------------------- interrupted work is never lost

def _results(run: Path) -> dict:
    """Everything a run reports except how long it took."""
    metrics = json.loads((run / "metrics.json").read_text())
    return {"metrics": {k: v for k, v in metrics.items() if k not in TIMINGS},
            "history": [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(run / "history.csv")],
            "predictions": (run / "predictions.csv").read_text(),
            "weights": (run / "model.safetensors").read_bytes()}


@pytest.fixture(scope="module")
def reference(xray_dir, tmp_path_factory) -> dict:
    """An uninterrupted run that the interrupted ones must reproduce exactly."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli.main(["train", "--data", str(xray_dir), "--out", str(out), *RESUMABLE]) == 0
    results = _results(out)
    assert len({row["train_loss"] for row in results["history"]}) == 4   # it trains; the weights say how exactly
    return results


# The child is the real CLI; the one change is a pause in the third epoch, after two optimizer steps, so
# that the test knows it kills the run in the middle of an epoch.
CHILD = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from transferlab import engine
from transferlab.cli import main

step = engine.Classifier.training_step
def pausing_step(self, batch, batch_idx):
    if self.current_epoch == 2 and batch_idx == 2:
        Path(sys.argv[1]).touch()
        time.sleep(600)
    return step(self, batch, batch_idx)
engine.Classifier.training_step = pausing_step
sys.exit(main(sys.argv[2:]))
"""


def test_sigkill_mid_epoch_then_resume_is_bit_identical(reference, xray_dir, tmp_path, capsys):
    out, marker = tmp_path / "run", tmp_path / "mid-epoch-3"
    args = ["train", "--data", str(xray_dir), "--out", str(out), *RESUMABLE]
    sigkill_when(marker, [sys.executable, "-c", CHILD, str(marker), *args], tmp_path / "child.log")

    assert not (out / "metrics.json").exists()
    ckpt = engine.load_checkpoint(out / "checkpoints" / "last.ckpt")   # epochs 1 and 2 done, saved atomically
    assert ckpt["epoch"] == 1 and len(ckpt["history"]) == 2
    assert ckpt["optimizer_states"][0]["state"] and ckpt["lr_schedulers"]
    assert any(key.startswith("EarlyStopping") for key in ckpt["callbacks"])

    code, err, _ = run_cli(capsys, *args)   # without --resume the unfinished run is protected
    assert_one_line_error(code, err, "--resume")
    assert run_cli(capsys, *args, "--resume")[0] == 0
    assert _results(out) == reference


def test_ctrl_c_exits_130_and_resume_is_bit_identical(reference, xray_dir, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    args = ["train", "--data", str(xray_dir), "--out", str(out), *RESUMABLE]
    uninterrupt = interrupt_training(monkeypatch, epoch=1, batch=3)
    handler = signal.getsignal(signal.SIGINT)
    code, err, _ = run_cli(capsys, *args)
    assert code == 130 and "--resume" in err[-1]
    assert signal.getsignal(signal.SIGINT) is handler   # Lightning had left Ctrl+C ignored
    uninterrupt()
    assert run_cli(capsys, *args, "--resume")[0] == 0
    assert _results(out) == reference


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    engine.AtomicCheckpointIO().save_checkpoint({"epoch": 1}, path)

    def dies_halfway(obj, f):
        Path(f).write_bytes(b"PK\3\4 half a checkpoint")
        raise KeyboardInterrupt
    monkeypatch.setattr(torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        engine.AtomicCheckpointIO().save_checkpoint({"epoch": 2}, path)
    assert engine.load_checkpoint(path)["epoch"] == 1


def test_resume_semantics(small_dir, tmp_path, monkeypatch):
    """Checkpoints every epoch; a finished run is returned as it is; a run killed after its last checkpoint
    (here: after early stopping) ends the same as it would have; a resume with other settings is refused."""
    settings = dict(data=str(small_dir), out=str(tmp_path / "run"), model="mobilenet_v3_small", weights="none",
                    strategy="finetune", epochs=8, patience=1, image_size=32, batch_size=8, val_fraction=0.25,
                    lr=0.01, backbone_lr_factor=1, test_fraction=0, progress=False)
    saved, save = [], engine.AtomicCheckpointIO.save_checkpoint
    monkeypatch.setattr(engine.AtomicCheckpointIO, "save_checkpoint",
                        lambda self, ckpt, path, **kw: (saved.append(Path(path).name), save(self, ckpt, path, **kw)))
    run = train(**settings)
    finished = _results(run.path)
    epochs = finished["metrics"]["epochs_run"]
    assert epochs < 8   # early stopping did stop it, after an epoch that did not improve
    assert saved.count("last.ckpt") == epochs and saved.count("best.ckpt") >= 1
    assert engine.load_checkpoint(run.checkpoints / "last.ckpt")["epoch"] == epochs - 1
    stamp = run.metrics.stat().st_mtime_ns
    assert train(**settings, resume=True).metrics.stat().st_mtime_ns == stamp

    run.metrics.unlink()
    run.weights.unlink()
    with pytest.raises(TransferlabError, match="add resume=True to continue it"):
        train(**settings)
    with pytest.raises(TransferlabError, match="other settings.*epochs 8 -> 9"):
        train(**{**settings, "epochs": 9}, resume=True)
    train(**settings, resume=True)
    assert _results(run.path) == finished
