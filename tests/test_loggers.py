"""--logger: TensorBoard and MLflow receive exactly history.csv per epoch, config.json and metrics.json, read back
with their own readers; a resumed run logs no epoch twice; a study files every run under its name."""
from __future__ import annotations

import sys

import pytest
import yaml
from conftest import interrupt_training
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from transferlab import cli
from transferlab.errors import TransferlabError
from transferlab.loggers import final_metrics
from transferlab.rundir import RunDir, read_csv
from transferlab.study.config import read_study_file, train_config
from transferlab.study.run import run_study
from transferlab.training import train

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = dict(model="efficientnet_lite0", strategy="features", image_size=64, batch_size=16, progress=False,
            val_fraction=0.25, max_images=24)
COLUMNS = ["train_loss", "train_acc", "val_loss", "val_acc", "val_auc", "val_balanced_accuracy", "lr", "seconds"]


def _history(run: RunDir) -> dict[str, list[tuple[int, float]]]:
    rows = read_csv(run.history)
    return {c: [(int(r["epoch"]), float(r[c])) for r in rows] for c in COLUMNS}


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    """One folder of runs, so that both MLflow tests share its store (a new store takes seconds to set up)."""
    return tmp_path_factory.mktemp("runs")


def _mlflow_client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(uri)


def test_tensorboard_and_csv_hold_history_config_and_metrics(xray_dir, tmp_path):
    run = train(data=str(xray_dir), epochs=3, patience=10, logger=["tensorboard", "csv"], out=str(tmp_path / "run"),
                **FAST)
    events = EventAccumulator(str(run.logs / "tensorboard"))
    events.Reload()
    for column, expected in _history(run).items():
        logged = [(e.step, e.value) for e in events.Scalars(column)]
        assert [s for s, _ in logged] == [1, 2, 3]
        assert [v for _, v in logged] == pytest.approx([v for _, v in expected], rel=1e-6, nan_ok=True), column
    metrics = run.read_metrics()
    accuracy = events.Scalars("final/test_at_threshold_accuracy")
    assert [(e.step, e.value) for e in accuracy] == [(3, pytest.approx(metrics["test"]["at_threshold"]["accuracy"]))]
    # the HParams tab: config.json's settings, flattened
    session = plugin_data_pb2.HParamsPluginData.FromString(
        events.PluginTagToContent("hparams")["_hparams_/session_start_info"]).session_start_info
    settings = run.read_config()["settings"]
    assert session.hparams["settings/model"].string_value == "efficientnet_lite0"
    assert session.hparams["settings/lr"].number_value == pytest.approx(settings["lr"])
    assert session.hparams["model/image_size"].number_value == 64

    csv_rows = read_csv(run.logs / "csv" / "metrics.csv")
    epochs = [r for r in csv_rows if r["train_loss"]]
    assert [int(r["step"]) for r in epochs] == [1, 2, 3]
    assert [float(r["val_loss"]) for r in epochs] == pytest.approx([v for _, v in _history(run)["val_loss"]])
    assert yaml.safe_load((run.logs / "csv" / "hparams.yaml").read_text())["settings"]["seed"] == 0


