"""Using a finished run: load its model safely, score images, and the decision rule chosen on validation.
(`evaluate`, which scores a run on any set of images, is `analysis.external.evaluate`.)"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import CheckpointError, TransferlabError
from .metrics import score
from .models.heads import TransferModel, create_model
from .rundir import RunDir

NEGATIVE_NAMES = re.compile(r"normal|negative|healthy|benign|control", re.I)


def positive_index(classes: list[str], positive_class: str | None = None) -> int | None:
    """Which class a binary problem treats as positive: the one asked for, else the one not called NORMAL.
    Three or more classes have none (None); asking for one there is an error."""
    if positive_class is not None:
        if positive_class not in classes:
            raise TransferlabError(f"--positive-class {positive_class!r} is not one of the classes {classes}")
        if len(classes) != 2:
            raise TransferlabError(f"--positive-class is only for two classes; {len(classes)} classes "
                                   f"({', '.join(classes)}) are decided by the most probable class")
        return classes.index(positive_class)
    if len(classes) != 2:
        return None
    if NEGATIVE_NAMES.search(classes[1]) and not NEGATIVE_NAMES.search(classes[0]):
        return 0
    return 1


def decide(probs: np.ndarray, pos: int | None, threshold: float | None) -> np.ndarray:
    """Predicted class per row: binary problems call the positive class at `threshold` (chosen on validation),
    otherwise (three or more classes, or no threshold) the most probable class."""
    if threshold is None or pos is None or probs.shape[1] != 2:
        return probs.argmax(axis=1)
    return np.where(probs[:, pos] >= threshold, pos, 1 - pos)


def split_metrics(labels: np.ndarray, probs: np.ndarray, pos: int | None, threshold: float | None,
                  classes: list[str] | None = None) -> dict:
    """Metrics of one split (metrics.score): binary problems on the positive class's probability (at 0.5 and at
    `threshold`), three or more classes by argmax, with per-class metrics named by `classes`."""
    if probs.shape[1] == 2:
        pos = 1 if pos is None else pos
        probs = probs[:, [1 - pos, pos]]
        labels = (labels == pos).astype(int)
    return score(labels, probs, threshold, classes)


def probabilities_and_features(model: TransferModel, pixels: np.ndarray, *, mean, std, device,
                               progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (N, C) and the backbone's features (N, D) of uint8 images, in one pass."""
    import torch

    from .strategies import extract_features

    feats = extract_features(model, pixels, mean=mean, std=std, device=device, progress=progress)
    with torch.inference_mode():
        probs = model.head.to(feats.device)(feats).softmax(1)
    return probs.numpy().astype(np.float64), feats.numpy()


def tta_probabilities(model: TransferModel, pixels: np.ndarray, *, views: int, mean, std, device, seed: int = 0,
                      progress: bool = False) -> np.ndarray:
    """Test-time augmentation: class probabilities (N, C) averaged over `views` views of each image, the image
    itself and views - 1 random views from the training augmentation (data.transforms.basic_augment: small
    affine, brightness/contrast, no flips). Seeded, so the same call gives the same views."""
    import torch

    from .data.transforms import basic_augment

    if views < 1:
        raise TransferlabError(f"--tta must be at least 1 (1 = no augmentation), not {views}")
    total = probabilities_and_features(model, pixels, mean=mean, std=std, device=device, progress=progress)[0]
    augment = basic_augment(pixels.shape[-1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(views - 1):
            view = np.stack([augment(torch.from_numpy(np.array(image))).numpy() for image in pixels])
            total += probabilities_and_features(model, view, mean=mean, std=std, device=device,
                                                progress=progress)[0]
    return total / views


def load_model(run_dir: str | Path) -> tuple[TransferModel, dict]:
    """The run's best model (from model.safetensors, no pickle) and its config.json."""
    run = RunDir(run_dir)
    config = run.read_config()
    if not run.weights.exists():
        raise CheckpointError(f"{run.path} has no model.safetensors: the run did not finish (resume it with --resume)")
    model = create_model(config["model"]["name"], len(config["data"]["classes"]), weights="none")
    try:
        state = load_file(str(run.weights))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(f"{run.weights}: cannot be loaded ({exc})") from None
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:   # tensors of the wrong shape
        raise CheckpointError(f"{run.weights} does not match model {config['model']['name']}: "
                              f"{str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc}") from None
    if missing or unexpected:
        raise CheckpointError(f"{run.weights} does not match model {config['model']['name']}: "
                              f"{len(missing)} missing and {len(unexpected)} unexpected tensors")
    return model.eval(), config
