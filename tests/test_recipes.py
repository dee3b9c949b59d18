"""Training recipes: lpft (linear probe, then fine-tune), gradual unfreezing, and the LR finder (`lr-find`,
`train --lr auto`), through the API, the CLI, a YAML file and a study with its report.

Tiny data (24 images of 32 px), EfficientNet-Lite0 with its genuine weights (so that the head learns something),
1 torch thread: resumed runs are compared with uninterrupted ones bit for bit."""
from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import interrupt_training, make_xray_dataset, sigkill_when
from PIL import Image
from safetensors.torch import load_file

import transferlab as tl
from transferlab import cli, engine
from transferlab.errors import TransferlabError
from transferlab.models.blocks import backbone_blocks
from transferlab.models.heads import create_model
from transferlab.rundir import read_csv
from transferlab.unfreezing import GradualUnfreezing

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(model="efficientnet_lite0", image_size=32, batch_size=8, val_fraction=0.25, test_fraction=0.2,
             seed=1, progress=False)
LPFT = dict(SMALL, strategy="lpft", probe_epochs=4, probe_lr=0.01, epochs=2, lr=1e-3, backbone_lr_factor=1.0)


def cli_args(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        if value is False and key == "progress":
            out.append("--no-progress")
        else:
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out


def results(run: Path) -> dict:
    """What a resumed run must reproduce exactly: everything but the timings (and whether a cache fed them)."""
    metrics = json.loads((run / "metrics.json").read_text())
    timings = ("seconds", "peak_rss_mb", "cuda_peak_mb", "features_from_cache")
    return {"metrics": {k: v for k, v in metrics.items() if k not in timings},
            "history": [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(run / "history.csv")],
            "predictions": (run / "predictions.csv").read_text(),
            "weights": (run / "model.safetensors").read_bytes()}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    return make_xray_dataset(tmp_path_factory.mktemp("tiny"), patients_per_class=6, images_per_patient=2, size=32)


@pytest.fixture(scope="module")
def lpft_run(tiny, tmp_path_factory, one_thread) -> Path:
    return tl.train(data=str(tiny), out=str(tmp_path_factory.mktemp("lpft") / "run"), **LPFT).path


# --- lpft ------------------------------------------------------------------------------------------------------

def test_lpft_phase_1_is_features_then_phase_2_fine_tunes(lpft_run, tiny, tmp_path):
    # lpft's probe is features without augmented views (lpft's --feature-views default, 1)
    features = tl.train(data=str(tiny), out=str(tmp_path / "features"), strategy="features", epochs=4, patience=4,
                        lr=0.01, feature_views=1, **{k: v for k, v in SMALL.items()})
    history = read_csv(lpft_run / "history.csv")
    assert [(int(r["epoch"]), r["phase"]) for r in history] == [(e, "probe") for e in (1, 2, 3, 4)] + [
        (5, "finetune"), (6, "finetune")]
    strip = [{k: v for k, v in row.items() if k not in ("seconds", "phase")} for row in history[:4]]
    assert strip == [{k: v for k, v in row.items() if k != "seconds"} for row in read_csv(features.history)]
    # phase 2 started from the head `features` keeps (its best epoch on validation, the same epoch here)
    probe_head = engine.load_checkpoint(lpft_run / "checkpoints" / "probe" / "best.ckpt")["state_dict"]
    trained = load_file(str(features.weights))
    assert torch.equal(probe_head["net.weight"], trained["head.weight"])
    assert torch.equal(probe_head["net.bias"], trained["head.bias"])
    metrics = json.loads((lpft_run / "metrics.json").read_text())
    assert metrics["epochs_run"] == 6 and metrics["best_epoch"] in (5, 6)   # chosen among phase 2's epochs
    assert metrics["trainable_params"] == metrics["total_params"]
    lpft = load_file(str(lpft_run / "model.safetensors"))
    assert not torch.equal(lpft["backbone._conv_head.weight"], trained["backbone._conv_head.weight"])
    settings = json.loads((lpft_run / "config.json").read_text())["settings"]
    assert (settings["strategy"], settings["probe_epochs"], settings["probe_lr"]) == ("lpft", 4, 0.01)


# The child is the real CLI, pausing in phase PHASE at epoch EPOCH (0-based) so that the test kills it there.
CHILD = """
import sys, time
from pathlib import Path
import torch
torch.set_num_threads(1)
from transferlab import engine
from transferlab.cli import main

marker, phase, epoch = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
step = engine.Classifier.training_step
def pausing_step(self, batch, batch_idx):
    if self.phase == phase and self.current_epoch == epoch:
        marker.touch()
        time.sleep(600)
    return step(self, batch, batch_idx)
engine.Classifier.training_step = pausing_step
sys.exit(main(sys.argv[4:]))
"""


def _killed(tmp_path: Path, phase: str, epoch: int, args: list[str]) -> None:
    sigkill_when(tmp_path / f"in-{phase}-{epoch}",
                 [sys.executable, "-c", CHILD, str(tmp_path / f"in-{phase}-{epoch}"), phase, str(epoch), *args],
                 tmp_path / "child.log", timeout=120)


def test_lpft_killed_in_each_phase_resumes_to_the_same_result(lpft_run, tiny, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--data", str(tiny), "--out", str(out), *cli_args(LPFT)]
    _killed(tmp_path, "probe", 2, args)                      # in phase 1, epoch 3
    assert not (out / "checkpoints" / "last.ckpt").exists()
    assert engine.load_checkpoint(out / "checkpoints" / "probe" / "last.ckpt")["epoch"] == 1
    assert cli.main(args) == 2                              # an unfinished run is protected: --resume
    _killed(tmp_path, "finetune", 1, [*args, "--resume"])    # resumed, then killed in phase 2, epoch 6
    ckpt = engine.load_checkpoint(out / "checkpoints" / "last.ckpt")
    assert ckpt["epoch"] == 0 and [row["phase"] for row in ckpt["history"]] == ["probe"] * 4 + ["finetune"]
    assert cli.main([*args, "--resume"]) == 0
    assert results(out) == results(lpft_run)


# --- gradual unfreezing ----------------------------------------------------------------------------------------

def test_backbone_blocks_for_torchvision_timm_and_efficientnet_lite():
    expected = {"resnet18": ["conv1+bn1", "layer1", "layer2", "layer3", "layer4"],
                "efficientnet_lite0": ["_conv_stem+_bn0", *[f"_blocks.{i}" for i in range(16)], "_conv_head+_bn1"],
                "timm:efficientnet_b0": ["conv_stem+bn1", *[f"blocks.{i}" for i in range(7)], "conv_head+bn2"],
                "mobilenet_v3_small": [*[f"features.{i}" for i in range(13)], "classifier"]}
    for name, names in expected.items():
        backbone = create_model(name, 2, weights="none").backbone
        blocks = backbone_blocks(backbone)
        assert [n for n, _ in blocks] == names, name
        inside = [id(p) for _, modules in blocks for p in modules.parameters()]
        assert sorted(inside) == sorted(id(p) for p in backbone.parameters())   # each parameter exactly once


GRADUAL = dict(SMALL, strategy="finetune", unfreeze="gradual", epochs=3, patience=5, lr=0.01,
               backbone_lr_factor=0.5, block_lr_decay=0.5)
TOP_BLOCKS = ["backbone._conv_head.", "backbone._bn1.", "backbone._blocks.15."]


def _spy(monkeypatch) -> list:
    """(epoch, trainable parameter names, blocks in training mode) at each epoch start, after the callback."""
    seen, start = [], GradualUnfreezing.on_train_epoch_start

    def spy(self, trainer, module):
        start(self, trainer, module)
        net = module.net
        seen.append((trainer.current_epoch, {n for n, p in net.named_parameters() if p.requires_grad},
                     [b.training for b in self.blocks]))
    monkeypatch.setattr(GradualUnfreezing, "on_train_epoch_start", spy)
    return seen


def _check_epoch(epoch: int, trainable: set, modes: list) -> None:
    assert all(n.startswith(("head.", *TOP_BLOCKS[:2 * (epoch > 0) + (epoch > 1)])) for n in trainable), (epoch, trainable)
    assert any(n.startswith("head.") for n in trainable)
    assert any(n.startswith("backbone._conv_head.") for n in trainable) == (epoch >= 1)
    assert any(n.startswith("backbone._blocks.15.") for n in trainable) == (epoch >= 2)
    assert modes == [False] * (18 - epoch) + [True] * epoch    # frozen blocks stay in eval mode


def test_gradual_unfreezing_blocks_learning_rates_and_resume(tiny, tmp_path, monkeypatch):
    seen = _spy(monkeypatch)
    reference = tl.train(data=str(tiny), out=str(tmp_path / "reference"), **GRADUAL)
    assert [e for e, _, _ in seen] == [0, 1, 2]
    for epoch, trainable, modes in seen:
        _check_epoch(epoch, trainable, modes)
    ckpt = engine.load_checkpoint(reference.checkpoints / "last.ckpt")
    groups = ckpt["optimizer_states"][0]["param_groups"]
    assert [g["name"] for g in groups] == [f"backbone.{n}" for n, _ in backbone_blocks(
        create_model("efficientnet_lite0", 2).backbone)] + ["head"]
    lrs = [g["initial_lr"] for g in groups]
    assert lrs[-1] == 0.01 and lrs[-2] == pytest.approx(0.005)   # the head; the top block: lr x backbone factor
    assert all(deeper == pytest.approx(0.5 * upper) for deeper, upper in zip(lrs[:-2], lrs[1:-1]))
    state = ckpt["state_dict"]
    pretrained = create_model("efficientnet_lite0", 2).state_dict()
    for key, trained in (("backbone._blocks.14.", False), ("backbone._blocks.0.", False), ("backbone._conv_head.", True)):
        same = all(torch.equal(state[f"net.{k}"], v) for k, v in pretrained.items() if k.startswith(key))
        assert same != trained, key                              # frozen blocks: weights and BN statistics kept

    # interrupted in epoch 3, resumed: the same blocks train, the optimizer's groups come back, the same result
    seen.clear()
    uninterrupt = interrupt_training(monkeypatch, epoch=2)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        tl.train(data=str(tiny), out=str(tmp_path / "run"), **GRADUAL)
    uninterrupt()
    seen.clear()
    resumed = tl.train(data=str(tiny), out=str(tmp_path / "run"), resume=True, **GRADUAL)
    assert [e for e, _, _ in seen] == [2]
    _check_epoch(*seen[0])
    after = engine.load_checkpoint(resumed.checkpoints / "last.ckpt")["optimizer_states"][0]
    assert after["param_groups"] == groups
    assert {k: int(v["step"]) for k, v in after["state"].items()} == {
        k: int(v["step"]) for k, v in ckpt["optimizer_states"][0]["state"].items()}
    assert results(resumed.path) == results(reference.path)


def test_unfreeze_settings_are_checked():
    with pytest.raises(TransferlabError, match="finetune or lpft"):
        tl.TrainConfig(strategy="features", unfreeze="gradual")
    with pytest.raises(TransferlabError, match="unfreeze= must be"):
        tl.TrainConfig(strategy="finetune", unfreeze="sometimes")
    with pytest.raises(TransferlabError, match="positive number or auto"):
        tl.TrainConfig(lr="fast")
    assert tl.TrainConfig(lr="1e-3").lr == 0.001 and tl.TrainConfig(lr="AUTO").lr == "auto"   # as YAML gives them


# --- the LR finder ---------------------------------------------------------------------------------------------

def test_lr_find_command_writes_the_curve_and_a_suggestion(tiny, tmp_path, capsys):
    out = tmp_path / "finder"
    assert cli.main(["lr-find", "--data", str(tiny), "--out", str(out), "--strategy", "features", "--steps", "30",
                     *cli_args(SMALL)]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "lr_find.json").read_text())
    lr = summary["suggested_lr"]
    assert math.isfinite(lr) and 1e-7 <= lr <= 1 and f"suggested learning rate: {lr:.3g}" in printed
    curve = read_csv(out / "lr_find.csv")
    assert 12 < len(curve) == summary["steps_run"] <= 30 and lr in [float(r["lr"]) for r in curve]
    assert [float(r["lr"]) for r in curve] == sorted(float(r["lr"]) for r in curve)
    assert Image.open(out / "lr_find.png").size[0] > 300
    for strategy in ("finetune", "lpft"):   # lpft: after its phase 1, from the probed head
        finding = tl.lr_find(data=str(tiny), strategy=strategy, steps=20, probe_epochs=2,
                             **{k: v for k, v in SMALL.items()})
        assert math.isfinite(finding.suggested_lr) and finding.suggested_lr > 0 and finding.steps_run <= 20
    parser = next(a for a in cli.build_parser()._actions if a.dest == "command").choices["lr-find"]
    assert "(default: 100)" in parser.format_help() and "--lr LR" not in parser.format_help()


def test_lr_find_treats_batchnorm_statistics_as_training_does(tiny, monkeypatch):
    from transferlab.lrfind import RangeTest

    modes, start = [], RangeTest.on_train_batch_start

    def record(self, batch, batch_idx):
        modes.append({m.training for m in self.net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)})
        return start(self, batch, batch_idx)
    monkeypatch.setattr(RangeTest, "on_train_batch_start", record)
    for batchnorm, training in (("frozen", False), ("train", True)):
        modes.clear()
        tl.lr_find(data=str(tiny), strategy="finetune", steps=20, batchnorm=batchnorm, **SMALL)
        assert modes and all(seen == {training} for seen in modes), batchnorm