def test_mlflow_resumed_run_logs_every_epoch_once(xray_dir, runs_dir, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)   # the default store: beside the run
    settings = dict(data=str(xray_dir), epochs=4, patience=10, out=str(runs_dir / "a"), experiment="exp1", **FAST)
    uninterrupt = interrupt_training(monkeypatch, epoch=2)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        train(**settings, logger=["mlflow", "tensorboard"])
    run = RunDir(settings["out"])
    client = _mlflow_client(f"sqlite:///{runs_dir / 'mlflow.db'}")
    (killed,) = client.search_runs([client.get_experiment_by_name("exp1").experiment_id])
    assert killed.info.status == "KILLED" and [m.step for m in client.get_metric_history(killed.info.run_id, "val_loss")] == [1, 2]

    uninterrupt()
    train(**settings, logger=["mlflow", "tensorboard", "csv"], resume=True)   # csv added: it gets epochs 1-2 too
    (logged,) = client.search_runs([client.get_experiment_by_name("exp1").experiment_id])
    assert logged.info.run_id == killed.info.run_id and logged.info.status == "FINISHED"
    assert logged.info.run_name == "a"
    for column, expected in _history(run).items():
        history = [(m.step, m.value) for m in client.get_metric_history(logged.info.run_id, column)]
        assert [s for s, _ in history] == [1, 2, 3, 4], column   # each epoch once, the resumed ones included
        assert [v for _, v in history] == pytest.approx([v for _, v in expected], nan_ok=True), column
    config = run.read_config()
    assert logged.data.params["settings/model"] == "efficientnet_lite0"
    assert float(logged.data.params["settings/lr"]) == config["settings"]["lr"]
    assert logged.data.params["data/fingerprint"] == config["data"]["fingerprint"]
    assert logged.data.metrics == pytest.approx({**final_metrics(run.read_metrics()),
                                                 **{c: v[-1][1] for c, v in _history(run).items()}}, nan_ok=True)

    events = EventAccumulator(str(run.logs / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("val_loss")] == [1, 2, 3, 4]
    assert [int(r["step"]) for r in read_csv(run.logs / "csv" / "metrics.csv") if r["val_loss"]] == [1, 2, 3, 4]


def test_study_files_every_run_under_its_name(xray_dir, tmp_path, runs_dir, monkeypatch):
    """A YAML study with `logger: mlflow`, to the store $MLFLOW_TRACKING_URI names. A finished run kept with a
    logger added is logged from its files, and MLflow, which has it already, gets nothing twice."""
    store = f"sqlite:///{runs_dir / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    # the report is tested elsewhere; here it would only take time
    monkeypatch.setattr("transferlab.report.write_report", lambda out: (out / "report.html", out / "report.md"))
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({
        "data": str(xray_dir), "models": ["efficientnet_lite0"], "strategies": ["features"], "seeds": 2,
        "out": str(tmp_path / "hw4"), "measure_catalog": False, "logger": "mlflow",
        "train": {k: v for k, v in FAST.items() if k not in ("model", "strategy")} | {"epochs": 2}}))
    config = read_study_file(study_file)
    out = run_study(config)
    runs = [RunDir(out / "runs" / f"efficientnet_lite0-features-seed{seed}") for seed in (0, 1)]
    assert not (out / "runs" / "mlflow.db").exists()
    client = _mlflow_client(store)
    experiment = client.get_experiment_by_name("hw4")
    logged = {r.info.run_name: r for r in client.search_runs([experiment.experiment_id])}
    assert sorted(logged) == [r.path.name for r in runs]
    assert all(r.info.status == "FINISHED" and r.data.metrics["final/test_roc_auc"] > 0 for r in logged.values())

    kept = train_config(config, "efficientnet_lite0", "features", 0)
    assert kept.experiment == "hw4" and kept.logger == ["mlflow"]
    kept.logger = ["mlflow", "tensorboard"]
    train(kept)
    assert len(client.search_runs([experiment.experiment_id])) == 2
    assert [m.step for m in client.get_metric_history(logged[runs[0].path.name].info.run_id, "val_loss")] == [1, 2]
    events = EventAccumulator(str(runs[0].logs / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("val_auc")] == \
        [(s, pytest.approx(v)) for s, v in _history(runs[0])["val_auc"]]
    assert events.Scalars("final/test_roc_auc")[0].value == pytest.approx(runs[0].read_metrics()["test"]["roc_auc"])


def test_missing_package_and_unknown_logger_are_one_line_errors(xray_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tensorboard", None)   # as if not installed
    code = cli.main(["train", "--data", str(xray_dir), "--out", str(tmp_path / "run"), "--logger", "csv",
                     "--logger", "tensorboard"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err == ("error: --logger tensorboard needs tensorboard, not installed here: "
                                 "pip install 'transferlab[tensorboard]'")
    assert not (tmp_path / "run").exists()
    with pytest.raises(TransferlabError, match="logger= must be one of tensorboard, csv, mlflow, wandb, not 'neptune'"):
        train(data=str(xray_dir), out=str(tmp_path / "run"), logger="csv,neptune")
    assert cli.main(["train", "--data", "d", "--out", "o", "--logger", "neptune"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --logger must be one of tensorboard, csv, mlflow, wandb, "
                                               "not 'neptune'")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuch://store")
    with pytest.raises(TransferlabError, match="^logger='mlflow': .*nosuch"):
        train(data=str(xray_dir), out=str(tmp_path / "run"), logger="mlflow", **FAST)
    assert not (tmp_path / "run").exists()


def test_study_command_line_passes_loggers_to_every_run(monkeypatch):
    parser = cli.build_parser()
    seen = {}
    monkeypatch.setattr("transferlab.study.run.run_study", lambda config: seen.setdefault("config", config))
    cli.run_study(parser.parse_args(["study", "--data", "d", "--models", "resnet18", "--out", "studies/hw4",
                                     "--logger", "tensorboard", "--logger", "mlflow"]))
    cfg = train_config(seen["config"], "resnet18", "features", 0)
    assert cfg.logger == ["tensorboard", "mlflow"] and cfg.experiment == "hw4"
