"""Every training setting, declared once: its type, default (per strategy where they differ), allowed values, help
text and flag, whether a different value changes what a run computes, and whether the report's Methods table shows it.

Who reads SETTINGS:
    config.py       TrainConfig has one field per setting and checks every value on construction, so the CLI, a
                    YAML file and the Python API get the same one-line error before any work starts
    cli/            the options of `train`, `lr-find` and `study` (add_options) and their "(default: ...)"
    training.py, study/plan.py   which settings may differ in a run that is resumed or kept (changed_settings)
    report/sections/methods.py   the rows of the Methods table (report=True)

Adding a setting is one Setting(...) below, placed where its --help line should appear, plus its use (cfg.NAME).
Declare what its values may be (choices, a range, or parse), changes_results=False when a run made with another
value is still the same run (paths, speed, logging), report=True for the Methods table. The flag is --NAME with
dashes; a bool's is --NAME, or --no-NAME when it defaults to True. For example:

    Setting("head_dropout", float, 0.0, "dropout on the new head's input while training", at_least=0, below=1,
            report=True)

strategies=TRAINS_ON_IMAGES for a setting that only acts where the network trains on images (mixup), =ON_FEATURES
where a head trains on cached features (--feature-views): TrainConfig refuses another value than the default with
the other strategy, a study leaves it out of that strategy's runs, and the report shows it as not applicable there.

A rule between settings (features cannot train BatchNorm) goes into TrainConfig._check_together (config.py).

Errors name settings by their flags (--val-fraction); called from Python (in_callers_words), the same message
names keywords instead (val_fraction=).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import numbers
import os
import re
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Callable

from .data.discover import DEFAULT_PATIENT_PATTERN
from .data.preprocess import PREPROCESSING
from .data.transforms import AUGMENTATIONS
from .errors import TransferlabError
from .loggers import DEFAULT_EXPERIMENT, LOGGERS, parse_loggers

STRATEGIES = ("finetune", "features", "lpft")
TRAINS_ON_IMAGES = ("finetune", "lpft")   # lpft: its phase 2
ON_FEATURES = ("features", "lpft")        # lpft: its probe (phase 1)
STRATEGY_GROUPS = {TRAINS_ON_IMAGES: "trains on images", ON_FEATURES: "trains a head on cached features",
                   STRATEGIES: "any"}
AUGMENT_CHOICES = (*AUGMENTATIONS, "none")


class PerStrategy(dict):
    """A default that depends on the strategy: PerStrategy(finetune=10, features=30, lpft=10)."""

    def __init__(self, **values):
        assert tuple(values) == STRATEGIES, values
        super().__init__(values)


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


def parse_augment(value) -> str:
    """--augment: a name from AUGMENT_CHOICES; true/false (the yes/no setting of earlier versions) mean basic/none."""
    if isinstance(value, bool):
        return "basic" if value else "none"
    if not isinstance(value, str) or value not in AUGMENT_CHOICES:
        raise TransferlabError(f"--augment must be one of {', '.join(AUGMENT_CHOICES)}, not {value!r}")
    return value


@dataclass(frozen=True)
class Setting:
    """One training setting: a TrainConfig field, a command-line option, a checked value."""
    name: str
    type: type                       # of a value: bool, int, float, str, list (of names), dict
    default: Any = None              # None: unset (none_means says what that means); PerStrategy: by strategy
    help: str = ""                   # --help text; "(default: ...)" is added to it
    choices: tuple = ()
    at_least: float | None = None    # the range, if any: at_least or above (exclusive), at_most or below
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    parse: Callable | None = None    # instead of the checks above: value -> the value kept, or TransferlabError
    none_means: str = ""             # in --help, what a None default means
    option: bool = True              # False: not an option of train/lr-find/study (data, out: each command its own)
    changes_results: bool = True     # False: a run made with another value is still the same run (resume, study)
    report: bool = False             # a row of the report's Methods table
    strategies: tuple = STRATEGIES   # the strategies it acts on (STRATEGY_GROUPS); another refuses it
    before: Any = None               # what runs made before the setting existed ran with (None: its default)


    def default_for(self, strategy: str):
        """The default with `strategy`."""
        return self.default[strategy] if isinstance(self.default, PerStrategy) else self.default

    @property
    def flag(self) -> str:
        dashed = self.name.replace("_", "-")
        return f"--no-{dashed}" if self.type is bool and self.default is True else f"--{dashed}"

    @property
    def annotation(self):
        kind = list[str] if self.type is list else self.type
        return kind | None if self.default is None or isinstance(self.default, PerStrategy) else kind

    def field(self):
        """(name, annotation, dataclass field) for TrainConfig; per-strategy defaults are None until it fills them."""
        if self.type is dict:
            return self.name, self.annotation, field(default_factory=dict)
        return self.name, self.annotation, field(default=None if isinstance(self.default, PerStrategy) else self.default)

    def check(self, value):
        """`value` as the setting keeps it, or a one-line TransferlabError that names the setting."""
        if value is None:
            if self.default is None or isinstance(self.default, PerStrategy):
                return None
            raise TransferlabError(f"{self.label} must be {self._kind()}, not None")
        if self.parse is not None:
            return self.parse(value)
        value = self._typed(value)
        if self.choices and value not in self.choices:
            raise TransferlabError(f"{self.flag} must be one of {', '.join(map(str, self.choices))}, not {value!r}")
        if not self._in_range(value):
            raise TransferlabError(f"{self.flag} must be {self._range()}, not {value!r}")
        return value

    @property
    def label(self) -> str:
        """How messages name it: its flag (a bool's flag says one value, so its name)."""
        return self.name if self.type is bool else self.flag

    def _typed(self, value):
        kind = self.type
        if kind is bool and isinstance(value, bool) \
                or kind is int and isinstance(value, numbers.Integral) and not isinstance(value, bool) \
                or kind is float and isinstance(value, numbers.Real) and not isinstance(value, bool) \
                or kind is dict and isinstance(value, dict):
            return value
        if kind is float and isinstance(value, str):   # YAML reads 1e-4 (no dot) as a string
            with contextlib.suppress(ValueError):
                return float(value)
        if kind is str and isinstance(value, (str, os.PathLike, numbers.Number)) and not isinstance(value, bool):
            return os.fspath(value) if isinstance(value, os.PathLike) else str(value)
        raise TransferlabError(f"{self.label} must be {self._kind()}, not {value!r}")

    def _kind(self) -> str:
        return {bool: "true or false", int: "a whole number", float: "a number", dict: "a mapping"}.get(
            self.type, "a list of names" if self.type is list else "a string")

    def _in_range(self, value) -> bool:
        return ((self.at_least is None or value >= self.at_least) and (self.above is None or value > self.above)
                and (self.at_most is None or value <= self.at_most) and (self.below is None or value < self.below))

    def _range(self) -> str:
        low, high = (self.at_least, self.above), (self.at_most, self.below)
        if low == (None, None):
            return f"at most {self.at_most:g}" if self.at_most is not None else f"below {self.below:g}"
        if high == (None, None):
            return f"at least {self.at_least:g}" if self.at_least is not None else (
                "positive" if self.above == 0 else f"above {self.above:g}")
        return (f"in {'[' if self.at_least is not None else '('}{self._first(low):g}, {self._first(high):g}"
                f"{']' if self.at_most is not None else ')'}")

    @staticmethod
    def _first(pair):
        return next(v for v in pair if v is not None)


# features' lr and the frozen BatchNorm statistics were chosen on validation: BENCHMARKS.md, "Recipes"
LR = PerStrategy(finetune=1e-3, features=3e-3, lpft=1e-4)

S = Setting
SETTINGS: dict[str, Setting] = {s.name: s for s in (
    S("data", str, "", "dataset folder: ROOT/{train,val,test}/CLASS/* or ROOT/CLASS/*", option=False,
      changes_results=False),   # the data is compared by its fingerprint, not by its path
    S("model", str, "efficientnet_lite0",
      "model name: any torchvision classification model, efficientnet_lite0/1/2, or timm:NAME[.TAG] for a timm model "
      "(see `transferlab models [--source timm]`)"),
    S("strategy", str, "features",
      "finetune: train the whole network; features: frozen backbone as a fixed feature extractor, only the new head "
      "trains; lpft: features for --probe-epochs, then finetune from that head (linear probing, then fine-tuning)",
      choices=STRATEGIES),
    S("out", str, "", "run directory to write", option=False, changes_results=False),
    S("weights", str, "default", "'default' (ImageNet weights), 'none' (random init: the no-transfer control), or a "
                                 "torchvision weights name such as IMAGENET1K_V2", report=True),
    S("weights_dir", str, None, "folder holding weight files for offline use: torchvision's files, timm's as "
                                "DIR/timm/NAME.TAG/model.safetensors",
      none_means="none: $TRANSFERLAB_WEIGHTS_DIR, then $TORCH_HOME/hub/checkpoints or, for timm, the Hugging Face "
                 "cache", changes_results=False),
    S("init", str, None, "a finished run directory to continue from, e.g. on a few labelled images of a new hospital: "
                         "its weights and head replace ImageNet's, its model, image size and preprocessing are used "
                         "(features: the head re-fitted on the new data; finetune, lpft: a short fine-tune, set "
                         "--epochs)",
      none_means="none: the ImageNet weights of --weights"),   # TrainConfig takes the run's model, size, preprocess
    # Defaults that differ by strategy: the head alone on cached features trains in milliseconds per epoch, so it
    # can afford many epochs and a large learning rate; the whole network cannot. lpft's settings are those of its
    # phase 2, which starts from a trained head: a lower learning rate (Kumar et al. 2022).
    S("epochs", int, PerStrategy(finetune=10, features=30, lpft=10), "maximum epochs (lpft: of phase 2, fine-tuning)",
      at_least=1, report=True),
    S("batch_size", int, PerStrategy(finetune=32, features=64, lpft=32),
      "batch size (features: of the head's optimizer steps on cached features)", at_least=1, report=True),
    S("lr", float, LR,
      "learning rate of the new head (AdamW, cosine schedule; lpft: in phase 2), or auto: the suggestion of "
      "Lightning's LR finder (`transferlab lr-find`), run first and recorded in config.json and lr_find.png",
      parse=parse_lr, report=True),
    S("backbone_lr_factor", float, 0.1, "finetune, lpft: backbone learning rate = lr x this", at_least=0, report=True),
    S("probe_epochs", int, 30, "lpft: epochs of phase 1, the head on cached features (all run, the best on "
                               "validation kept)", at_least=1, report=True),
    S("probe_lr", float, LR["features"], "lpft: learning rate of phase 1", above=0, report=True),
    S("unfreeze", str, "none", "finetune, lpft: none (every layer trains from the start) or gradual (the head first, "
                               "then one more backbone block every --unfreeze-every epochs, top down, each block's "
                               "learning rate --block-lr-decay x the one above it)",
      choices=("none", "gradual"), report=True),
    S("batchnorm", str, PerStrategy(finetune="frozen", features="frozen", lpft="frozen"),
      "finetune, lpft: train (BatchNorm layers normalise with each batch's statistics and update their running ones, "
      "as usual) or frozen (they keep normalising with the pretrained running statistics; their scale and shift "
      "still train): lpft's phase 2 then starts exactly from the head phase 1 fitted (features: always frozen; "
      "--weights none: train, there are no pretrained statistics)", choices=("train", "frozen"), report=True),
    S("unfreeze_every", int, 1, "--unfreeze gradual: epochs between unfreezing one more block", at_least=1),
    S("block_lr_decay", float, 0.8, "--unfreeze gradual: learning rate of each deeper backbone block = this x the "
                                    "one above it (the top block: lr x --backbone-lr-factor)", above=0, at_most=1),
    S("weight_decay", float, 1e-4, "AdamW weight decay", at_least=0, report=True),
    S("patience", int, PerStrategy(finetune=3, features=8, lpft=3),
      "early stopping: epochs without improvement of --monitor on validation", at_least=0, report=True),
    S("monitor", str, "val_loss", "validation metric for early stopping and best-epoch selection: val_loss, val_auc or "
                                  "val_balanced_accuracy",
      choices=("val_loss", "val_auc", "val_balanced_accuracy"), report=True),
    S("balance", str, "weights", "class imbalance: weights (class-weighted loss), sampler (balanced batches), none",
      choices=("weights", "sampler", "none"), report=True),
    # features' defaults (xray views) and finetune's (basic) were chosen leaving one family of shifts out:
    # BENCHMARKS.md, "Recipes for shifted images"
    S("augment", str, PerStrategy(finetune="basic", features="xray", lpft="basic"),
      "training augmentation (finetune, lpft; features: of its --feature-views): basic (small rotation, shift, zoom, "
      "brightness/contrast), xray (also what differs between X-ray machines: gamma, blur or sharpening, noise, JPEG "
      "quality, resolution, framing) or none", choices=AUGMENT_CHOICES, parse=parse_augment, report=True),
    S("augment_strength", float, 1.0, "scale of the training augmentation's ranges (basic at 1: rotation 10 degrees, "
                                      "shift 6%, zoom 10%, brightness/contrast 20%)", at_least=0, report=True),
    S("feature_views", int, PerStrategy(finetune=1, features=4, lpft=1),
      "features (and lpft's probe): cached backbone passes per training image, the image itself and N-1 random views "
      "from --augment, drawn from --seed (1: the image only; each view costs one more backbone pass over the "
      "training images, once per seed)", at_least=1, report=True, strategies=ON_FEATURES, before=1),
    S("preprocess", str, "none", "intensity normalisation of every image at input, in training, evaluation, "
                                 "prediction and Grad-CAM: none, equalize (histogram equalisation) or clahe "
                                 "(contrast-limited adaptive equalisation); an export's sidecar names it",
      choices=PREPROCESSING, report=True),
    S("label_smoothing", float, 0.0, "label smoothing of the training loss (validation loss is plain cross-entropy, "
                                     "comparable across recipes)", at_least=0, below=1, report=True),
    S("weight_averaging", str, "none",
      "finetune, lpft (phase 2): none; ema (an exponential moving average of the weights after every optimizer step); "
      "or swa (the equal average of the weights after every step of the last quarter of --epochs, rounded up: the "
      "last 3 of 10; before that, the weights themselves). Validation, early stopping, the best-epoch checkpoint and "
      "the saved model use the averaged weights", choices=("none", "ema", "swa"), report=True, strategies=TRAINS_ON_IMAGES),
    S("mixup", float, 0.0, "finetune, lpft: mixup's Beta(alpha, alpha) on training batches: pairs of images and their "
                           "labels blended (0: off; with --cutmix too, each batch gets one of the two at random)",
      at_least=0, report=True, strategies=TRAINS_ON_IMAGES),
    S("cutmix", float, 0.0, "finetune, lpft: cutmix's Beta(alpha, alpha) on training batches: a box of one image "
                            "pasted into another, labels mixed by area (0: off)",
      at_least=0, report=True, strategies=TRAINS_ON_IMAGES),
    S("head_dropout", float, 0.0, "dropout on the new head's input while training", at_least=0, below=1, report=True),
    S("image_size", int, None, "input resolution", at_least=1, none_means="the model's own, e.g. 224"),
    S("val_fraction", float, 0.15, "share of train/ carved out as a stratified, patient-disjoint validation split",
      above=0, below=1, report=True),
    S("test_fraction", float, 0.15, "when the data has no test/ folder, carve a stratified, patient-disjoint test "
                                    "split of this share (0: no test split)", at_least=0, below=1, report=True),
    S("official_val", str, "auto", "what to do with an official val/ folder: auto (keep it if it has >= 100 images, "
                                   "else merge it into train before carving), keep, merge, drop",
      choices=("auto", "keep", "merge", "drop")),
    S("patient_pattern", str, DEFAULT_PATIENT_PATTERN,
      "regex with a named group 'patient' that finds the patient id in a file name (images without one are their "
      "own patient)"),
    S("manifest", str, None, "CSV of path,label[,patient_id][,split] (paths inside --data) instead of class folders",
      none_means="none: class folders", changes_results=False),   # the data is compared by its fingerprint
    S("positive_class", str, None, "two classes only: the positive class (three or more classes are decided by the "
                                   "most probable class)", none_means="the class not called NORMAL"),
    S("threshold_method", str, "youden", "two classes: how the decision threshold is chosen on validation, youden or "
                                         "f1", choices=("youden", "f1"), report=True),
    S("seed", int, 0, "seed for initialisation, data order and augmentation (and the splits, unless --split-seed)",
      at_least=0),
    S("split_seed", int, None, "seed for the validation/test split", at_least=0, none_means="--seed"),
    S("device", str, "auto", "auto (CUDA if available, else CPU), cpu, cuda or cuda:N", changes_results=False),
    S("precision", str, "auto", "auto (mixed precision on CUDA, 32-bit on CPU) or a Lightning precision, e.g. 32-true",
      report=True),
    S("devices", int, 1, "processes per node, one per GPU (or CPU processes with --device cpu): data parallel (DDP) "
                         "when devices x nodes > 1; --batch-size stays the global batch", at_least=1,
      changes_results=False),
    S("num_nodes", int, 1, "machines (e.g. under Slurm's srun or torchrun), each running --devices processes",
      at_least=1, changes_results=False),
    S("compile", bool, False, "torch.compile the trained network (faster steps on a GPU after a slow first one)",
      changes_results=False),
    S("num_workers", int, None, "data-loading worker processes", at_least=0,
      none_means="0 on CPU, where images are read from the memory-mapped cache; else up to 8", changes_results=False),
    S("threads", int, None, "CPU threads for torch; on a machine busy with other work, fewer threads than cores can be "
                            "several times faster", at_least=1,
      none_means="torch's own count, reduced to the CPUs free when the run starts", changes_results=False),
    S("max_images", int, None, "use at most this many images per split (quick trials)", at_least=1, none_means="all",
      report=True),
    S("skip_bad", bool, False, "skip unreadable images, counted and listed (train: bad_files.csv; evaluate: "
                               "eval-NAME.json; predict: a warning), instead of stopping with one line naming them"),
    S("cache_dir", str, None, "cache of decoded images and features",
      none_means="$TRANSFERLAB_CACHE, else ~/.cache/transferlab", changes_results=False),
    S("resume", bool, False, "continue an interrupted run from its last checkpoint", changes_results=False),
    S("overwrite", bool, False, "delete what --out holds (a finished or an unfinished run) and train afresh",
      changes_results=False),
    S("progress", bool, True, "no progress bars", changes_results=False),
    S("logger", list, None, "experiment logs through Lightning's loggers, beside history.csv: tensorboard (RUN/logs/"
                            "tensorboard), csv (RUN/logs/csv), mlflow ($MLFLOW_TRACKING_URI, else RUN/../mlflow.db) or "
                            "wandb (offline unless WANDB_MODE or WANDB_API_KEY is set); repeatable",
      choices=tuple(LOGGERS), parse=parse_loggers, none_means="none: history.csv only", changes_results=False),
    S("experiment", str, None, "experiment name the loggers file the run under (MLflow experiment, W&B project)",
      none_means=DEFAULT_EXPERIMENT, changes_results=False),
    S("extra", dict, None, "free-form notes, kept in config.json", option=False),
)}
del S


def strategy_defaults() -> dict[str, dict]:
    """{strategy: {setting: default}} for the settings whose default depends on the strategy."""
    return {strategy: {s.name: s.default[strategy] for s in SETTINGS.values() if isinstance(s.default, PerStrategy)}
            for strategy in STRATEGIES}


def changed_settings(old: dict, new: dict) -> list[str]:
    """The settings that change results and differ between `old` (a run's config.json) and `new`, as
    "name old -> new". Values of earlier versions are read as today's settings read them (augment true is basic);
    a setting newer than the run is compared as what that run ran with (Setting.before, else its default)."""
    changed = []
    for name, value in new.items():
        setting = SETTINGS.get(name)
        if setting is not None and not setting.changes_results:
            continue
        if name in old:
            before = as_today(name, old[name])
        elif setting is not None:
            before = setting.before if setting.before is not None else setting.default_for(new["strategy"])
        else:
            continue
        if before != value:
            changed.append(f"{name} {old.get(name, before)!r} -> {value!r}")
    return changed


def as_today(name: str, value):
    """`value` of setting `name`, written by an earlier version, as today's check reads it (unchanged if it fails)."""
    if name not in SETTINGS:
        return value
    try:
        return SETTINGS[name].check(value)
    except TransferlabError:   # a value no longer allowed: it differs from any allowed one
        return value


def default_text(setting: Setting) -> str:
    """The default as --help shows it: per strategy where they differ, in words where it is None."""
    if isinstance(setting.default, PerStrategy):
        values = list(setting.default.values())
        if len(set(values)) == 1:
            return str(values[0])
        return ", ".join(f"{s} {v}" for s, v in setting.default.items())
    return setting.none_means if setting.default is None else str(setting.default)


# --- the command line: options built from SETTINGS --------------------------------------------------------------

def add_options(parser: argparse.ArgumentParser, *, skip: tuple[str, ...] = (),
                defaults: dict[str, str] | None = None) -> None:
    """Every setting as an option of `parser` (valued options first, then flags), except those in `skip`. An option
    left out is absent from the parsed arguments, so TrainConfig's (per-strategy) default applies. `defaults`: the
    --help default of options whose default the command sets itself (a study's split seed).

    argparse only turns the text into a number; TrainConfig checks choices, ranges and parse, so that a bad value
    gets the same one-line error from the command line as from a settings file or Python."""
    chosen = [s for s in SETTINGS.values() if s.option and s.name not in skip]
    for s in [s for s in chosen if s.type is not bool]:
        shown = (defaults or {}).get(s.name) or default_text(s)
        repeatable = s.type is list   # the option once per item
        parser.add_argument(s.flag, dest=s.name, type=s.type if s.type in (int, float) and not s.parse else str,
                            action="append" if repeatable else "store", default=argparse.SUPPRESS,
                            metavar="{" + ",".join(s.choices) + "}" if s.choices else None,
                            help=f"{s.help} (default: {shown})".replace("%", "%%"))
    for s in [s for s in chosen if s.type is bool]:
        parser.add_argument(s.flag, dest=s.name, action="store_false" if s.default else "store_true",
                            default=argparse.SUPPRESS, help=s.help)


def add_flag(parser: argparse.ArgumentParser, name: str) -> None:
    """One yes/no setting as a flag of a command that does not train (evaluate, predict: --skip-bad), with the
    setting's own default and help."""
    s = SETTINGS[name]
    parser.add_argument(s.flag, dest=s.name, action="store_false" if s.default else "store_true", default=s.default,
                        help=s.help)


def at_least(low: int, flag: str) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `low` (e.g. --tta), refused while the arguments are parsed,
    before any work, with a usage error naming `flag`."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a whole number, not {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{flag} must be at least {low}, not {value}")
        return value

    whole.__name__ = "int"
    return whole


