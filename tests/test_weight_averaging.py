"""Recipe settings on training images: weight averaging (--weight-averaging ema|swa, on Lightning's WeightAveraging)
and mixup/cutmix (--mixup, --cutmix). They train, they change what they say, the saved model is the averaged one at
the best epoch, a resumed run is the uninterrupted one, and features (no images to act on) refuses them.

Tiny data (24 images of 32 px, 2 steps an epoch), EfficientNet-Lite0, 1 torch thread."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import interrupt_training, make_xray_dataset
from safetensors.torch import load_file
from test_recipes import SMALL, cli_args, results

import transferlab as tl
from transferlab import averaging, cli, engine, training
from transferlab.errors import TransferlabError
from transferlab.report.blocks import NOT_APPLICABLE
from transferlab.report.sections.methods import _setting
from transferlab.rundir import read_csv
from transferlab.study.config import train_config

pytestmark = pytest.mark.usefixtures("one_thread")

FINETUNE = dict(SMALL, strategy="finetune", epochs=2, patience=5, lr=0.01)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_xray_dataset(tmp_path_factory.mktemp("tiny"), patients_per_class=6, images_per_patient=2, size=32)


@pytest.fixture(scope="module")
def plain(tiny, tmp_path_factory):
    return tl.train(data=str(tiny), out=str(tmp_path_factory.mktemp("plain") / "run"), **FINETUNE)


# --- mixup, cutmix ---------------------------------------------------------------------------------------------

def test_mixup_and_cutmix_train_from_the_command_line_and_change_the_training_loss(tiny, plain, tmp_path):
    out = tmp_path / "run"
    assert cli.main(["train", "--data", str(tiny), "--out", str(out), *cli_args(FINETUNE),
                     "--mixup", "0.2", "--cutmix", "1.0"]) == 0
    settings = json.loads((out / "config.json").read_text())["settings"]
    assert (settings["mixup"], settings["cutmix"], settings["weight_averaging"]) == (0.2, 1.0, "none")
    mixed, unmixed = read_csv(out / "history.csv"), read_csv(plain.history)
    assert len(mixed) == 2 and mixed[0]["train_loss"] != unmixed[0]["train_loss"]   # the same seed, other batches
    assert (out / "model.safetensors").is_file()


def test_mixed_batches_are_mixup_or_cutmix_with_soft_targets():
    x, y = torch.randn(8, 3, 16, 16), torch.tensor([0, 1] * 4)
    torch.manual_seed(0)
    blended, target = engine.mixed(x, y, mixup=0.4, cutmix=0.0, num_classes=2)
    assert target.shape == (8, 2) and torch.allclose(target.sum(1), torch.ones(8))
    lam = target[0, 0].item()   # image 0 (class 0) blended with image 7 (class 1), everywhere
    assert 0 < lam < 1 and torch.allclose(blended[0], lam * x[0] + (1 - lam) * x[7], atol=1e-5)
    kinds = set()
    for seed in range(20):   # both on: each batch is one or the other
        torch.manual_seed(seed)
        blended, _ = engine.mixed(x, y, mixup=0.4, cutmix=1.0, num_classes=2)
        kinds.add("cutmix" if (blended == x).any() else "mixup")   # cutmix keeps the pixels outside its box
    assert kinds == {"mixup", "cutmix"}


# --- weight averaging ------------------------------------------------------------------------------------------

def _steps(monkeypatch) -> list:
    """(epoch, the trained weights) after every optimizer step, whatever callbacks run."""
    seen = []

    def after_step(self, outputs, batch, batch_idx):
        seen.append((self.current_epoch, {k: v.detach().clone() for k, v in self.net.state_dict().items()}))
    monkeypatch.setattr(engine.Classifier, "on_train_batch_end", after_step, raising=False)
    return seen


def _averages(kind: str, steps: list, epochs: int) -> dict[int, dict]:
    """The average at the end of each epoch (1-based), computed here from the weights after every step."""
    first = 0 if kind == "ema" else int(epochs * averaging.SWA_FROM)
    average, n, ends = None, 0, {}
    for epoch, weights in steps:
        if average is None or epoch < first:
            average, n = {k: v.clone() for k, v in weights.items()}, 1
        else:
            for k, v in weights.items():
                if v.is_floating_point():
                    average[k] = (average[k] * averaging.EMA_DECAY + v * (1 - averaging.EMA_DECAY) if kind == "ema"
                                  else average[k] + (v - average[k]) / (n + 1))
                else:
                    average[k] = v.clone()
            n += 1
        ends[epoch + 1] = {k: v.clone() for k, v in average.items()}
    return ends


def _close(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k].double(), b[k].double(), atol=1e-6) for k in a)


@pytest.mark.parametrize("kind, epochs", [("ema", 2), ("swa", 3)])   # swa, 3 epochs: the last one averaged
def test_the_saved_model_is_the_average_at_the_best_epoch_and_validation_scores_it(kind, epochs, tiny, plain,
                                                                                  tmp_path, monkeypatch):
    steps = _steps(monkeypatch)
    run = tl.train(data=str(tiny), out=str(tmp_path / "run"), **dict(FINETUNE, epochs=epochs), weight_averaging=kind)
    ends = _averages(kind, steps, epochs)
    assert len(steps) == 2 * epochs
    saved = load_file(str(run.weights))
    best = run.read_metrics()["best_epoch"]
    assert _close(saved, ends[best])
    last = engine.load_checkpoint(run.checkpoints / "last.ckpt")   # the average beside the weights being trained
    net = lambda state: {k[4:]: v for k, v in state.items() if k.startswith("net.")}   # noqa: E731
    assert _close(net(last["state_dict"]), ends[epochs])
    assert _close(net(last["current_model_state"]), steps[-1][1])
    assert not _close(ends[epochs], steps[-1][1])   # averaging moved the weights
    if epochs == 2:
        assert not _close(saved, load_file(str(plain.weights)))
    # validation scored the average: the best epoch's val_loss is that of the saved model's validation predictions
    rows = [r for r in read_csv(run.predictions) if r["split"] == "val"]
    probs = torch.tensor([[float(r["prob_NORMAL"]), float(r["prob_PNEUMONIA"])] for r in rows], dtype=torch.float64)
    y = torch.tensor([["NORMAL", "PNEUMONIA"].index(r["label"]) for r in rows])
    train_labels = torch.tensor([["NORMAL", "PNEUMONIA"].index(r["label"]) for r in read_csv(run.predictions)
                                 if r["split"] == "train"])
    weights = torch.bincount(train_labels).double().reciprocal() * len(train_labels) / 2
    expected = engine.validation_scores(probs.log(), y, weights)["val_loss"]
    assert float(read_csv(run.history)[best - 1]["val_loss"]) == pytest.approx(expected, rel=1e-4)


def test_ema_with_mixup_and_cutmix_resumes_to_the_same_result(tiny, tmp_path, monkeypatch):
    settings = dict(FINETUNE, weight_averaging="ema", mixup=0.2, cutmix=1.0)
    reference = tl.train(data=str(tiny), out=str(tmp_path / "reference"), **settings)
    uninterrupt = interrupt_training(monkeypatch, epoch=1)
    with pytest.raises((KeyboardInterrupt, SystemExit)):
        tl.train(data=str(tiny), out=str(tmp_path / "run"), **settings)
    uninterrupt()
    assert "averaging_state" in engine.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    resumed = tl.train(data=str(tiny), out=str(tmp_path / "run"), resume=True, **settings)
    assert results(resumed.path) == results(reference.path)


# --- what features refuses, a study and the report -------------------------------------------------------------

@pytest.mark.parametrize("setting, value, flag", [("mixup", 0.2, "--mixup 0.2"), ("cutmix", 1.0, "--cutmix 1.0"),
                                                  ("weight_averaging", "ema", "--weight-averaging ema")])
def test_features_refuses_them_before_any_work(setting, value, flag, tmp_path, capsys):
    message = f"{flag} needs a strategy that trains on images: finetune or lpft"
    out = tmp_path / "out"
    assert cli.main(["train", "--data", str(tmp_path / "no-data"), "--out", str(out), "--strategy", "features",
                     flag.split()[0], str(value)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [f"error: {message}"]
    with pytest.raises(TransferlabError, match=f"^{setting}=.* needs a strategy that trains on images"):
        tl.train(data=str(tmp_path / "no-data"), out=str(out), strategy="features", **{setting: value})
    assert not out.exists()


@pytest.mark.parametrize("setting, value", [("mixup", -1), ("cutmix", -0.5), ("weight_averaging", "foo")])
def test_bad_values_are_one_line_errors(setting, value):
    with pytest.raises(TransferlabError, match=f"^{setting}= must be") as err:
        tl.TrainConfig(strategy="finetune", **{setting: value})
    assert "\n" not in str(err.value)


def test_a_study_leaves_them_out_of_its_features_runs_and_the_report_says_so(tmp_path):
    study = tl.StudyConfig(data=str(tmp_path), models=["efficientnet_lite0"], out=str(tmp_path / "study"),
                           strategies=["finetune", "features", "lpft"],
                           train={"mixup": 0.2, "cutmix": 1.0, "weight_averaging": "swa"})
    for strategy, expected in (("finetune", (0.2, 1.0, "swa")), ("lpft", (0.2, 1.0, "swa")),
                               ("features", (0.0, 0.0, "none"))):
        cfg = train_config(study, "efficientnet_lite0", strategy, 0)
        assert (cfg.mixup, cfg.cutmix, cfg.weight_averaging) == expected, strategy
    config = {"settings": {"mixup": 0.2, "weight_averaging": "ema"}}
    assert _setting("finetune", "mixup", config) == "0.2" and _setting("lpft", "weight_averaging", config) == "ema"
    assert _setting("features", "mixup", config) == _setting("features", "weight_averaging", config) == NOT_APPLICABLE


def test_lpft_averages_and_mixes_in_phase_2_only(tiny, tmp_path, monkeypatch):
    stages = []
    stage = training._stage

    def spy(cfg, model, strategy, *args, **kwargs):
        made = stage(cfg, model, strategy, *args, **kwargs)
        stages.append((kwargs.get("phase"), made.module.mixup,
                       [type(c).__name__ for c in made.callbacks if isinstance(c, averaging.Averaging)]))
        return made
    monkeypatch.setattr(training, "_stage", spy)
    tl.train(data=str(tiny), out=str(tmp_path / "run"), **dict(SMALL, strategy="lpft", probe_epochs=2, epochs=1),
             weight_averaging="ema", mixup=0.2)
    assert stages == [("probe", 0.0, []), ("finetune", 0.2, ["Averaging"])]
