"""The settings registry as a user meets it: a bad value fails before any work with one message, from the command
line, a settings file, a study file and Python alike (Python's names keywords, not flags); commands check their
own options while parsing; every command takes --threads; resume and study identity read one list."""
from __future__ import annotations

import argparse

import pytest
import torch
import yaml

import transferlab as tl
from transferlab import cli
from transferlab.errors import TransferlabError
from transferlab.settings import SETTINGS, as_keywords, changed_settings


@pytest.fixture
def no_work(monkeypatch):
    """Any data reading or study planning fails the test: the error must come before it."""
    def work(*args, **kwargs):
        raise AssertionError("work started before the settings were checked")

    for target in ("transferlab.training.prepare_data", "transferlab.training.discover", "transferlab.study.run.plan_study",
                   "transferlab.study.plan.plan_study", "transferlab.data.discover.discover"):
        monkeypatch.setattr(target, work)


@pytest.mark.parametrize("name, value, message", [
    ("threshold_method", "F1", "--threshold-method must be one of youden, f1, not 'F1'"),
    ("monitor", "val_acc", "--monitor must be one of val_loss, val_auc, val_balanced_accuracy, not 'val_acc'"),
    ("val_fraction", 1.5, "--val-fraction must be in (0, 1), not 1.5"),
    ("epochs", 0, "--epochs must be at least 1, not 0"),
    ("lr", "fast", "--lr must be a positive number or auto, not 'fast'"),
    ("mixup", -0.5, "--mixup must be at least 0, not -0.5"),
    ("weight_averaging", "foo", "--weight-averaging must be one of none, ema, swa, not 'foo'"),
])
def test_a_bad_value_fails_before_any_work_with_one_message_from_everywhere(name, value, message, tmp_path, capsys,
                                                                            no_work):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    assert SETTINGS[name].flag == message.split()[0]

    def cli_error(argv: list[str]) -> str:
        assert cli.main(argv) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1, lines
        return lines[0]

    flag = [SETTINGS[name].flag, str(value)]
    assert cli_error(["train", "--data", str(data), "--out", str(out), *flag]) == f"error: {message}"
    settings_file = tmp_path / "settings.yaml"
    settings_file.write_text(yaml.safe_dump({name: value}))
    assert cli_error(["train", "--config", str(settings_file), "--data", str(data), "--out", str(out)]) \
        == f"error: {message}"
    assert cli_error(["lr-find", "--config", str(settings_file), "--data", str(data), "--out", str(out)]) \
        == f"error: {message}"
    study_file = tmp_path / "study.yaml"
    study_file.write_text(yaml.safe_dump({"data": str(data), "models": ["efficientnet_lite0"], "out": str(out),
                                          "train": {name: value}}))
    assert cli_error(["study", str(study_file)]) == f"error: {message}"
    assert cli_error(["study", "--data", str(data), "--models", "efficientnet_lite0", "--out", str(out), *flag]) \
        == f"error: {message}"

    # Python: the same message, naming the keyword
    keyword = f"{name}= " + message.split(" ", 1)[1]
    assert as_keywords(message) == keyword
    with pytest.raises(TransferlabError) as err:
        tl.train(data=str(data), out=str(out), **{name: value})
    assert str(err.value) == keyword
    with pytest.raises(TransferlabError) as err:
        tl.TrainConfig(**{name: value})
    assert str(err.value) == keyword
    with pytest.raises(TransferlabError) as err:
        tl.StudyConfig(data=str(data), models=["efficientnet_lite0"], out=str(out), train={name: value})
    assert str(err.value) == keyword
    assert not out.exists()


def test_settings_that_only_go_together_fail_at_construction():
    with pytest.raises(TransferlabError, match=r"^unfreeze='gradual' needs a strategy that trains the backbone"):
        tl.TrainConfig(strategy="features", unfreeze="gradual")
    with pytest.raises(TransferlabError, match=r"^resume=True continues what out= holds and overwrite=True deletes"):
        tl.TrainConfig(resume=True, overwrite=True)
    with pytest.raises(TransferlabError, match=r"^batchnorm='train' needs"):
        tl.StudyConfig(data="d", models=["resnet18"], out="o", strategies=["features"], train={"batchnorm": "train"})
    with pytest.raises(TransferlabError, match=r"^augment= must be one of basic, xray, none, not 'no'"):
        tl.TrainConfig(augment="no")
    # the yes/no setting of earlier versions (old config.json and YAML files) still reads
    assert tl.TrainConfig(augment=True).augment == "basic" and tl.TrainConfig(augment=False).augment == "none"
    with pytest.raises(TransferlabError, match=r"^preprocess= must be one of none, equalize, clahe, not 'gamma'"):
        tl.TrainConfig(preprocess="gamma")
    with pytest.raises(TransferlabError, match=r"^feature_views= must be at least 1, not 0"):
        tl.TrainConfig(feature_views=0)
    # what YAML gives: 1e-4 is a string to YAML 1.1; a path may be a Path
    config = tl.TrainConfig(weight_decay="1e-4", lr="3e-4", cache_dir=__import__("pathlib").Path("c"))
    assert config.weight_decay == 1e-4 and config.lr == 3e-4 and isinstance(config.cache_dir, str)


