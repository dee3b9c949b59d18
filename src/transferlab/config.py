"""Settings of one training run, with per-strategy defaults; read and written as JSON/YAML."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

from .data.discover import DEFAULT_PATIENT_PATTERN
from .errors import TransferlabError

STRATEGIES = ("finetune", "features", "lpft")
UNFREEZE = ("none", "gradual")
BATCHNORM = ("train", "frozen")
MODEL_BUDGET_S = 60.0   # `models --measure`: seconds of measuring per model (model_catalog.catalog(model_budget_s))
LR_FIND_RANGE = (1e-7, 1.0, 100)   # the LR finder's defaults: first and last learning rate, steps (lrfind.py)
TTA_HELP = ("test-time augmentation: also score the mean probability over N views of each image (the image and "
            "N-1 random views from the training augmentation, no flips), beside the plain result; a binary run's "
            "threshold for it is re-chosen on validation's N-view probabilities; 1 = none (default: 1)")

# Defaults that differ by strategy: the head alone on cached features trains in milliseconds per epoch,
# so it can afford many epochs and a large learning rate; the whole network cannot. lpft's settings are those
# of its phase 2, which starts from a trained head: a lower learning rate (Kumar et al. 2022).
# features' lr and the frozen BatchNorm statistics were chosen on validation: BENCHMARKS.md, "Recipes".
STRATEGY_DEFAULTS = {
    "finetune": {"epochs": 10, "batch_size": 32, "lr": 1e-3, "patience": 3, "batchnorm": "frozen"},
    "features": {"epochs": 30, "batch_size": 64, "lr": 3e-3, "patience": 8, "batchnorm": "frozen"},
    "lpft": {"epochs": 10, "batch_size": 32, "lr": 1e-4, "patience": 3, "batchnorm": "frozen"},
}


@dataclass
class TrainConfig:
    data: str = ""
    model: str = "efficientnet_lite0"
    strategy: str = "features"
    out: str = ""
    weights: str = "default"          # "default" (ImageNet), "none" (random init), or a torchvision weights name
    weights_dir: str | None = None
    init: str | None = None           # a finished run to start from: its weights and head; its model and image size
    epochs: int | None = None         # None: the strategy's default
    batch_size: int | None = None
    lr: float | str | None = None     # learning rate of the head; "auto": the LR finder's suggestion (lrfind.py)
    backbone_lr_factor: float = 0.1   # finetune, lpft: backbone lr = lr * factor
    probe_epochs: int = 30            # lpft phase 1: epochs of the head on cached features (no early stopping)
    probe_lr: float = STRATEGY_DEFAULTS["features"]["lr"]   # lpft phase 1: its learning rate (as features)
    unfreeze: str = "none"            # finetune, lpft: none | gradual (the head first, then blocks top-down)
    batchnorm: str | None = None      # train (batch statistics) | frozen (the pretrained ones, kept); None: the
                                      # strategy's (frozen), but train with --weights none
    unfreeze_every: int = 1           # gradual: epochs between unfreezing one more backbone block
    block_lr_decay: float = 0.8       # gradual: each deeper block's lr = this x the lr of the block above
    weight_decay: float = 1e-4
    patience: int | None = None       # early stopping on the monitored validation metric
    monitor: str = "val_loss"         # val_loss | val_auc | val_balanced_accuracy
    balance: str = "weights"          # class imbalance: weights (weighted loss) | sampler | none
    augment: bool = True
    augment_strength: float = 1.0     # finetune: scales the augmentation's ranges (rotation, shift, zoom, jitter)
    label_smoothing: float = 0.0      # of the training loss (validation loss stays plain cross-entropy)
    head_dropout: float = 0.0         # dropout on the head's input while training
    image_size: int | None = None     # None: the model's own input size
    val_fraction: float = 0.15
    test_fraction: float = 0.15       # data without test/: carve a patient-disjoint test split (0: none)
    official_val: str = "auto"        # auto | keep | merge | drop
    patient_pattern: str = DEFAULT_PATIENT_PATTERN
    manifest: str | None = None
    positive_class: str | None = None  # binary problems; None: the class that is not NORMAL, else the second
    threshold_method: str = "youden"  # youden | f1, always chosen on validation
    seed: int = 0                     # initialisation, data order, augmentation
    split_seed: int | None = None     # the validation/test split; None: same as seed. A study fixes it so
                                      # that every run is scored on the same test images (paired tests)
    device: str = "auto"              # auto | cpu | cuda | cuda:N
    precision: str = "auto"           # auto: 16-mixed on CUDA, 32-true on CPU
    devices: int = 1                  # processes per node: DDP when devices x num_nodes > 1
    num_nodes: int = 1
    compile: bool = False             # torch.compile the trained network
    num_workers: int | None = None
    threads: int | None = None        # CPU threads for torch; None: torch's default, reduced to the CPUs free
    max_images: int | None = None     # per split, for quick trials
    skip_bad: bool = False
    cache_dir: str | None = None      # on-disk cache of decoded images and features; None: ~/.cache/transferlab
    resume: bool = False
    progress: bool = True
    logger: list[str] | None = None   # experiment logs beside history.csv: tensorboard, csv, mlflow, wandb
    experiment: str | None = None     # their experiment name; None: "transferlab" (a study: its folder's name)
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise TransferlabError(f"--strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.batchnorm is None and self.weights == "none" and self.strategy != "features":
            self.batchnorm = "train"   # random initialisation: no pretrained statistics to keep
        for name, value in STRATEGY_DEFAULTS[self.strategy].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if not 0 < self.val_fraction < 1:
            raise TransferlabError(f"--val-fraction must be between 0 and 1, not {self.val_fraction}")
        if not 0 <= self.test_fraction < 1:
            raise TransferlabError(f"--test-fraction must be in [0, 1), not {self.test_fraction}")
        if self.epochs < 1 or self.batch_size < 1:
            raise TransferlabError("--epochs and --batch-size must be at least 1")
        if self.augment_strength < 0:
            raise TransferlabError(f"--augment-strength must be at least 0, not {self.augment_strength}")
        if not 0 <= self.label_smoothing < 1:
            raise TransferlabError(f"--label-smoothing must be in [0, 1), not {self.label_smoothing}")
        if not 0 <= self.head_dropout < 1:
            raise TransferlabError(f"--head-dropout must be in [0, 1), not {self.head_dropout}")
        self.lr = parse_lr(self.lr)
        if self.probe_epochs < 1 or not self.probe_lr > 0:
            raise TransferlabError("--probe-epochs must be at least 1 and --probe-lr positive")
        if self.strategy == "features" and self.batchnorm != "frozen":
            raise TransferlabError("--batchnorm train needs a strategy that trains the backbone: finetune or lpft")
        if self.batchnorm not in BATCHNORM:
            raise TransferlabError(f"--batchnorm must be one of {', '.join(BATCHNORM)}, not {self.batchnorm!r}")
        if self.unfreeze not in UNFREEZE:
            raise TransferlabError(f"--unfreeze must be one of {', '.join(UNFREEZE)}, not {self.unfreeze!r}")
        if self.unfreeze == "gradual":
            if self.strategy == "features":
                raise TransferlabError("--unfreeze gradual needs a strategy that trains the backbone: finetune or lpft")
            if self.devices * self.num_nodes > 1:
                raise TransferlabError("--unfreeze gradual runs on one device (DDP would need unused parameters found "
                                       "every step)")
            if self.unfreeze_every < 1 or not 0 < self.block_lr_decay <= 1:
                raise TransferlabError("--unfreeze-every must be at least 1 and --block-lr-decay in (0, 1]")
        if self.lr == "auto" and self.devices * self.num_nodes > 1:
            raise TransferlabError("--lr auto runs the LR finder in one process; run `transferlab lr-find` first and "
                                   "pass its suggestion as --lr")
        if self.devices < 1 or self.num_nodes < 1:
            raise TransferlabError(f"--devices and --num-nodes must be at least 1, not {self.devices} and {self.num_nodes}")
        if self.devices * self.num_nodes > 1 and ":" in self.device:
            raise TransferlabError(f"--device {self.device} names one GPU; with --devices {self.devices} use --device "
                                   f"cuda (the first {self.devices} GPUs; CUDA_VISIBLE_DEVICES chooses others) or cpu")
        from .loggers import parse_loggers   # not at the top: loggers writes its state with write_json

        self.logger = parse_loggers(self.logger)
        if self.threads is not None and self.threads < 1:
            raise TransferlabError(f"--threads must be at least 1, not {self.threads}")
        if self.init:
            self._take_model_from_init()
        # absolute paths: config.json must mean the same files whichever folder the run is used from
        for name in ("data", "cache_dir", "weights_dir", "init"):
            if getattr(self, name):
                setattr(self, name, str(Path(getattr(self, name)).expanduser().resolve()))
        if self.manifest and Path(self.manifest).expanduser().is_file():   # else: a path inside --data
            self.manifest = str(Path(self.manifest).expanduser().resolve())

    def _take_model_from_init(self) -> None:
        """--init RUN: the model and image size are the finished run's (its weights replace ImageNet's)."""
        run = Path(self.init).expanduser()
        if not (run / "model.safetensors").is_file() or not (run / "config.json").is_file():
            raise TransferlabError(f"--init {run}: not a finished run directory (no model.safetensors and config.json)")
        model = json.loads((run / "config.json").read_text())["model"]
        if self.image_size not in (None, model["image_size"]):
            raise TransferlabError(f"--init {run} was trained at --image-size {model['image_size']}, not "
                                   f"{self.image_size}: leave --image-size out")
        self.model, self.image_size = model["name"], model["image_size"]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TransferlabError(f"unknown setting(s): {', '.join(unknown)}")
        return cls(**values)


def parse_lr(value) -> float | str:
    """A learning rate: a positive number, or "auto" (the LR finder's suggestion). YAML reads 1e-3 as a string."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        lr = float(value)
    except (TypeError, ValueError):
        raise TransferlabError(f"--lr must be a positive number or auto, not {value!r}") from None
    if not lr > 0:
        raise TransferlabError(f"--lr must be positive, not {value!r}")
    return lr


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


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (tmp file + rename), so an interrupted run never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)
