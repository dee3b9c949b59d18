"""TrainConfig: the settings of one training run, one field per declaration in settings.py, each value checked
there when it is made; read and written as JSON/YAML."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from .data.preprocess import of_run as preprocess_of
from .data.transforms import augments
from .errors import TransferlabError
from .settings import SETTINGS, STRATEGIES, STRATEGY_GROUPS, in_callers_words, strategy_defaults  # noqa: F401

MODEL_BUDGET_S = 60.0   # `models --measure`: seconds of measuring per model (transferlab.catalog(model_budget_s))
LR_FIND_RANGE = (1e-7, 1.0, 100)   # the LR finder's defaults: first and last learning rate, steps (lrfind.py)
TTA_HOW = ("the mean probability over N views of each image: the image and N-1 random views from the basic training "
           "augmentation (small affine, brightness/contrast; no flips)")
TTA_HELP = (f"test-time augmentation: also score {TTA_HOW}, beside the plain result; a binary run's threshold for it "
            "is re-chosen on validation's N-view probabilities; 1 = none (default: 1)")
STRATEGY_DEFAULTS = strategy_defaults()   # {strategy: {setting: default}} where the default depends on it


class _TrainConfig:
    """Every setting of one training run (settings.SETTINGS: type, default, allowed values, help). Defaults that
    depend on the strategy are filled in when it is made; a value that is not allowed raises a one-line
    TransferlabError naming the setting, before any work starts."""

    @in_callers_words
    def __post_init__(self):
        for setting in SETTINGS.values():   # types, choices, ranges
            setattr(self, setting.name, setting.check(getattr(self, setting.name)))
        if self.batchnorm is None and self.weights == "none" and self.strategy != "features":
            self.batchnorm = "train"   # random initialisation: no pretrained statistics to keep
        if self.feature_views is None and not augments(self.augment, self.augment_strength):
            self.feature_views = 1   # no augmentation: no augmented views either
        for name, value in STRATEGY_DEFAULTS[self.strategy].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self._check_together()
        if self.init:
            self._take_model_from_init()
        # absolute paths: config.json must mean the same files whichever folder the run is used from
        for name in ("data", "cache_dir", "weights_dir", "init"):
            if getattr(self, name):
                setattr(self, name, str(Path(getattr(self, name)).expanduser().resolve()))
        if self.manifest and Path(self.manifest).expanduser().is_file():   # else: a path inside --data
            self.manifest = str(Path(self.manifest).expanduser().resolve())

    def _check_together(self) -> None:
        """Settings allowed on their own but not together."""
        trains_backbone = "needs a strategy that trains the backbone: finetune or lpft"
        processes = self.devices * self.num_nodes
        if self.strategy == "features" and self.batchnorm != "frozen":
            raise TransferlabError(f"--batchnorm train {trains_backbone}")
        if self.unfreeze == "gradual" and self.strategy == "features":
            raise TransferlabError(f"--unfreeze gradual {trains_backbone}")
        for setting in SETTINGS.values():   # mixup: only on images; --feature-views: only on cached features
            value = getattr(self, setting.name)
            if self.strategy not in setting.strategies and value != setting.default_for(self.strategy):
                raise TransferlabError(f"{setting.flag} {value} needs a strategy that "
                                       f"{STRATEGY_GROUPS[setting.strategies]}: {' or '.join(setting.strategies)}")
        if self.feature_views > 1 and not augments(self.augment, self.augment_strength):
            raise TransferlabError(f"--feature-views {self.feature_views} needs views to draw: an --augment other than "
                                   f"none, with --augment-strength above 0")
        if self.unfreeze == "gradual" and processes > 1:
            raise TransferlabError("--unfreeze gradual runs on one device (DDP would need unused parameters found "
                                   "every step)")
        if self.lr == "auto" and processes > 1:
            raise TransferlabError("--lr auto runs the LR finder in one process; run `transferlab lr-find` first and "
                                   "pass its suggestion as --lr")
        if processes > 1 and ":" in self.device:
            raise TransferlabError(f"--device {self.device} names one GPU; with --devices {self.devices} use --device "
                                   f"cuda (the first {self.devices} GPUs; CUDA_VISIBLE_DEVICES chooses others) or cpu")
        if self.resume and self.overwrite:
            raise TransferlabError("--resume continues what --out holds and --overwrite deletes it: choose one")

    def _take_model_from_init(self) -> None:
        """--init RUN: the model, image size and preprocessing are the finished run's (its weights replace ImageNet's)."""
        run = Path(self.init).expanduser()
        if not (run / "model.safetensors").is_file() or not (run / "config.json").is_file():
            raise TransferlabError(f"--init {run}: not a finished run directory (no model.safetensors and config.json)")
        config = json.loads((run / "config.json").read_text())
        model = config["model"]
        if self.image_size not in (None, model["image_size"]):
            raise TransferlabError(f"--init {run} was trained at --image-size {model['image_size']}, not "
                                   f"{self.image_size}: leave --image-size out")
        self.model, self.image_size = model["name"], model["image_size"]
        preprocess = preprocess_of(config)
        if self.preprocess not in ("none", preprocess):
            raise TransferlabError(f"--init {run} was trained with --preprocess {preprocess}, not --preprocess "
                                   f"{self.preprocess}: leave --preprocess out")
        self.preprocess = preprocess   # its weights expect the images preprocessed as they were trained

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        unknown = sorted(set(values) - set(SETTINGS))
        if unknown:
            raise TransferlabError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**values)


TrainConfig = dataclasses.make_dataclass(
    "TrainConfig", [setting.field() for setting in SETTINGS.values()], bases=(_TrainConfig,),
    namespace={"__module__": __name__, "__doc__": _TrainConfig.__doc__})


def read_settings(path: str | Path) -> dict:
    """A YAML or JSON file of settings as a dict (one clear error if it cannot be read)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TransferlabError(f"cannot read settings file {path}: {exc.strerror}") from None
    try:
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise TransferlabError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'YAML'}: "
                               f"{str(exc).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise TransferlabError(f"{path}: expected a mapping of settings")
    return values
