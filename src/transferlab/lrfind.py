"""The learning-rate range test (Smith 2017) through Lightning's LR finder (`lightning.pytorch.tuner.Tuner.lr_find`).

Starting from the model as training would start, each optimizer step raises the learning rate exponentially
from `min_lr` to `max_lr`; the loss is recorded (smoothed) until it diverges. The suggestion is Lightning's rule,
the learning rate where the loss falls fastest, taken per decade of learning rate (`steepest_descent`). The x axis
is `--lr`, the head's learning rate; every other
parameter group keeps its ratio to it (finetune's backbone at lr x backbone_lr_factor, gradual unfreezing's
blocks at their discriminative rates), which Lightning's finder alone would set all equal.

training.py prepares the data and the model (`lr_find`, and `train --lr auto` before it trains); this module
runs the test on a Classifier and writes what it found: lr_find.png, lr_find.csv and lr_find.json.
"""
from __future__ import annotations

import contextlib
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import lightning as L
import numpy as np
from lightning.pytorch.tuner import Tuner
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .config import LR_FIND_RANGE
from .rundir import write_json
from .console import show_bars
from .engine import Classifier, _hardware
from .errors import TransferlabError
from .rundir import write_csv

MIN_LR, MAX_LR, STEPS = LR_FIND_RANGE
SKIP_BEGIN = 10   # Lightning's default: the first steps' loss says little about the learning rate
FILES = {"plot": "lr_find.png", "curve": "lr_find.csv", "summary": "lr_find.json"}


@dataclass
class LRFinding:
    suggested_lr: float
    lrs: list[float] = field(repr=False)
    losses: list[float] = field(repr=False)       # smoothed training loss after each step
    min_lr: float = MIN_LR
    max_lr: float = MAX_LR
    steps: int = STEPS                            # asked for; steps_run < steps when the loss diverged
    seconds: float = 0.0

    @property
    def steps_run(self) -> int:
        return len(self.lrs)

    def summary(self) -> dict:
        """What config.json and lr_find.json record (the curve itself is lr_find.csv)."""
        return {"suggested_lr": self.suggested_lr, "min_lr": self.min_lr, "max_lr": self.max_lr, "steps": self.steps,
                "steps_run": self.steps_run, "seconds": self.seconds, **FILES}


class RangeTest(Classifier):
    """A Classifier built with lr = 1, so that its groups' learning rates are their ratios to --lr; before every
    step each group is set to the finder's current learning rate times its ratio."""

    def __init__(self, net, param_groups: list[dict], **kwargs):
        super().__init__(net, param_groups, **kwargs)
        self.ratios = [group["lr"] for group in param_groups]
        self.epoch_callbacks = []

    def on_train_epoch_start(self):
        # Lightning's finder runs with its own callback in place of the trainer's: training's callbacks (frozen
        # BatchNorm statistics) are called from here instead
        super().on_train_epoch_start()
        for callback in self.epoch_callbacks:
            callback.on_train_epoch_start(self.trainer, self)

    def on_train_batch_start(self, batch, batch_idx):
        current = self.trainer.lr_scheduler_configs[0].scheduler.get_last_lr()
        for group, lr, ratio in zip(self.trainer.optimizers[0].param_groups, current, self.ratios):
            group["lr"] = lr * ratio


def find_lr(module: RangeTest, train_loader, *, device, precision: str, root: Path, min_lr: float = MIN_LR,
            max_lr: float = MAX_LR, steps: int = STEPS, progress: bool = True, callbacks: list = ()) -> LRFinding:
    """Lightning's range test of `module` on `train_loader` (as many epochs as `steps` needs); `root`: a folder
    for Lightning's temporary checkpoint; `callbacks`: training's own (frozen BatchNorm statistics). The module is
    left trained: pass a copy of the model."""
    if steps < SKIP_BEGIN + 10:
        raise TransferlabError(f"--steps must be at least {SKIP_BEGIN + 10}: the suggestion skips the first "
                               f"{SKIP_BEGIN} steps")
    if not 0 < min_lr < max_lr:
        raise TransferlabError(f"--min-lr must be positive and below --max-lr, not {min_lr} and {max_lr}")
    trainer = L.Trainer(max_epochs=-1, **_hardware(device, 1, 1), precision=precision, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, deterministic=device.type == "cpu", default_root_dir=root)
    module.epoch_callbacks = list(callbacks)
    start = time.perf_counter()
    # Lightning's finder always draws a progress bar (on stderr, where the caller asked for none: swallowed)
    with contextlib.nullcontext() if show_bars(progress) else contextlib.redirect_stderr(io.StringIO()):
        finder = Tuner(trainer).lr_find(module, train_dataloaders=train_loader, min_lr=min_lr, max_lr=max_lr,
                                        num_training=steps, update_attr=False)
    seconds = time.perf_counter() - start
    lrs, losses = list(finder.results["lr"]), [float(x) for x in finder.results["loss"]]
    suggested = steepest_descent(lrs, losses)
    if suggested is None or not math.isfinite(suggested) or suggested <= 0:
        raise TransferlabError(f"the LR finder found no learning rate: the loss diverged within {len(lrs)} steps "
                               f"(from {min_lr:g}); lower --max-lr or --min-lr, or set --lr yourself")
    return LRFinding(float(suggested), lrs, losses, min_lr, max_lr, steps, seconds)


def steepest_descent(lrs: list[float], losses: list[float], skip_begin: int = SKIP_BEGIN,
                     skip_end: int = 1) -> float | None:
    """The learning rate where the loss falls fastest per decade: the minimum of d loss / d log10(lr), the first
    `skip_begin` and last `skip_end` steps left out. Lightning's `suggestion()` differentiates by the learning rate
    itself although the rates are spaced on a log scale, which favours the smallest rates (Lightning issue
    #21141): on 200 chest X-rays it suggested 4.8e-6, in the flat start of a curve that falls fastest near 1e-2."""
    lr, loss = np.array(lrs[skip_begin:len(lrs) - skip_end]), np.array(losses[skip_begin:len(losses) - skip_end])
    keep = np.isfinite(loss) & (lr > 0)
    if keep.sum() < 3:
        return None
    slope = np.gradient(loss[keep], np.log10(lr[keep]))
    return float(lr[keep][np.argmin(slope)])


def write_finding(finding: LRFinding, folder: Path, title: str = "") -> dict[str, Path]:
    """lr_find.png (loss vs learning rate, the suggestion marked), lr_find.csv (the curve) and lr_find.json."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = {key: folder / name for key, name in FILES.items()}
    write_csv(paths["curve"], [{"step": i + 1, "lr": lr, "loss": loss}
                               for i, (lr, loss) in enumerate(zip(finding.lrs, finding.losses))])
    write_json(paths["summary"], {**finding.summary(), "title": title})
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    losses = np.array(finding.losses)
    ax.plot(finding.lrs, losses, color="tab:blue")
    ax.axvline(finding.suggested_lr, color="tab:red", ls="--", label=f"suggested lr {finding.suggested_lr:.3g}")
    finite = losses[np.isfinite(losses)]
    if len(finite):   # the diverging end would flatten the interesting part
        ax.set_ylim(finite.min() - 0.05 * np.ptp(finite), min(finite.max(), 3 * finite[0]) + 0.05 * np.ptp(finite))
    ax.set(xscale="log", xlabel="learning rate (--lr; other groups at their ratio)", ylabel="training loss (smoothed)")
    ax.set_title(title or "learning-rate range test", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(paths["plot"], dpi=100)
    return paths
