"""`study --ensemble K --tta N`: the ensemble of the K runs best on validation and N-view test-time augmentation,
scored like the runs (results.csv, report section D), idempotent, on the --collect path too; an ensemble exported."""
from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import yaml

from transferlab import cli
from transferlab.analysis import comparison
from transferlab.data.images import load_images
from transferlab.ensembles import rank_runs
from transferlab.errors import TransferlabError
from transferlab.exporting import export
from transferlab.metrics import choose_threshold
from transferlab.prediction import predict
from transferlab.rundir import RunDir, read_csv
from transferlab.study.config import StudyConfig

from conftest import make_xray_dataset

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64
TRAIN = ["--image-size", str(SIZE), "--epochs", "2", "--batch-size", "16", "--val-fraction", "0.25", "--no-progress"]


@pytest.fixture(scope="module")
def study(xray_dir, tmp_path_factory):
    """efficientnet_lite0 features x 3 seeds (ImageNet weights, 64 px), an ensemble of 2 and 2-view TTA, all on
    an external set too."""
    out = tmp_path_factory.mktemp("study") / "s"
    made = make_xray_dataset(tmp_path_factory.mktemp("made"), patients_per_class=4, seed=5, splits=("test",))
    external = shutil.copytree(made / "test", tmp_path_factory.mktemp("ext") / "hospital_c")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(comparison, "N_BOOT", 50)
        assert cli.main(["study", "--data", str(xray_dir), "--models", "efficientnet_lite0", "--strategies",
                         "features", "--seeds", "3", "--out", str(out), "--no-catalog", "--ensemble", "2", "--tta",
                         "2", "--external", str(external), *TRAIN]) == 0
    return out