def test_suggestion_is_the_steepest_descent_per_decade():
    import numpy as np

    from transferlab.lrfind import steepest_descent

    lrs = np.logspace(-7, 0, 100)
    losses = 0.7 - 0.3 / (1 + np.exp(-(np.log10(lrs) + 2) * 3))   # falls fastest at 1e-2
    losses[15] -= 1e-4                                                 # a wiggle at 1.4e-6
    assert steepest_descent(list(lrs), list(losses)) == pytest.approx(1e-2, rel=0.2)
    # Lightning's own rule differentiates by lr itself: the wiggle among the tiny rates wins
    assert lrs[np.argmin(np.gradient(losses[10:-1], lrs[10:-1])) + 10] < 1e-5


def test_train_lr_auto_from_a_yaml_file_records_the_finder_and_starts_as_usual(tiny, tmp_path, capsys):
    settings = dict(LPFT, lr="auto", probe_epochs=2, data=str(tiny), out=str(tmp_path / "auto"))
    (tmp_path / "auto.yaml").write_text(yaml.safe_dump(settings))
    assert cli.main(["train", "--config", str(tmp_path / "auto.yaml")]) == 0
    config = json.loads((tmp_path / "auto" / "config.json").read_text())
    found = config["lr_find"]
    assert config["settings"]["lr"] == "auto" and found["plot"] == "lr_find.png"
    assert all((tmp_path / "auto" / found[k]).is_file() for k in ("plot", "curve", "summary"))
    lr = found["suggested_lr"]
    assert math.isfinite(lr) and lr > 0
    assert json.loads((tmp_path / "auto" / "metrics.json").read_text())["seconds"]["lr_find"] > 0
    # the finder worked on a copy: with its suggestion given as --lr, training is the same to the last bit
    same = tl.train(**{**settings, "lr": lr, "out": str(tmp_path / "given")})
    assert results(same.path) == results(tmp_path / "auto")
    # phase 2 trained at the suggestion (history's lr: the backbone's, after the first of 2 cosine steps)
    assert float(read_csv(same.history)[2]["lr"]) == pytest.approx(lr * 0.5)