def test_errors_name_keywords_in_python_and_flags_on_the_command_line():
    assert as_keywords("add --resume to continue it, or choose another --out") == \
        "add resume=True to continue it, or choose another out="
    assert as_keywords("--lr auto runs the LR finder in one process; pass it as --lr") == \
        "lr='auto' runs the LR finder in one process; pass it as lr="
    assert as_keywords("--device cuda:1 names one GPU; with --devices 2 ...") == \
        "device='cuda:1' names one GPU; with devices=2 ..."
    assert as_keywords("--no-progress; --external /data/b: no such folder; --logger mlflow: x") == \
        "progress=False; external='/data/b': no such folder; logger='mlflow': x"
    assert as_keywords("transferlab lr-find, then --tta must be at least 1") == \
        "transferlab lr-find, then tta= must be at least 1"


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_tta_below_one_fails_while_the_arguments_are_parsed(command, capsys):
    extra = ["image.png"] if command == "predict" else []
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "no-such-run", *extra, "--tta", "0"])
    assert exit_.value.code == 2 and "argument --tta: --tta must be at least 1, not 0" in capsys.readouterr().err


def test_predict_checks_its_keywords_before_it_reads_anything():
    with pytest.raises(TransferlabError, match=r"^tta= must be at least 1 \(1 = no augmentation\), not 0$"):
        tl.predict("no-such-run", "image.png", tta=0)
    with pytest.raises(TransferlabError, match="^Grad-CAM overlays are written beside the CSV: give out= as well$"):
        tl.predict("no-such-run", "image.png", cam=True)


def test_every_command_takes_threads_and_applies_them(monkeypatch, xray_dir):
    parser = cli.build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert all(any(a.dest == "threads" for a in p._actions) for p in commands.values()), list(commands)

    wanted, before, seen = (2 if torch.get_num_threads() == 1 else 1), torch.get_num_threads(), {}

    def evaluate(*args, **kwargs):
        seen["threads"] = torch.get_num_threads()
        return {"run": "r", "name": "n"}

    monkeypatch.setattr("transferlab.analysis.external.evaluate", evaluate)
    monkeypatch.setattr("transferlab.analysis.external_text.summary_lines", lambda result: [])
    assert cli.main(["evaluate", "some-run", "--threads", str(wanted)]) == 0
    assert seen["threads"] == wanted and torch.get_num_threads() == before
    assert cli.main(["check-data", "--data", str(xray_dir), "--threads", "1"]) == 0


def test_one_list_of_settings_that_do_not_change_results():
    old = tl.TrainConfig(data="a").to_dict()
    same = {**old, "devices": 2, "compile": True, "threads": 1, "out": "elsewhere", "manifest": "m.csv",
            "logger": ["csv"], "progress": False}
    assert changed_settings(old, same) == []
    assert changed_settings(old, {**old, "epochs": 31, "balance": "none"}) == ["epochs 30 -> 31",
                                                                              "balance 'weights' -> 'none'"]
    # a setting the run did not record (newer than it) ran as its default
    older = {k: v for k, v in old.items() if k != "head_dropout"}
    assert changed_settings(older, old) == []
    assert changed_settings(older, {**old, "head_dropout": 0.5}) == ["head_dropout 0.0 -> 0.5"]


def test_runs_of_earlier_versions_compare_as_read_today():
    from transferlab.settings import changed_settings

    # augment was yes/no: a run that wrote true augmented as basic does, so it resumes and is kept by a study
    assert changed_settings({"augment": True, "lr": 0.001}, {"augment": "basic", "lr": 1e-3}) == []
    assert changed_settings({"augment": True}, {"augment": "xray"}) == ["augment True -> 'xray'"]
    assert changed_settings({"augment": False}, {"augment": "none"}) == []
    # a setting newer than the run: it ran as the default, so only another value is a change
    assert changed_settings({"strategy": "finetune"}, {"strategy": "finetune", "preprocess": "none", "mixup": 0.0}) == []
    assert changed_settings({}, {"strategy": "features", "preprocess": "clahe"}) == ["preprocess 'none' -> 'clahe'"]


def test_features_views_follow_the_augmentation():
    assert (tl.TrainConfig(strategy="features").augment, tl.TrainConfig(strategy="features").feature_views) == ("xray", 4)
    assert tl.TrainConfig(strategy="features", augment="none").feature_views == 1   # nothing to view: no views
    assert tl.TrainConfig(strategy="features", augment_strength=0).feature_views == 1
    assert tl.TrainConfig(strategy="finetune").feature_views == 1 and tl.TrainConfig(strategy="finetune").augment == "basic"