# --- errors in the caller's words: flags on the command line, keywords in Python ---------------------------------

_ON_COMMAND_LINE: ContextVar[bool] = ContextVar("transferlab_on_command_line", default=False)


@contextlib.contextmanager
def command_line():
    """Inside this block errors keep naming flags (--out), as the user of the command line typed them."""
    token = _ON_COMMAND_LINE.set(True)
    try:
        yield
    finally:
        _ON_COMMAND_LINE.reset(token)


def in_callers_words(function: Callable) -> Callable:
    """`function`, whose TransferlabError names keywords (out=, resume=True) instead of flags (--out, --resume)
    unless it was called from the command line: the Python API's user has no flags."""

    @functools.wraps(function)
    def called(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except TransferlabError as exc:
            if not _ON_COMMAND_LINE.get() and exc.args and isinstance(exc.args[0], str):
                exc.args = (as_keywords(exc.args[0]), *exc.args[1:])
            raise

    return called


_FLAG = re.compile(r"(?<![\w-])--([a-z][a-z0-9-]*)(?: (?!--)('[^']*'|\"[^\"]*\"|[^\s,;()]+))?")


def as_keywords(message: str) -> str:
    """`message` with each flag as the Python keyword: "--val-fraction must be ..." -> "val_fraction= must be ...",
    "--resume" -> "resume=True", "--no-progress" -> "progress=False", "--lr auto runs" -> "lr='auto' runs"."""

    def keyword(match: re.Match) -> str:
        name, word = match.group(1).replace("-", "_"), match.group(2)
        rest = f" {word}" if word else ""
        negated = SETTINGS.get(name[3:]) if name.startswith("no_") else None
        if negated is not None and negated.type is bool:
            return f"{negated.name}=False{rest}"
        setting = SETTINGS.get(name)
        if setting is not None and setting.type is bool:
            return f"{name}=True{rest}"
        value, tail = _value(setting, word.rstrip(":.") if word else None), word[len(word.rstrip(":.")):] if word else ""
        return f"{name}={value}{tail}" if value is not None else f"{name}={rest}"

    return _FLAG.sub(keyword, message)


def _value(setting: Setting | None, word: str | None) -> str | None:
    """`word` written as a Python value when it is the flag's value in the message, else None."""
    if not word:
        return None
    if word[0] in "'\"" or re.fullmatch(r"[-+]?\d[\d.e+-]*", word):
        return word
    if setting is not None and setting.parse is not None:
        with contextlib.suppress(TransferlabError):
            return repr(setting.parse(word)[0] if setting.type is list else setting.parse(word))
        return None
    if setting is not None and setting.choices:
        return repr(word) if word in setting.choices else None
    # free text (a path, a device): a value only where it could not be a word of the sentence
    return repr(word) if re.search(r"[:/.\d]", word) else None
