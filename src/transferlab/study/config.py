"""A study's settings: StudyConfig (checked when made), the study file, and each run's TrainConfig."""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from pathlib import Path

from ..config import TrainConfig, read_settings
from ..errors import TransferlabError
from ..launchers import LaunchSettings
from ..settings import SETTINGS, STRATEGIES, in_callers_words

# a study's strategies unless it names them (lpft, the third, only when asked for)
DEFAULT_STRATEGIES = ("finetune", "features")
# TrainConfig settings a study sets itself, per run
STUDY_OWNED = ("data", "model", "strategy", "seed", "split_seed", "out", "resume", "overwrite")


@dataclass
class StudyConfig:
    data: str
    models: list[str]
    strategies: list[str] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    seeds: list[int] | int = 3                      # an int N means seeds 0..N-1
    out: str = ""
    split_seed: int = 0                             # one validation/test split for every run
    measure_catalog: bool = True                    # time the models (catalogue section A); False: static facts only
    train: dict = field(default_factory=dict)       # TrainConfig settings for every run (epochs, lr, ...)
    model_overrides: dict = field(default_factory=dict)   # {model: {setting: value}} for one model's runs
    external: list[str] = field(default_factory=list)     # other datasets every run is evaluated on (section E)
    adapt: str | None = None                              # label-free adaptation reported on them: prior,bn,...
    launch: LaunchSettings | dict = field(default_factory=LaunchSettings)   # where the runs execute (launchers.py)
    ensemble: int | None = None     # K: also the mean of the K runs best on validation, scored like a run
    tta: int = 1                    # N > 1: every run (and the ensemble) also scored with N-view test-time augmentation

    @in_callers_words
    def __post_init__(self):
        if not self.data:
            raise TransferlabError("a study needs --data (the dataset folder)")
        if not self.out:
            raise TransferlabError("a study needs --out (the study folder to write)")
        self.models = _as_list(self.models, "models")
        self.strategies = _as_list(self.strategies, "strategies")
        if not self.models:
            raise TransferlabError("a study needs at least one model (--models a,b)")
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad or not self.strategies:
            raise TransferlabError(f"--strategies must be a comma list of {', '.join(STRATEGIES)}, not {bad or 'nothing'}")
        if isinstance(self.seeds, bool):
            raise TransferlabError("--seeds must be a count (3) or a comma list of seeds (0,1,2)")
        if isinstance(self.seeds, int):
            if self.seeds < 1:
                raise TransferlabError(f"--seeds must be at least 1, not {self.seeds}")
            self.seeds = list(range(self.seeds))
        self.seeds = [int(s) for s in _as_list(self.seeds, "seeds")]
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise TransferlabError(f"--seeds must be distinct, got {self.seeds}")
        self.train = _train_settings(self.train, "train")
        self.model_overrides = {m: _train_settings(s, f"model_overrides.{m}") for m, s in self.model_overrides.items()}
        self.external = [str(Path(e).expanduser().resolve()) for e in _as_list(self.external or [], "external")]
        missing = [e for e in self.external if not Path(e).is_dir()]
        if missing:
            raise TransferlabError(f"--external {missing[0]}: no such folder")
        from ..analysis.adaptation import parse_adapt

        self.adapt = ",".join(parse_adapt(self.adapt)) or None
        self.launch = LaunchSettings.from_dict(self.launch)
        extra = sorted(set(self.model_overrides) - set(self.models))
        if extra:
            raise TransferlabError(f"model_overrides names models not in the study: {', '.join(extra)}")
        runs = len(self.run_names())
        if self.ensemble is not None and not (isinstance(self.ensemble, int) and 2 <= self.ensemble <= runs):
            raise TransferlabError(f"--ensemble must be between 2 and the study's number of runs ({runs}), "
                                   f"not {self.ensemble!r}")
        if isinstance(self.tta, bool) or not isinstance(self.tta, int) or self.tta < 1:
            raise TransferlabError(f"--tta must be at least 1 (1 = no test-time augmentation), not {self.tta!r}")
        for model, strategy in itertools.product(self.models, self.strategies):   # every training value, checked now
            train_config(self, model, strategy, self.seeds[0])

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "StudyConfig":
        """Study settings; TrainConfig settings may also sit at the top level (they join `train`)."""
        return cls(**normalise(values))

    def run_names(self) -> list[tuple[str, str, int]]:
        return list(itertools.product(self.models, self.strategies, self.seeds))


def normalise(values: dict) -> dict:
    """Study settings with top-level training settings moved into `train` (split_seed is the study's own)."""
    values = dict(values)
    own = {f.name for f in dataclasses.fields(StudyConfig)}
    train = dict(values.pop("train", None) or {})
    for key in [k for k in values if k not in own and k in SETTINGS]:
        train[key] = values.pop(key)
    unknown = sorted(set(values) - own)
    if unknown:
        raise TransferlabError(f"unknown study setting(s): {', '.join(unknown)}")
    if train.get("split_seed") is not None:
        values["split_seed"] = train["split_seed"]
    train.pop("split_seed", None)
    return {**values, "train": train}


def _train_settings(settings: dict, where: str) -> dict:
    """Training settings of a study file (`where`: train or model_overrides.MODEL), each checked and kept as
    TrainConfig keeps it."""
    if not isinstance(settings, dict):
        raise TransferlabError(f"study setting {where} must be a mapping of training settings")
    owned = sorted(set(settings) & set(STUDY_OWNED))
    if owned:
        raise TransferlabError(f"study setting {where} cannot set {', '.join(owned)}: the study sets it per run")
    unknown = sorted(set(settings) - set(SETTINGS))
    if unknown:
        raise TransferlabError(f"unknown training setting(s) in {where}: {', '.join(unknown)}")
    return {k: SETTINGS[k].check(v) for k, v in settings.items()}


def _as_list(value, what: str) -> list:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise TransferlabError(f"study setting {what} must be a list or a comma-separated string, not {value!r}")


def run_name(model: str, strategy: str, seed: int) -> str:
    """The run's folder name; timm:NAME becomes timm-NAME (a colon makes relative links in the report URLs)."""
    return f"{model.replace(':', '-')}-{strategy}-seed{seed}"


def read_study_file(path: str | Path) -> StudyConfig:
    return StudyConfig.from_dict(read_settings(path))


def train_config(config: StudyConfig, model: str, strategy: str, seed: int) -> TrainConfig:
    # one experiment name for the loggers of every run: the study folder's
    settings = {"experiment": Path(config.out).resolve().name, **config.train, **config.model_overrides.get(model, {})}
    # what acts only on some strategies (mixup: images; --feature-views: cached features) is for those runs
    settings = {k: v for k, v in settings.items() if not (k in SETTINGS and strategy not in SETTINGS[k].strategies)}
    return TrainConfig(**settings, data=str(config.data), model=model, strategy=strategy, seed=seed,
                       split_seed=config.split_seed, resume=True,
                       out=str(Path(config.out) / "runs" / run_name(model, strategy, seed)))

