"""Experiment logs (`--logger tensorboard|csv|mlflow|wandb`): what history.csv, config.json and metrics.json hold,
sent to TensorBoard, a CSV file, MLflow or Weights & Biases as a run trains.

Lightning's own loggers do the writing. They are not handed to the Trainer, which would also send whatever the
LightningModule logs per step, against the optimizer step; instead each logger receives exactly history.csv's
rows (step = epoch), config.json flattened as hyper-parameters ("settings/lr", "model/name", ...) and, when the
run ends, metrics.json flattened as "final/test_at_threshold_accuracy", ... (the names of a study's results.csv).

RUN/logs/loggers.json records what each logger has received (and the MLflow and W&B run ids), so that a resumed
run continues the same MLflow/W&B run and logs no epoch twice, a logger added on resume first receives the
earlier epochs, and a finished run that a study keeps is logged from its files.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import uuid
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from .errors import TransferlabError
from .rundir import RunDir, flatten_metrics, read_csv, write_json

DEFAULT_EXPERIMENT = "transferlab"   # a study uses its folder's name

# Lightning's CSVLogger says so each time it reopens a folder; here reopening is expected (resume)
warnings.filterwarnings("ignore", ".*Experiment logs directory .* exists and is not empty.*")


def _finalize(logger, status: str) -> None:
    logger.finalize(status)


def _log_final(logger, params: dict, metrics: dict, step: int) -> None:
    logger.log_metrics(metrics, step=step)


@dataclass(frozen=True)
class LoggerKind:
    make: Callable[[RunDir, str, dict], Any]   # (run, experiment, its loggers.json entry) -> a Lightning logger
    modules: tuple[str, ...]                   # what it imports, from the extra `transferlab[extra]`
    extra: str = ""
    starts_over: bool = False                  # reopened, it forgets what it wrote before
    log_final: Callable = _log_final           # (logger, hyper-parameters, final metrics, step)
    close: Callable = _finalize                # (logger, status: success | KILLED | FAILED)


def _tensorboard(run: RunDir, experiment: str, state: dict):
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=run.path, name=run.logs.name, version="tensorboard", default_hp_metric=False)


def _tensorboard_final(logger, params: dict, metrics: dict, step: int) -> None:
    # TensorBoard's HParams tab pairs the hyper-parameters with the metrics given together with them
    logger.log_hyperparams(params, metrics=metrics, step=step)


def _csv(run: RunDir, experiment: str, state: dict):
    from lightning.pytorch.loggers import CSVLogger

    return CSVLogger(save_dir=run.path, name=run.logs.name, version="csv")


def _mlflow(run: RunDir, experiment: str, state: dict):
    import mlflow   # noqa: F401  (importing it sets its loggers' levels, which must come first)
    from lightning.pytorch.loggers import MLFlowLogger

    for name in ("mlflow", "alembic"):   # database set-up messages on every new store
        logging.getLogger(name).setLevel(logging.WARNING)
    # MLflow's own variable, else a SQLite store shared by the runs beside this one (MLflow 3 refuses a plain
    # folder store unless told to allow it)
    users_uri = os.environ.get("MLFLOW_TRACKING_URI")
    uri = state.setdefault("tracking_uri", users_uri or f"sqlite:///{run.path.parent.resolve() / 'mlflow.db'}")
    logger = MLFlowLogger(experiment_name=experiment, run_name=run.path.name, tracking_uri=uri,
                          run_id=state.get("run_id"), tags={"transferlab.run_dir": str(run.path.resolve())})
    try:
        if state.get("run_id"):   # resumed: it was marked KILLED when interrupted
            logger.experiment.update_run(state["run_id"], status="RUNNING")
        state["run_id"] = logger.run_id
    finally:   # mlflow.set_tracking_uri also sets the variable, which would send the next run here
        if users_uri is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = users_uri
    return logger


def _wandb(run: RunDir, experiment: str, state: dict):
    from lightning.pytorch.loggers import WandbLogger

    # offline (files under RUN/logs/wandb, `wandb sync` uploads them) unless the user chose a mode or a key
    offline = not (os.environ.get("WANDB_MODE") or os.environ.get("WANDB_API_KEY"))
    run.logs.mkdir(parents=True, exist_ok=True)
    return WandbLogger(project=experiment, name=run.path.name, id=state.setdefault("id", uuid.uuid4().hex[:12]),
                       save_dir=str(run.logs), offline=offline)


def _wandb_close(logger, status: str) -> None:
    logger.finalize(status)
    # without finish(), the next run of a study would be logged into this one (wandb.run is process-wide)
    logger.experiment.finish(exit_code=0 if status == "success" else 1)


LOGGERS = {
    "tensorboard": LoggerKind(_tensorboard, ("tensorboard",), "tensorboard", log_final=_tensorboard_final),
    "csv": LoggerKind(_csv, (), starts_over=True),   # Lightning's CSVLogger deletes the metrics.csv it finds
    "mlflow": LoggerKind(_mlflow, ("mlflow", "sqlalchemy", "alembic"), "mlflow"),
    "wandb": LoggerKind(_wandb, ("wandb",), "wandb", close=_wandb_close),
}


def parse_loggers(value) -> list[str] | None:
    """Logger names from a list or a comma-separated string, checked and without repeats; None for none."""
    names = value.split(",") if isinstance(value, str) else list(value or [])
    names = [str(n).strip() for n in names if str(n).strip()]
    unknown = [n for n in names if n not in LOGGERS]
    if unknown:
        raise TransferlabError(f"--logger must be one of {', '.join(LOGGERS)}, not {unknown[0]!r}")
    return list(dict.fromkeys(names)) or None


def check_available(names: list[str] | None) -> None:
    """One clear error when a logger's optional packages are not installed (before any run starts)."""
    for name in names or ():
        kind = LOGGERS[name]
        missing = [m for m in kind.modules if importlib.util.find_spec(m) is None]
        if missing:
            raise TransferlabError(f"--logger {name} needs {', '.join(missing)}, not installed here: "
                                   f"pip install 'transferlab[{kind.extra}]'")


