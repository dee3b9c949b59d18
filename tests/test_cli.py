"""The command line as a new user meets it: --help shows the defaults the code really uses, --version, exit codes
of check-data, no run directory left behind by early errors, absolute paths in run directories, a test split
carved by default (and said so), and one line per epoch instead of progress bars in a log file."""
from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import make_xray_dataset

from transferlab import __version__, cli
from transferlab.cli.study import LAUNCH_DEFAULT_WORDS, LAUNCH_OPTIONS
from transferlab.config import STRATEGIES, TrainConfig
from transferlab.settings import SETTINGS
from transferlab.study.config import train_config

DEFAULT = re.compile(r"\(default: (.*)\)$")   # the end of the help text


def _options(parser: argparse.ArgumentParser) -> dict[str, str]:
    """dest -> the default text its --help line shows ("" when it shows none)."""
    shown = {}
    for action in parser._actions:
        if action.option_strings and not action.required and action.dest not in ("help", "version"):
            text = parser.formatter_class(prog="x")._get_help_string(action) % {"default": action.default}
            match = DEFAULT.search(text.strip())
            shown[action.dest] = match.group(1) if match else ""
    return shown


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def _for_strategy(shown: str, strategy: str) -> str:
    """"finetune 10, features 30" -> "10" for finetune; anything else as it is."""
    parts = dict(part.split(" ", 1) for part in shown.split(", ") if part.startswith(tuple(STRATEGIES)) and " " in part)
    return parts.get(strategy, shown) if len(parts) == len(STRATEGIES) else shown


def _same(shown: str, value, dest: str) -> bool:
    if value is None:   # what None means, in words ("the model's own, e.g. 224")
        return shown == SETTINGS[dest].none_means
    return shown == (",".join(value) if isinstance(value, list) else str(value))


def test_train_help_shows_the_defaults_train_uses():
    parser = _subparsers()["train"]
    shown = _options(parser)
    args = vars(parser.parse_args(["--data", "d", "--out", "o"]))
    for strategy in STRATEGIES:
        cfg = TrainConfig(**{**args, "strategy": strategy})
        for dest, text in shown.items():
            if dest in ("resume", "overwrite", "progress", "skip_bad", "compile", "strategy", "data", "out",
                        "config"):
                # flags; the loop's own; required settings; the settings file
                continue
            assert _same(_for_strategy(text, strategy), getattr(cfg, dest), dest), (dest, text, getattr(cfg, dest))


def test_study_help_shows_the_defaults_a_study_uses(monkeypatch):
    parser = _subparsers()["study"]
    shown = _options(parser)
    seen = {}
    monkeypatch.setattr("transferlab.study.run.run_study", lambda config: seen.setdefault("config", config))
    cli.run_study(parser.parse_args(["--data", "d", "--models", "resnet18", "--out", "o"]))
    study = seen["config"]
    assert shown["strategies"] == ",".join(study.strategies) and shown["seeds"] == "3" and study.seeds == [0, 1, 2]
    assert shown["split_seed"].startswith(f"{study.split_seed},")
    assert study.external == [] and study.adapt is None and shown["adapt"].startswith("none")
    assert study.ensemble is None and shown["ensemble"] == "none" and shown["tta"] == str(study.tta) == "1"
    for strategy in STRATEGIES:
        cfg = train_config(study, "resnet18", strategy, 1)
        for dest, text in shown.items():
            if dest in ("strategies", "seeds", "split_seed", "data", "models", "out", "measure_catalog",
                        "progress", "skip_bad", "compile", "external", "adapt", "ensemble", "tta", "plan",
                        "collect", "wait", "experiment",
                        *LAUNCH_OPTIONS):
                continue
            assert _same(_for_strategy(text, strategy), getattr(cfg, dest), dest), (dest, text, getattr(cfg, dest))
    # where the runs execute: LaunchSettings' defaults, in words where they are None
    for dest in LAUNCH_OPTIONS:
        default = getattr(study.launch, dest)
        assert shown[dest] == (LAUNCH_DEFAULT_WORDS[dest] if default is None else str(default)), dest
    assert study.launch.launcher == "inprocess" and study.launch.wait is True
    # the loggers file every run of a study under the study folder's name
    assert shown["experiment"] == "the study folder's name" and cfg.experiment == "o"
    # the test split: the same 15% for a study as for `train` (no special case any more)
    assert cfg.test_fraction == TrainConfig().test_fraction == 0.15


# (command, option) -> the function the command calls with it, whose own default must be the same
API_DEFAULTS = {"models": "transferlab.model_catalog.build:catalog", "predict": "transferlab.prediction:predict",
                "export": "transferlab.exporting:export", "demo": "transferlab.demo:run_demo",
                "check-data": "transferlab.data.check:check_data"}
CLI_ONLY = {("predict", "out")}   # the command writes predictions.csv; predict() writes a file only when asked


