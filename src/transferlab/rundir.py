"""The one place that knows the layout of a run directory, and what is recorded about the environment."""
from __future__ import annotations

import csv
import json
import os
import platform
import resource
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import CheckpointError
from .records import Evaluation, RunMetrics


@dataclass(frozen=True)
class RunDir:
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    config = property(lambda self: self.path / "config.json")            # settings, versions, data fingerprint
    splits = property(lambda self: self.path / "splits.csv")             # every image: split, label, patient
    history = property(lambda self: self.path / "history.csv")           # per epoch: losses, accuracy, lr, seconds
    metrics = property(lambda self: self.path / "metrics.json")          # per split, at 0.5 and at the threshold
    predictions = property(lambda self: self.path / "predictions.csv")   # per image: probability and prediction
    weights = property(lambda self: self.path / "model.safetensors")     # the best epoch's TransferModel
    bad_files = property(lambda self: self.path / "bad_files.csv")       # files skipped with --skip-bad
    checkpoints = property(lambda self: self.path / "checkpoints")       # Lightning last.ckpt / best.ckpt (+ probe/)
    logs = property(lambda self: self.path / "logs")                     # --logger: experiment logs, loggers.json
    ranks = property(lambda self: self.path / "ranks.json")              # each process: images trained on, predicted

    def __fspath__(self) -> str:
        return str(self.path)

    def finished(self) -> bool:
        return self.metrics.exists() and self.weights.exists()

    def resumable(self) -> bool:
        """Training has written a checkpoint (checkpoints/last.ckpt; lpft's phase 1: checkpoints/probe/last.ckpt)."""
        return self.checkpoints.is_dir() and any(self.checkpoints.rglob("last.ckpt"))

    def read_config(self) -> dict:
        if not self.config.exists():
            raise CheckpointError(f"{self.path} is not a transferlab run directory (no config.json)")
        return json.loads(self.config.read_text())

    def is_ensemble(self) -> bool:
        """An ensemble directory (ensembles.ensemble): config.json lists member runs instead of holding a model."""
        return self.config.exists() and "ensemble" in self.read_config()

    def members(self) -> list[Path]:
        """An ensemble directory's member run directories."""
        return [self.path / m["run"] for m in self.read_config()["ensemble"]["members"]]

    def read_metrics(self) -> RunMetrics:
        if not self.metrics.exists():
            raise CheckpointError(f"{self.path} has no metrics.json: the run did not finish (resume it with --resume)")
        return json.loads(self.metrics.read_text())

    def evaluation(self, name: str) -> Path:
        """eval-NAME.json: `evaluate`'s result on the set NAME."""
        return self.path / f"eval-{name}.json"

    def read_evaluation(self, name: str) -> Evaluation | None:
        """eval-NAME.json, or None where this run was not evaluated on NAME."""
        path = self.evaluation(name)
        return json.loads(path.read_text()) if path.exists() else None

    def write_evaluation(self, result: Evaluation) -> Path:
        write_json(self.evaluation(result["name"]), result)
        return self.evaluation(result["name"])


def write_csv(path: Path, rows: list[dict]) -> None:
    """Write rows atomically; columns are the union of the rows' keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def write_json(path: str | Path, obj) -> None:
    """Write JSON atomically (tmp file + rename), so an interrupted run never leaves half a file."""
    path = Path(path)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    tmp.replace(path)


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def flatten_metrics(metrics: dict) -> dict:
    """metrics.json as one flat row: test_accuracy, test_at_threshold_accuracy, val_roc_auc, test_tp, ...,
    best_epoch, threshold, seconds_fit, peak_rss_mb."""
    row = {}
    for key in ("threshold", "threshold_method", "best_epoch", "epochs_run", "monitor", "trainable_params",
                "total_params", "peak_rss_mb", "cuda_peak_mb"):
        row[key] = metrics.get(key)
    for key, value in (metrics.get("seconds") or {}).items():
        row[f"seconds_{key}"] = value
    for split in ("train", "val", "test"):
        if split in metrics:
            row.update(flatten_split(metrics[split], f"{split}_"))
            if "at_threshold" in metrics[split]:
                row.update(flatten_split(metrics[split]["at_threshold"], f"{split}_at_threshold_"))
    return row


def flatten_split(m: dict, prefix: str) -> dict:
    row = {}
    for key, value in m.items():
        if key == "confusion_matrix":
            if len(value) == 2:
                (tn, fp), (fn, tp) = value
                row.update({f"{prefix}tn": tn, f"{prefix}fp": fp, f"{prefix}fn": fn, f"{prefix}tp": tp})
        elif not isinstance(value, (dict, list)):
            row[prefix + key] = value
    return row


def environment() -> dict:
    """Software versions and hardware, recorded in every config.json."""
    import lightning
    import sklearn
    import torch
    import torchvision

    from . import __version__

    env = {
        "transferlab": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "torchvision": torchvision.__version__, "lightning": lightning.__version__, "sklearn": sklearn.__version__,
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return env


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
