"""Using a finished run: load its model safely, evaluate it on a split, predict new images."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.torch import load_file

from .config import TrainConfig, write_json
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


def evaluate(run_dir: str | Path, *, data: str | None = None, split: str = "test", device: str = "auto",
             progress: bool = True) -> dict:
    """Metrics of a finished run on a split of `data` (default: the run's own data and splits).

    Splits are rebuilt with the run's saved settings and seed, so "val" and "test" are the same images the
    run used. The decision threshold is the one the run chose on its validation split.
    """
    from .data.transforms import ImageTensorDataset
    from .engine import predict_probs, resolve_device
    from .training import prepare_data

    run = RunDir(run_dir)
    model, config = load_model(run)
    settings = dict(config["settings"], data=data or config["settings"]["data"], max_images=None,
                    progress=progress, resume=False)
    cfg = TrainConfig.from_dict(settings)
    prepared = prepare_data(cfg, config["model"]["image_size"])
    if split not in prepared.pixels:
        raise TransferlabError(f"{cfg.data} has no {split!r} split (it has {', '.join(prepared.pixels)})")
    if prepared.index.classes != config["data"]["classes"]:
        raise TransferlabError(f"{cfg.data} has classes {prepared.index.classes}, the run was trained on "
                               f"{config['data']['classes']}")
    dataset = ImageTensorDataset(prepared.pixels[split], prepared.labels(split),
                                 mean=config["model"]["mean"], std=config["model"]["std"])
    probs = predict_probs(model, dataset, device=resolve_device(device), progress=progress, desc=f"predict {split}")
    metrics_json = run.read_metrics()
    pos = positive_index(config["data"]["classes"], metrics_json["positive_class"])
    result = split_metrics(prepared.labels(split), probs, pos, metrics_json["threshold"], config["data"]["classes"])
    result["data"] = str(prepared.index.root)
    write_json(run.path / f"eval-{split}.json", result)
    return result
