"""Training on PyTorch Lightning: one LightningModule for every strategy, checkpoints, resume, early stopping.

Lightning gives us checkpoint/resume, early stopping, mixed precision, progress bars with ETA and
multi-GPU strategies; this module only says what a step is and what is recorded each epoch.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import re
import signal
import sys
import time
import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.plugins import TorchCheckpointIO
from sklearn.metrics import roc_auc_score, balanced_accuracy_score
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from .console import show_bars
from .distributed import once_each
from .errors import CheckpointError
from .metrics import macro_auc
from .runtime import cpu_threads, seed_all
from .strategies import inference_model

MONITOR_MODES = {"val_loss": "min", "val_auc": "max", "val_balanced_accuracy": "max"}

for _name in ("lightning.pytorch", "lightning.fabric", "lightning"):
    logging.getLogger(_name).setLevel(logging.ERROR)
warnings.filterwarnings("ignore", ".*does not have many workers.*")
warnings.filterwarnings("ignore", ".*LeafSpec.*")
warnings.filterwarnings("ignore", ".*all_gather is deprecated.*")   # inside Lightning's LightningModule.all_gather
warnings.filterwarnings("ignore", ".*exists and is not empty.*")   # checkpoints/ on --resume


class Classifier(L.LightningModule):
    """Trains `net` (a whole TransferModel, or only its head on cached features) with cross-entropy.

    minibatch: the training loader yields each epoch's inputs as ONE batch (`whole_epoch_loader`, for cached
    features), which the step itself splits into shuffled mini-batches of this size, one optimizer step each,
    drawn as make_loader would draw them (`sample_weights`: with replacement, as balance="sampler"). Same
    optimisation, without Lightning's per-step overhead and on one thread: a head is a few tiny matmuls, which
    more threads only slow down, most of all on a busy machine.

    history: the rows of an earlier phase of the same run (lpft's probe), which this one continues: its epochs
    are numbered on from them, and its rows say `phase`."""

    def __init__(self, net: torch.nn.Module, param_groups: list[dict], *, class_weights: torch.Tensor | None,
                 epochs: int, weight_decay: float, seed: int, channels_last: bool = False,
                 minibatch: int | None = None, sample_weights: torch.Tensor | None = None,
                 label_smoothing: float = 0.0, mixup: float = 0.0, cutmix: float = 0.0,
                 history: list[dict] = (), phase: str | None = None):
        super().__init__()
        self.net = net
        self.param_groups = param_groups
        self.register_buffer("class_weights", class_weights, persistent=False)
        self.epochs, self.weight_decay, self.seed = epochs, weight_decay, seed
        self.label_smoothing = label_smoothing
        self.mixup, self.cutmix = mixup, cutmix   # on image batches only (the automatic optimisation path)
        self.channels_last = channels_last
        self.minibatch = minibatch
        self._sample_weights = sample_weights   # per class
        self.automatic_optimization = minibatch is None
        self.history: list[dict] = list(history)
        self.epoch_offset, self.phase = len(self.history), phase
        self._train_sums = np.zeros(3)   # loss * n, correct, n
        self.images_trained = 0          # by this process, in this call (DDP: its shard of each epoch)
        self._val_outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._epoch_start = 0.0
        self._eval = {}   # a plain dict: an nn.Module attribute would join the state_dict and checkpoints

    def forward(self, x):
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def on_train_epoch_start(self):
        # Reseeding from (seed, epoch) makes each epoch's shuffling, augmentation and dropout independent of
        # what ran before, so a run resumed from an epoch checkpoint is bit-identical to an uninterrupted one.
        # The samplers draw from the global RNG, so this also fixes the epoch's data order.
        # Under DDP, ranks that train on different images (automatic optimisation) draw different augmentations;
        # ranks that each train the head on all cached features must draw the same order (rank 0: as one process).
        rank = self.global_rank if self.automatic_optimization else 0
        seed_all(self.seed * 100_003 + self.current_epoch + 1_000_003 * rank)
        self._train_sums[:] = 0
        self._epoch_start = time.perf_counter()
        if not self.automatic_optimization:   # Lightning steps no scheduler then: the cosine schedule's closed form
            for group in self.trainer.optimizers[0].param_groups:
                group["lr"] = group["initial_lr"] * (1 + math.cos(math.pi * self.current_epoch / self.epochs)) / 2

    def training_step(self, batch, batch_idx):
        if self.minibatch is not None:
            return self._epoch_of_minibatches(*batch)
        x, y = batch
        target = y
        if self.mixup or self.cutmix:   # soft targets; accuracy counts the label that dominates each mixed image
            x, target = mixed(x, y, mixup=self.mixup, cutmix=self.cutmix, num_classes=self.net.head.out_features)
            y = target.argmax(1)
        logits = self(x)
        loss = F.cross_entropy(logits, target, weight=self.class_weights, label_smoothing=self.label_smoothing)
        n = len(y)
        self._train_sums += (loss.item() * n, (logits.argmax(1) == y).sum().item(), n)
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def _epoch_of_minibatches(self, x: torch.Tensor, y: torch.Tensor) -> None:
        n, size = len(y), self.minibatch
        if self._sample_weights is not None:
            order = torch.multinomial(self._sample_weights.double()[y.cpu()], n, replacement=True)
        else:
            order = torch.randperm(n)
        if n % size == 1 and n > 1:   # as make_loader: no last batch of one
            order = order[:-1]
        optimizer = self.optimizers()
        sums = torch.zeros(2, dtype=torch.float64)
        with cpu_threads(1) if x.device.type == "cpu" else contextlib.nullcontext():
            for idx in order.to(x.device).split(size):
                xb, yb = x[idx], y[idx]
                logits = self(xb)
                loss = F.cross_entropy(logits, yb, weight=self.class_weights, label_smoothing=self.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                self.manual_backward(loss)
                optimizer.step()
                sums += torch.stack([loss.detach() * len(yb), (logits.argmax(1) == yb).sum()]).double().cpu()
        self._train_sums += (*sums.tolist(), len(order))
        self.log("train_loss", sums[0].item() / max(len(order), 1), prog_bar=True, on_step=True, on_epoch=False,
                 batch_size=len(order))

    def validation_step(self, batch, batch_idx):
        x, y, index = batch   # index: the dataset row (with_index), to count each image once under DDP
        if self.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if batch_idx == 0:   # this epoch's weights, BatchNorm folded: the same function, about twice as fast on CPU
            self._eval["net"] = inference_model(self.net, x[:1])
        self._val_outputs.append((self._eval["net"](x).float(), y, index))

    def on_validation_epoch_end(self):
        logits, y, index = (torch.cat(parts) for parts in zip(*self._val_outputs))
        self._val_outputs.clear()
        if self.trainer.world_size > 1:   # every rank scores all of validation, each image once
            logits, y, index = self.all_gather((logits, y, index))
            logits, y = once_each(index, logits, y)
        values = validation_scores(logits, y, self.class_weights)
        self.log_dict(values, prog_bar=True)
        if self.trainer.sanity_checking:
            return
        self.images_trained += int(self._train_sums[2])
        loss_sum, correct, n = self._epoch_train_sums()
        # plain Python numbers only: the history travels in checkpoints loaded with weights_only=True
        self.history.append({
            "epoch": self.epoch_offset + self.current_epoch + 1, **({"phase": self.phase} if self.phase else {}),
            "train_loss": loss_sum / max(n, 1), "train_acc": correct / max(n, 1), **values,
            "lr": float(self.trainer.optimizers[0].param_groups[0]["lr"]),
            "seconds": time.perf_counter() - self._epoch_start,
        })

    def _epoch_train_sums(self) -> list[float]:
        """(loss * n, correct, n) of this epoch's training steps, summed over every rank."""
        if self.trainer.world_size == 1:
            return self._train_sums.tolist()
        local = torch.tensor(self._train_sums, dtype=torch.float64, device=self.device)
        return self.trainer.strategy.reduce(local, reduce_op="sum").tolist()

    def configure_optimizers(self):
        optimizer = torch.optim.AdamW(self.param_groups, weight_decay=self.weight_decay)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=self.epochs)
        return {"optimizer": optimizer, "lr_scheduler": scheduler}

    def on_save_checkpoint(self, checkpoint):
        checkpoint["history"] = self.history
        checkpoint["should_stop"] = self.trainer.should_stop   # early stopping's decision, which Lightning drops

    def on_load_checkpoint(self, checkpoint):
        self.history = list(checkpoint.get("history", []))
        self.trainer.should_stop = bool(checkpoint.get("should_stop", False))