@pytest.mark.parametrize("command", ["models", "evaluate", "ensemble", "predict", "export", "demo", "check-data"])
def test_other_commands_show_their_defaults(command):
    import importlib

    parser = _subparsers()[command]
    shown = _options(parser)
    function = None
    if command in API_DEFAULTS:
        module, name = API_DEFAULTS[command].split(":")
        function = inspect.signature(getattr(importlib.import_module(module), name)).parameters
    for action in parser._actions:
        if not action.option_strings or action.dest == "help" or isinstance(action.default, bool):
            continue
        if action.default is not None:
            assert shown[action.dest] == str(action.default), (command, action.dest, shown[action.dest])
        if function and action.dest in function and (command, action.dest) not in CLI_ONLY:
            assert function[action.dest].default == action.default, (command, action.dest)


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"transferlab {__version__}"


def test_check_data_exit_codes(tmp_path, capsys):
    data = make_xray_dataset(tmp_path / "d", patients_per_class=4, images_per_patient=1, size=32,
                             splits=("train", "test"))
    assert cli.main(["check-data", "--data", str(data)]) == 0
    shutil.copy(next((data / "train" / "NORMAL").iterdir()), data / "test" / "NORMAL" / "copy.jpeg")
    assert cli.main(["check-data", "--data", str(data)]) == 3        # identical files in train and test
    (data / "train" / "PNEUMONIA" / "broken.jpeg").write_bytes(b"\xff\xd8 not a JPEG")
    assert cli.main(["check-data", "--data", str(data), "--json"]) == 1    # unreadable beats leakage
    assert cli.main(["check-data", "--data", str(tmp_path / "missing")]) == 2
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli.main(["check-data", "--help"])
    assert "exit codes: 0" in " ".join(capsys.readouterr().out.split())


def test_errors_before_training_leave_no_run_directory(tmp_path, capsys):
    data = make_xray_dataset(tmp_path / "d", patients_per_class=4, images_per_patient=1, size=32)
    out = tmp_path / "runs" / "new" / "run"
    assert cli.main(["train", "--data", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert cli.main(["train", "--data", str(data), "--model", "resnet19", "--out", str(out)]) == 2
    assert cli.main(["train", "--data", str(data), "--model", "resnet18", "--weights", "IMAGENET1K_V1",
                     "--weights-dir", str(tmp_path), "--image-size", "32", "--test-fraction", "0",
                     "--no-progress", "--out", str(out)]) == 2      # weights not found: after the data is read
    assert not (tmp_path / "runs").exists()
    study = tmp_path / "study"
    assert cli.main(["study", "--data", str(tmp_path / "missing"), "--models", "resnet18", "--out", str(study)]) == 2
    assert cli.main(["study", "--data", str(data), "--models", "resnet19", "--out", str(study)]) == 2
    assert not study.exists()
    (tmp_path / "mine").mkdir()           # a folder the user made is left where it is
    assert cli.main(["train", "--data", str(data), "--model", "resnet19", "--out", str(tmp_path / "mine")]) == 2
    assert (tmp_path / "mine").is_dir()
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 6 and all(line.startswith("error:") for line in errors)


def test_run_directory_paths_are_absolute(tmp_path, monkeypatch, one_thread):
    from transferlab.analysis.external import evaluate
    from transferlab.training import train

    make_xray_dataset(tmp_path / "here" / "data", patients_per_class=6, images_per_patient=1, size=32,
                      splits=("train", "test"))
    monkeypatch.chdir(tmp_path / "here")
    run = train(data="data", out="run", cache_dir="cache", model="mobilenet_v3_small", weights="none",
                strategy="features", epochs=1, image_size=32, val_fraction=0.25, progress=False)
    settings = run.read_config()["settings"]
    assert settings["cache_dir"] == str(tmp_path / "here" / "cache") and (tmp_path / "here" / "cache").is_dir()
    assert settings["data"] == str(tmp_path / "here" / "data")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    evaluate(tmp_path / "here" / "run", split="test", progress=False)
    assert list((tmp_path / "elsewhere").iterdir()) == []


CHILD = "import sys, torch; torch.set_num_threads(1); from transferlab.cli import main; sys.exit(main(sys.argv[1:]))"


def test_log_file_gets_one_line_per_epoch_and_the_carved_test_split(xray_dir, tmp_path):
    """Outside a terminal (here: a log file) no progress bars, one line per epoch; data without test/ gets a
    test split carved by default, and the command says so."""
    data = make_xray_dataset(tmp_path / "no-test", patients_per_class=8, images_per_patient=2, size=32)
    out, log = tmp_path / "run", tmp_path / "train.log"
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, "-c", CHILD, "train", "--data", str(data), "--out", str(out),
                               "--model", "mobilenet_v3_small", "--weights", "none", "--strategy", "finetune",
                               "--epochs", "3", "--image-size", "32", "--batch-size", "4", "--patience", "5"],
                              stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                              timeout=300).returncode
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert "\r" not in text and "it/s" not in text
    epochs = [line for line in text.splitlines() if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert len(text) < 2000, text
    carved = [line for line in text.splitlines() if line.startswith("test split carved")]
    assert len(carved) == 1 and "patient-disjoint" in carved[0] and "--test-fraction 0" in carved[0]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test"]["n"] > 0