# --- a study with lpft, and its report ---------------------------------------------------------------------------

def test_study_with_lpft_reports_it_in_sections_b_to_d(tiny, tmp_path, capsys):
    out = tmp_path / "study"
    assert cli.main(["study", "--data", str(tiny), "--models", "efficientnet_lite0", "--strategies",
                     "finetune,features,lpft", "--seeds", "1", "--out", str(out), "--no-catalog", "--epochs", "2",
                     "--probe-epochs", "3", *cli_args({k: v for k, v in SMALL.items() if k not in ("model", "seed")})]) == 0
    rows = read_csv(out / "results.csv")
    assert sorted(r["strategy"] for r in rows) == ["features", "finetune", "lpft"]
    html = (out / "report.html").read_text()
    sections = [html.index(f'id="section-{s}"') for s in ("B", "C", "LPFT", "D", "E")]
    assert sections == sorted(sections)
    lpft = html[sections[2]:sections[3]]
    assert "B+C — Linear probe, then fine-tuning (LP-FT)" in lpft and "efficientnet_lite0 — lpft" in lpft
    assert "phase 2" in lpft and "data:image/png;base64," in lpft
    comparison = html[sections[3]:sections[4]]
    assert comparison.count("<td>lpft</td>") == 1                       # its row in the comparison table
    for pair in (("finetune", "lpft"), ("features", "lpft"), ("finetune", "features")):   # paired McNemar tests
        assert f"<td>efficientnet_lite0 {pair[0]}</td><td>efficientnet_lite0 {pair[1]}</td>" in comparison, pair
    methods = html[html.index('id="section-methods"'):]
    assert "probe_epochs" in methods and "LP-FT (Kumar et al. 2022)" in methods
    analysis = json.loads((out / "analysis.json").read_text())
    assert {t["b"] for t in analysis["mcnemar"]} == {"efficientnet_lite0 features", "efficientnet_lite0 lpft"}