def mixed(x: torch.Tensor, y: torch.Tensor, *, mixup: float, cutmix: float,
          num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A training batch mixed by torchvision's MixUp or CutMix (alpha > 0: on; both on: one of them per batch, at
    random, as the timm and torchvision references do): the images and their (batch, classes) probability targets.
    Every draw comes from torch's global RNG, which each epoch reseeds: a resumed run mixes as an uninterrupted one.
    (F.cross_entropy's mean over probability targets divides by the batch size, not the sum of the class weights:
    inverse-frequency weights average 1 over the training images, so the loss keeps its scale.)"""
    chosen = [kind(alpha=alpha, num_classes=num_classes)
              for kind, alpha in ((v2.MixUp, mixup), (v2.CutMix, cutmix)) if alpha > 0]
    mix = chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)
    return mix(x, y)


def validation_scores(logits: torch.Tensor, y: torch.Tensor, class_weights: torch.Tensor | None = None) -> dict:
    """The end-of-epoch validation numbers: loss, accuracy, AUC (three or more classes: the macro one-vs-rest AUC
    over the classes validation has) and balanced accuracy; NaN where validation has a single class."""
    loss = F.cross_entropy(logits, y, weight=class_weights).item()
    probs = logits.softmax(1).cpu().numpy()
    y_np = y.cpu().numpy()
    pred = probs.argmax(1)
    both = len(np.unique(y_np)) > 1
    auc = (roc_auc_score(y_np, probs[:, 1]) if probs.shape[1] == 2 else macro_auc(y_np, probs)) if both else None
    return {"val_loss": loss, "val_acc": float((pred == y_np).mean()),
            "val_auc": float("nan") if auc is None else float(auc),
            "val_balanced_accuracy": float(balanced_accuracy_score(y_np, pred)) if both else float("nan")}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint beside its target, then rename it into place: a killed run never leaves half a file.

    (Lightning's own save goes through a temporary file in the system temp folder; where that is another file
    system, the final move is a copy that a kill can interrupt.)"""

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        tmp = Path(f"{path}.tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict:
    """A Lightning checkpoint, loaded with weights_only=True (never plain unpickling); failures are CheckpointErrors."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path}: refused to load: it holds objects other than tensors and plain data, which "
                              f"weights_only=True does not unpickle ({_reason(exc)})") from None
    except (OSError, RuntimeError, EOFError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint ({_reason(exc)}); "
                              f"delete it to start the run over") from None


def _reason(exc: Exception) -> str:
    """One line out of torch's multi-line load errors."""
    text = str(exc).strip() or type(exc).__name__
    match = re.search(r"WeightsUnpickler error: (.*?)(?:\. Please|$)", text, re.M)
    return match.group(1) if match else text.splitlines()[0]


class EpochLines(Callback):
    """Instead of progress bars outside a terminal: one line per epoch on stderr."""

    def on_train_epoch_end(self, trainer, module):
        if trainer.sanity_checking or not module.history:
            return
        h = module.history[-1]
        phase = f" ({h['phase']})" if "phase" in h else ""
        print(f"epoch {h['epoch']}/{module.epoch_offset + trainer.max_epochs}{phase}: "
              f"train loss {h['train_loss']:.4f} acc {h['train_acc']:.3f}; val loss {h['val_loss']:.4f} "
              f"acc {h['val_acc']:.3f} AUC {h['val_auc']:.3f}; {h['seconds']:.1f} s",
              file=sys.stderr, flush=True)


class FollowHistory(Callback):
    """Hands `follow` the module's history (history.csv's rows) when training starts, with a resumed run's
    epochs restored from its checkpoint, and after every epoch; `stopped(exception)` when training ends in an
    error or Ctrl+C."""

    def __init__(self, follow, stopped):
        self.follow, self.stopped = follow, stopped

    def on_train_start(self, trainer, module):
        self.follow(module.history)

    def on_train_epoch_end(self, trainer, module):
        if not trainer.sanity_checking:
            self.follow(module.history)

    def on_exception(self, trainer, module, exception):
        self.stopped(exception)


def fit(module: Classifier, train_loader: DataLoader, val_loader: DataLoader, *, checkpoint_dir: Path,
        epochs: int, monitor: str, patience: int, device: torch.device, precision: str, resume: bool,
        progress: bool, devices: int = 1, num_nodes: int = 1, callbacks: list[Callback] = ()) -> dict:
    """Train with early stopping; returns the best epoch, its score and the checkpoint paths.

    checkpoints/last.ckpt is written after every epoch (model, optimizer, scheduler, epoch, early-stopping
    state, history); with resume=True training continues from it. Every epoch reseeds all RNGs, so a resumed
    run ends bit-identical (on CPU) to an uninterrupted one. devices x num_nodes > 1: DDP (distributed.launch
    has started the processes; `device` is this process's)."""
    mode = MONITOR_MODES[monitor]
    best = ModelCheckpoint(dirpath=checkpoint_dir, filename="best", monitor=monitor, mode=mode,
                           save_top_k=1, enable_version_counter=False)
    # Without a monitor, save_top_k=1 keeps the latest epoch: "last" every epoch (save_last=True would only
    # write it in epochs where "best" improved). Lightning runs it after `best`, so it holds best's state.
    last = ModelCheckpoint(dirpath=checkpoint_dir, filename="last", save_top_k=1, enable_version_counter=False)
    callbacks = [best, last, EarlyStopping(monitor=monitor, mode=mode, patience=patience, check_finite=False),
                 *callbacks]
    bars = show_bars(progress)
    if bars:
        callbacks.append(TQDMProgressBar(leave=True))
    elif progress:
        callbacks.append(EpochLines())
    trainer = L.Trainer(
        max_epochs=epochs, **_hardware(device, devices, num_nodes), precision=precision,
        callbacks=callbacks, plugins=[AtomicCheckpointIO()], logger=False, enable_progress_bar=bars,
        enable_model_summary=False, num_sanity_val_steps=0, deterministic=device.type == "cpu",
        default_root_dir=checkpoint_dir,
    )
    last_path = checkpoint_dir / "last.ckpt"
    ckpt_path = str(last_path) if resume and last_path.exists() else None
    if ckpt_path:
        load_checkpoint(ckpt_path)   # a clear CheckpointError for an unsafe or corrupt file, before Lightning reads it
    sigint = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit(module, train_loader, val_loader, ckpt_path=ckpt_path, weights_only=True)
    except SystemExit:
        if not trainer.interrupted:
            raise
        # Lightning turns Ctrl+C into sys.exit(1) and leaves Ctrl+C ignored; give the caller its interrupt back
        signal.signal(signal.SIGINT, sigint)
        raise KeyboardInterrupt from None
    best_epoch = None
    own = module.history[module.epoch_offset:]   # this phase's epochs: its best checkpoint is among them
    if own:
        scores = [row[monitor] for row in own]
        finite = [s if np.isfinite(s) else (np.inf if mode == "min" else -np.inf) for s in scores]
        best_epoch = int((np.argmin(finite) if mode == "min" else np.argmax(finite)) + 1 + module.epoch_offset)
    return {"best_epoch": best_epoch, "best_checkpoint": best.best_model_path or None,
            "stopped_epoch": len(module.history), "resumed_from": ckpt_path}


def _hardware(device: torch.device, devices: int, num_nodes: int) -> dict:
    """The Trainer's accelerator, devices and strategy: one device, or DDP over devices x num_nodes processes."""
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    if devices * num_nodes == 1:
        return {"accelerator": accelerator, "devices": [device.index or 0] if device.type == "cuda" else 1}
    # SyncBatchNorm: BatchNorm statistics over the global batch, as one process has them (CUDA only in torch)
    return {"accelerator": accelerator, "devices": devices, "num_nodes": num_nodes, "strategy": "ddp",
            "sync_batchnorm": device.type == "cuda"}


def load_best_weights(module: Classifier, checkpoint_path: str | Path) -> None:
    """Load the best epoch's weights from a Lightning checkpoint, safely (weights_only=True)."""
    module.load_state_dict(load_checkpoint(checkpoint_path)["state_dict"])
