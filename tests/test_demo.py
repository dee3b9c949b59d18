"""The bundled sample (real, patient-disjoint, licensed) and a fast `run_demo`."""
from __future__ import annotations

import argparse

import pytest

from transferlab.data.discover import discover
from transferlab.data.split import make_splits
from transferlab.demo import SAMPLE_DIR, _interrupted_demo, add_demo_arguments, run_demo, sample_path
from transferlab.errors import TransferlabError
from transferlab.rundir import read_csv


def test_sample_is_real_patient_disjoint_and_licensed():
    index = discover(sample_path())
    assert index.classes == ["NORMAL", "PNEUMONIA"] and not index.skipped
    patients = {s: {x.patient for x in index.split(s)} for s in ("train", "val", "test")}
    assert not patients["train"] & patients["val"] and not patients["train"] & patients["test"]
    assert not patients["val"] & patients["test"]
    counts = {s: [sum(x.label == c for x in index.split(s)) for c in (0, 1)] for s in patients}
    assert counts == {"train": [120, 180], "val": [40, 60], "test": [60, 90]}
    # the sample's own val/ has >= 100 images, so the default official_val="auto" keeps it as is
    assert make_splits(index).method["val"] == "official val/ folder"
    licence = (SAMPLE_DIR / "LICENSE.md").read_text()
    assert "CC BY 4.0" in licence and "10.17632/rscbjbr9sj.2" in licence and "224x224" in licence
    listed = read_csv(SAMPLE_DIR / "chest_xray_sample.csv")
    assert sorted(r["file"] for r in listed) == sorted(index.relative(s) for s in index.samples)
    assert sum(s.path.stat().st_size for s in index.samples) < 8 * 2**20


def test_run_demo_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("transferlab.analysis.comparison.N_BOOT", 100)   # the report's bootstrap CIs dominate a tiny study
    out = tmp_path / "demo"
    study = run_demo(out, models=("efficientnet_lite0",), seeds=1, epochs=1, image_size=64, max_images=60,
                     measure_catalog=False, progress=False)
    assert (study / "report.html").exists() and not (study / "cache").exists()
    assert not list(study.glob("runs/*/checkpoints")) and len(list(study.glob("runs/*/model.safetensors"))) == 2
    printed = capsys.readouterr().out
    assert "report:" in printed and "Best on validation" in printed
    lines = (study / "summary.txt").read_text().splitlines()
    # both strategies ran: the comparison line, not its "only one strategy" branch, with the summary's numbers
    auc = {r["strategy"]: float(r["test_roc_auc_mean"]) for r in read_csv(study / "summary.csv")}
    assert len(lines) == 5 and lines[1].startswith(
        f"Features vs finetune, mean test AUC: efficientnet_lite0 {auc['features']:.3f} vs {auc['finetune']:.3f};")
    with pytest.raises(TransferlabError, match="finished demo"):
        run_demo(out)
    (study / "summary.txt").unlink()   # as if interrupted before the end: run_demo(out) would continue it
    assert _interrupted_demo(study) and not _interrupted_demo(tmp_path)
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(TransferlabError, match="other files"):
        run_demo(tmp_path / "other")


def test_demo_command_line():
    parser = argparse.ArgumentParser()
    add_demo_arguments(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["demo"])
    assert (args.out, args.device, args.threads, args.progress) == ("demo-out", "auto", None, True)
    assert parser.parse_args(["demo", "--out", "d", "--threads", "1", "--no-progress"]).threads == 1
