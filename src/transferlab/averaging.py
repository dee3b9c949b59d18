"""`--weight-averaging ema|swa`: an average of the weights, kept beside them on Lightning's WeightAveraging callback.

Lightning's WeightAveraging swaps the average in for validation, so early stopping and the best-epoch checkpoint
judge the averaged weights; every checkpoint's state_dict holds the average (the weights being trained, and the
average's own state, sit beside it), so the best epoch's model that training.py loads and saves is the averaged one,
and --resume continues the average from last.ckpt. The average updates after every optimizer step, before that
epoch's validation and checkpoint: an update at the epoch's end would come after both, and a resumed run would
lose it.

(Lightning's StochasticWeightAveraging does not fit: it switches to its own learning-rate schedule, validates the
weights being trained rather than the average, and puts the average in place only after the last epoch, so
early stopping and best-epoch selection would never see it.)
"""
from __future__ import annotations

import torch
from lightning.pytorch.callbacks import WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn, get_swa_multi_avg_fn

# Runs here are short: ~100-150 steps an epoch, a few epochs. 0.99 weighs the last ~100 steps (half-life 69), about
# the last epoch; 0.999 (Lightning's EMAWeightAveraging default, half-life 693 steps) would still be mostly epoch 1.
EMA_DECAY = 0.99
SWA_FROM = 0.75   # swa: the equal average starts after this share of --epochs (10 epochs: from epoch 8 on)


class Averaging(WeightAveraging):
    """ema or swa over the LightningModule's parameters and buffers (BatchNorm statistics averaged as the
    weights are; frozen ones stay the pretrained ones). swa: before its first epoch, `first_epoch`, the average
    restarts at every step, so it is the weights themselves (validated as they are)."""

    def __init__(self, kind: str, epochs: int):
        averages = {"ema": get_ema_multi_avg_fn(EMA_DECAY), "swa": get_swa_multi_avg_fn()}
        if kind not in averages:
            raise ValueError(f"unknown weight averaging {kind!r}; known: {', '.join(averages)}")
        super().__init__(multi_avg_fn=_floats_only(averages[kind]))
        self.kind = kind
        self.first_epoch = 0 if kind == "ema" else int(epochs * SWA_FROM)

    def setup(self, trainer, pl_module, stage: str) -> None:
        # The average lives where training runs. Lightning's default, pl_module.device, is still the CPU here (the
        # strategy moves the module after the callbacks' setup), which would copy every weight to the host each step.
        self._device = self._device or trainer.strategy.root_device
        super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch < self.first_epoch and self._average_model is not None:
            self._average_model.n_averaged.zero_()   # AveragedModel copies the weights when it has averaged none
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def _floats_only(average):
    """`average` for floating-point tensors; other buffers (BatchNorm's num_batches_tracked) take the current
    value (torch's SWA rule cannot divide integers)."""

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged) -> None:
        if torch.is_floating_point(averaged[0]):
            average(averaged, current, n_averaged)
        else:
            torch._foreach_copy_(averaged, current)

    return update


def weight_averaging(kind: str, epochs: int) -> list[Averaging]:
    """The callbacks for --weight-averaging `kind` in a stage of `epochs` epochs: none, or one Averaging."""
    return [] if kind == "none" else [Averaging(kind, epochs)]
