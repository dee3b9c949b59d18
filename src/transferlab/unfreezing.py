"""What trains when: gradual unfreezing with discriminative learning rates (Howard & Ruder 2018), for
`--unfreeze gradual`, and BatchNorm statistics kept frozen, for `--batchnorm frozen`.

The head trains alone first; then every `every` epochs one more backbone block (models/blocks.py) joins, from
the top down. Each block has its own learning rate: the top block lr x backbone_lr_factor, each deeper block
`decay` times the one above it.

Every block has its parameter group in the optimizer from the first epoch; a frozen block only has
requires_grad off (AdamW skips parameters without a gradient) and is in eval mode, so its BatchNorm statistics
stay the pretrained ones. The optimizer's groups never change, so a checkpoint of any epoch loads into the
optimizer a resumed run makes; adding groups as blocks unfreeze is what breaks resuming with Lightning's
BaseFinetuning callbacks (Lightning issue #6891). Which blocks train is a function of the epoch alone, set at
the start of every epoch, a resumed one included.
"""
from __future__ import annotations

from lightning.pytorch.callbacks import Callback
from torch import nn

from .models.blocks import backbone_blocks
from .models.heads import TransferModel


def param_groups(model: TransferModel, lr: float, backbone_lr_factor: float, decay: float) -> list[dict]:
    """One AdamW group per backbone block, bottom to top, then the head's; each named after its modules."""
    blocks = backbone_blocks(model.backbone)
    top = len(blocks) - 1
    groups = [{"name": f"backbone.{name}", "params": list(modules.parameters()),
               "lr": lr * backbone_lr_factor * decay ** (top - i)}
              for i, (name, modules) in enumerate(blocks)]
    return groups + [{"name": "head", "params": list(model.head.parameters()), "lr": lr}]


class GradualUnfreezing(Callback):
    """At the start of epoch e (from 0), the head and the top e // every backbone blocks train; the rest is
    frozen: requires_grad off, eval mode."""

    def __init__(self, model: TransferModel, every: int = 1):
        self.blocks = [modules for _, modules in backbone_blocks(model.backbone)]
        self.every = every

    def trainable_blocks(self, epoch: int) -> int:
        return min(len(self.blocks), epoch // self.every)

    def on_train_epoch_start(self, trainer, module):
        unfrozen = self.trainable_blocks(trainer.current_epoch)
        for depth, block in enumerate(reversed(self.blocks)):
            block.requires_grad_(depth < unfrozen).train(depth < unfrozen)


class FrozenBatchNorm(Callback):
    """Every BatchNorm layer of `model` in eval mode in every training epoch: it normalises with its running
    (pretrained) statistics and never updates them; its affine weights still train. Runs after the callbacks
    that set train/eval mode (GradualUnfreezing), so it has the last word."""

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def on_train_epoch_start(self, trainer, module):
        for layer in self.layers:
            layer.eval()