def _tta_probs(run_dir, split: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    rows = sorted(read_csv(run_dir / f"predictions-{split}-tta.csv"), key=lambda r: r["file"])
    return ([r["label"] for r in rows], np.array([float(r["prob_PNEUMONIA"]) for r in rows]),
            np.array([float(r["prob_PNEUMONIA_tta"]) for r in rows]))


def test_ensemble_and_tta_in_the_results(study):
    rows = read_csv(study / "results.csv")
    runs, (ens,) = rows[:-1], [r for r in rows if r["strategy"] == "ensemble"]
    assert len(runs) == 3 and ens is rows[-1] and ens["run"] == "ensemble-top2" and ens["seed"] == ""
    # the members: the two runs best on validation, never chosen on test
    best = rank_runs([study / r["run"] for r in runs])[:2]
    assert ens["ensemble_of"].split() == [b.path.name for b in best]
    for key in ("test_ci_roc_auc_low", "test_ci_roc_auc_high", "test_ci_accuracy_low", "test_mcnemar_p_value",
                "test_roc_auc", "test_at_threshold_accuracy", "test_tta_roc_auc", "test_tta_at_threshold_accuracy"):
        assert ens[key] != "", key
    assert float(ens["test_ci_roc_auc_low"]) <= float(ens["test_roc_auc"]) <= float(ens["test_ci_roc_auc_high"])
    assert ens["test_mcnemar_vs"] == best[0].path.name and 0 <= float(ens["test_mcnemar_p_value"]) <= 1
    # every run: scored with 2-view TTA on val and test by `evaluate`, its columns in results.csv
    for row in runs:
        for split in ("val", "test"):
            saved = json.loads((study / row["run"] / f"eval-{split}-tta.json").read_text())
            assert saved["tta"]["views"] == 2 and saved["tta"]["threshold_chosen_on"].startswith("val")
        saved = json.loads((study / row["run"] / "eval-test-tta.json").read_text())
        assert saved["roc_auc"] == pytest.approx(float(row["test_roc_auc"]))   # plain: the run's own test images
        assert float(row["test_tta_roc_auc"]) == pytest.approx(saved["tta"]["roc_auc"])
        assert float(row["test_tta_at_threshold_accuracy"]) == pytest.approx(saved["tta"]["at_threshold"]["accuracy"])
        assert float(row["test_tta_threshold"]) == pytest.approx(saved["tta"]["threshold"])
    # the ensemble's TTA: the members' N-view probabilities averaged, its threshold re-chosen on validation's mean
    saved = json.loads((study / "ensemble-top2" / "eval-test-tta.json").read_text())
    assert saved["at_threshold"]["accuracy"] == pytest.approx(float(ens["test_at_threshold_accuracy"]))
    labels, _, mean_val = zip(*[_tta_probs(b.path, "val") for b in best])
    val_threshold = choose_threshold((np.array(labels[0]) == "PNEUMONIA").astype(int), np.mean(mean_val, axis=0),
                                     "youden")
    assert saved["tta"]["threshold"] == pytest.approx(val_threshold)
    labels, plain, tta = zip(*[_tta_probs(b.path, "test") for b in best])
    decided = np.where(np.mean(tta, axis=0) >= val_threshold, "PNEUMONIA", "NORMAL")
    assert saved["tta"]["at_threshold"]["accuracy"] == pytest.approx(np.mean(decided == np.array(labels[0])))
    summary = read_csv(study / "summary.csv")
    assert [r["strategy"] for r in summary] == ["features", "ensemble"]


def test_the_ensemble_on_the_external_set_is_its_members_mean(study):
    folder = RunDir(study / "ensemble-top2")
    result = folder.read_evaluation("hospital_c")
    members = [RunDir(m) for m in folder.members()]
    theirs = [{r["file"]: float(r["prob_PNEUMONIA"]) for r in read_csv(m.path / "predictions-hospital_c.csv")}
              for m in members]
    rows = read_csv(folder.path / "predictions-hospital_c.csv")
    assert len(rows) == result["n"] == len(theirs[0]) > 0
    for r in rows:
        assert float(r["prob_PNEUMONIA"]) == pytest.approx(np.mean([t[r["file"]] for t in theirs]))
    assert result["threshold"] == folder.read_metrics()["threshold"] and "accuracy" in result
    analysis = json.loads((study / "analysis.json").read_text())
    assert "ensemble-top2" in analysis["external_results"]["hospital_c"]
    html = (study / "report.html").read_text()
    assert re.search(r"External set: hospital_c.*?<td>ensemble-top2</td>", html, re.S)


def test_report_shows_the_ensemble_and_the_tta_table(study):
    html = (study / "report.html").read_text()
    section_d = html[html.index('id="section-D"'):html.index('id="section-E"')]
    assert "Ensemble of the 2 runs best on validation" in section_d and "ensemble-top2" in section_d
    assert "McNemar p=" in section_d
    assert "Test-time augmentation (2 views)" in section_d and "with TTA ×2" in section_d
    analysis = json.loads((study / "analysis.json").read_text())
    assert analysis["ensemble"]["members"] == read_csv(study / "results.csv")[-1]["ensemble_of"].split()
    assert [(r["strategy"], r["seeds"]) for r in analysis["tta"]] == [("features", 3), ("ensemble", 1)]
    assert "Ensemble of the 2 runs" in (study / "report.md").read_text()


def test_sections_d_and_e_name_the_same_run_chosen_on_validation(study):
    """One rule (analysis.runs.chosen_run): the ensemble's best member, tested against it in D, is the run whose
    findings E gives, named in the same words."""
    md = (study / "report.md").read_text()
    section_d, section_e = md[md.index("## D "):md.index("## E ")], md[md.index("## E "):md.index("## Methods")]
    in_d = re.findall(r"Against (\S+), the run chosen on validation", section_d)
    in_e = re.findall(r"Key findings: (\S+), the run chosen on validation", section_e)
    runs = [study / r["run"] for r in read_csv(study / "results.csv") if r["strategy"] != "ensemble"]
    best = rank_runs(runs)[0].path.name
    assert in_d == in_e == [best] == [json.loads((study / "analysis.json").read_text())["chosen_run"]]
    assert "best single run" not in md


def test_running_the_study_again_rebuilds_nothing(study, tmp_path, capsys):
    watched = [study / "ensemble-top2" / "metrics.json", study / "ensemble-top2" / "eval-test-tta.json",
               study / "ensemble-top2" / "eval-hospital_c.json", *(study / "runs").glob("*/eval-*-tta.json")]
    before = {p: p.stat().st_mtime_ns for p in watched}
    capsys.readouterr()
    assert cli.main(["study", str(study / "study.yaml")]) == 0
    out = capsys.readouterr().out
    assert "ensemble of the" not in out and "test-time augmentation" not in out
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    assert len(read_csv(study / "results.csv")) == 4
    # `transferlab ensemble STUDY` still ranks the study's runs only, not the ensemble it holds
    assert cli.main(["ensemble", str(study), "--k", "2", "--out", str(tmp_path / "again")]) == 0
    config = RunDir(tmp_path / "again").read_config()["ensemble"]
    assert config["candidates"] == 3
    assert [m["run"].split("/")[-1] for m in config["members"]] == read_csv(study / "results.csv")[-1]["ensemble_of"].split()


def test_collect_from_a_study_file_with_ensemble(study, xray_dir, tmp_path):
    """Runs executed elsewhere (here: copied), then `study FILE --collect` with `ensemble:` in the YAML."""
    out = tmp_path / "collected"
    shutil.copytree(study / "runs", out / "runs")
    (tmp_path / "study.yaml").write_text(yaml.safe_dump({
        "data": str(xray_dir), "models": ["efficientnet_lite0"], "strategies": ["features"], "seeds": 3,
        "out": str(out), "measure_catalog": False, "ensemble": 2, "tta": 2,
        "train": {"image_size": SIZE, "epochs": 2, "batch_size": 16, "val_fraction": 0.25,
                  "progress": False}}))
    assert cli.main(["study", str(tmp_path / "study.yaml"), "--collect"]) == 0
    rows = read_csv(out / "results.csv")
    assert rows[-1]["run"] == "ensemble-top2" and rows[-1]["test_tta_roc_auc"] != ""
    assert RunDir(out / "ensemble-top2").read_config()["ensemble"]["k"] == 2
    assert "Ensemble of the 2 runs best on validation" in (out / "report.html").read_text()


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")
def test_export_an_ensemble(study, xray_dir, tmp_path):
    import onnxruntime as ort
    import torch

    folder = study / "ensemble-top2"
    files = sorted((xray_dir / "test" / "NORMAL").glob("*.jpeg"))[:3] + \
        sorted((xray_dir / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
    want = np.array([[r["prob_NORMAL"], r["prob_PNEUMONIA"]] for r in predict(folder, files)])
    x = np.broadcast_to(load_images(files, SIZE, progress=False).pixels, (len(files), 3, SIZE, SIZE)).astype(np.float32)
    path = export(folder, "onnx", tmp_path / "ensemble.onnx")
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
    assert np.abs(got - want).max() < 1e-4
    meta = json.loads((tmp_path / "ensemble.onnx.json").read_text())
    assert meta["threshold"] == RunDir(folder).read_metrics()["threshold"] and meta["model"] == "ensemble of 2"
    assert len(meta["ensemble"]["members"]) == 2 and meta["max_abs_diff_vs_pytorch"] < 1e-4
    scripted = torch.jit.load(str(export(folder, "torchscript", tmp_path / "ensemble.pt")))
    assert np.abs(scripted(torch.from_numpy(x)).detach().numpy() - want).max() < 1e-4
    # members of different input sizes: refused in one line
    copy = tmp_path / "copy"
    shutil.copytree(study / "runs", copy / "runs")
    shutil.copytree(folder, copy / "ensemble-top2")
    member = copy / "runs" / RunDir(folder).read_config()["ensemble"]["members"][1]["run"].split("/")[-1]
    config = json.loads((member / "config.json").read_text())
    config["model"]["image_size"] = SIZE + 16
    (member / "config.json").write_text(json.dumps(config))
    with pytest.raises(TransferlabError, match="different input sizes") as err:
        export(copy / "ensemble-top2", "onnx", tmp_path / "no.onnx")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad, message", [({"ensemble": 4}, "^ensemble= must be between 2 and"),
                                          ({"ensemble": 1}, "^ensemble= must be between 2 and"),
                                          ({"tta": 0}, "^tta= must be at least 1")])
def test_bad_ensemble_and_tta_settings(bad, message, xray_dir):
    with pytest.raises(TransferlabError, match=message):
        StudyConfig(data=str(xray_dir), models=["efficientnet_lite0"], strategies=["features"], seeds=3, out="o",
                    **bad)