def final_metrics(metrics: dict) -> dict[str, float]:
    """metrics.json's numbers, flattened as in results.csv, as final/NAME."""
    return {f"final/{k}": float(v) for k, v in flatten_metrics(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)}


class ExperimentLogs:
    """The loggers `names` of one run directory, filed under `experiment` (an MLflow experiment, a W&B project)."""

    def __init__(self, run: RunDir, names: list[str] | None, experiment: str | None = None):
        self.run, self.names = run, list(names or [])
        self.experiment = experiment or DEFAULT_EXPERIMENT
        self._state_file = run.logs / "loggers.json"
        self.state = json.loads(self._state_file.read_text()) if self._state_file.exists() else {}
        self._open: dict[str, Any] = {}
        self._config = None

    def update(self, history: list[dict], metrics: dict | None = None) -> None:
        """Send each logger what it has not received yet: the hyper-parameters, the epochs of `history`
        (history.csv rows) and, given metrics.json's `metrics`, the final metrics."""
        if not self.names:
            return
        for name in self.names:
            if not self._missing(self.state.get(name, {}), history, metrics):
                continue
            logger = self._logger(name)
            done = self.state[name]
            if not done.get("hparams"):
                logger.log_hyperparams(self._hyperparameters())
                done["hparams"] = True
            for row in history:
                epoch = int(row["epoch"])
                if epoch > done.get("epochs", 0):
                    logger.log_metrics({k: float(v) for k, v in row.items() if k not in ("epoch", "phase")},
                                       step=epoch)
                    done["epochs"] = epoch
            if metrics is not None and not done.get("final"):
                LOGGERS[name].log_final(logger, self._hyperparameters(), final_metrics(metrics),
                                        int(metrics.get("epochs_run") or done.get("epochs", 0)))
                done["final"] = True
            logger.save()
        self._save_state()

    def close(self, status: str = "success") -> None:
        for name, logger in self._open.items():
            LOGGERS[name].close(logger, status)
        self._open.clear()

    def stopped(self, exc: BaseException) -> None:
        """Training ended in an error or Ctrl+C: an MLflow run is marked KILLED or FAILED until it is resumed.
        A logger that fails now is left as it is: the error or interrupt that stopped training is the one to report."""
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        for name, logger in self._open.items():
            with contextlib.suppress(Exception):
                LOGGERS[name].close(logger, status)
        self._open.clear()

    def log_finished_run(self) -> None:
        """A finished run, from its files: whatever these loggers have not received yet."""
        if self.names:
            self.update(read_csv(self.run.history), self.run.read_metrics())
            self.close()

    @staticmethod
    def _missing(done: dict, history: list[dict], metrics: dict | None) -> bool:
        last = int(history[-1]["epoch"]) if history else 0
        return not done.get("hparams") or last > done.get("epochs", 0) or (metrics is not None and not done.get("final"))

    def _logger(self, name: str):
        if name not in self._open:
            kind = LOGGERS[name]
            state = self.state.setdefault(name, {})
            if kind.starts_over:
                state.clear()
            try:
                self._open[name] = kind.make(self.run, self.experiment, state)
            except Exception as exc:   # e.g. an MLflow server that cannot be reached, a URI it does not know
                raise TransferlabError(f"--logger {name}: {str(exc).strip().splitlines()[0]}") from None
            self._save_state()   # a new MLflow/W&B run id, before anything else can fail
        return self._open[name]

    def _hyperparameters(self) -> dict:
        if self._config is None:
            self._config = self.run.read_config()
        return self._config

    def _save_state(self) -> None:
        self.run.logs.mkdir(parents=True, exist_ok=True)
        write_json(self._state_file, self.state)
