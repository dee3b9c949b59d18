"""Recipe settings: augmentation strength, label smoothing and head dropout do what they say."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from transferlab.config import TrainConfig
from transferlab.data.transforms import basic_augment
from transferlab.engine import validation_scores
from transferlab.errors import TransferlabError
from transferlab.loaders import class_weights_for
from transferlab.models.heads import Head
from transferlab.rundir import read_csv
from transferlab.training import train

FAST = dict(image_size=48, batch_size=16, progress=False, val_fraction=0.25)


def _mean_change(strength: float, image: torch.Tensor, n: int = 20) -> float:
    torch.manual_seed(0)
    augment = basic_augment(image.shape[-1], strength)
    return sum((augment(image).float() - image.float()).abs().mean().item() for _ in range(n)) / n


def test_augment_strength_scales_the_change():
    image = torch.randint(0, 256, (1, 48, 48), dtype=torch.uint8)
    assert _mean_change(0.0, image) == 0
    assert 0 < _mean_change(0.5, image) < _mean_change(1.0, image) < _mean_change(2.0, image)


def test_head_dropout_only_while_training():
    torch.manual_seed(0)
    head = Head(8, 2, dropout=0.5)
    assert set(head.state_dict()) == {"weight", "bias"}   # loads wherever an nn.Linear head did
    linear = nn.Linear(8, 2)
    linear.load_state_dict(head.state_dict())
    x = torch.randn(4, 8)
    head.eval()
    assert torch.equal(head(x), linear(x))
    head.train()
    assert not torch.equal(head(x), head(x))


@pytest.mark.parametrize("setting, value", [("augment_strength", -1), ("label_smoothing", 1.0),
                                            ("head_dropout", 1.5), ("batchnorm", "sideways"),
                                            ("batchnorm", "train")])   # features: its backbone never trains
def test_out_of_range_settings_are_one_line_errors(setting, value):
    """(TrainConfig's default strategy is features.)"""
    with pytest.raises(TransferlabError, match=f"^{setting}="):
        TrainConfig(**{setting: value})


def test_label_smoothing_and_dropout_change_training_not_validation_loss(xray_dir, tmp_path, one_thread):
    """The same seed with and without: training differs; validation loss is plain cross-entropy in both."""
    plain = train(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=3,
                  out=str(tmp_path / "plain"), **FAST)
    recipe = train(data=str(xray_dir), model="efficientnet_lite0", strategy="features", epochs=3,
                   label_smoothing=0.2, head_dropout=0.3, out=str(tmp_path / "recipe"), **FAST)
    settings = recipe.read_config()["settings"]
    assert settings["label_smoothing"] == 0.2 and settings["head_dropout"] == 0.3
    a, b = read_csv(plain.history), read_csv(recipe.history)
    assert a[0]["train_loss"] != b[0]["train_loss"]
    # smoothing keeps the targets off 0/1: the training loss cannot approach 0 (here > 0.2 * ln 2 / 2)
    assert all(float(r["train_loss"]) > 0.069 for r in b)
    # the best epoch's validation loss is the class-weighted cross-entropy of the saved validation probabilities,
    # unsmoothed (smoothing at 0.2 would add about 0.2 * the mean of -log p over both classes)
    rows = read_csv(recipe.predictions)
    classes = ["NORMAL", "PNEUMONIA"]
    val = [r for r in rows if r["split"] == "val"]
    probs = torch.tensor([[float(r[f"prob_{c}"]) for c in classes] for r in val], dtype=torch.float64)
    y = torch.tensor([classes.index(r["label"]) for r in val])
    train_labels = np.array([classes.index(r["label"]) for r in rows if r["split"] == "train"])
    expected = validation_scores(probs.log(), y, class_weights_for(train_labels, 2).double())["val_loss"]
    assert float(b[recipe.read_metrics()["best_epoch"] - 1]["val_loss"]) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("strategy", ["finetune", "lpft"])
def test_frozen_batchnorm_keeps_the_pretrained_statistics_and_trains_the_rest(xray_dir, tmp_path, strategy):
    from safetensors.torch import load_file

    from transferlab.models.heads import create_model

    run = train(data=str(xray_dir), model="efficientnet_lite0", strategy=strategy, epochs=1, probe_epochs=2,
                batchnorm="frozen", out=str(tmp_path / "run"), **FAST)
    assert run.read_config()["settings"]["batchnorm"] == "frozen"
    trained, pretrained = load_file(str(run.weights)), create_model("efficientnet_lite0", 2).state_dict()
    statistics = [k for k in pretrained if k.startswith("backbone.") and k.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(trained[k], pretrained[k]) for k in statistics)
    convolutions = [k for k in pretrained if k.startswith("backbone.") and k.endswith("weight") and pretrained[k].ndim == 4]
    assert any(not torch.equal(trained[k], pretrained[k]) for k in convolutions)   # the backbone did train
