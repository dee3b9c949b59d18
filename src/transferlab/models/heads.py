"""Generic head replacement: find the ImageNet classifier layer, swap it for nn.Identity, add a fresh head.

One rule covers every registered model: the final classifier is the last module that maps to the 1000 ImageNet
classes (an nn.Linear, or SqueezeNet's 1x1 Conv2d). Replacing it by nn.Identity leaves the backbone returning
exactly the head's input, flattened: for SqueezeNet the layers after the conv (ReLU, global average pooling,
flatten) then pool the 512 feature maps, whose values are already >= 0 so the ReLU changes nothing.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError
from .registry import build_model

IMAGENET_CLASSES = 1000


class TransferModel(nn.Module):
    """backbone (the ImageNet model with its classifier replaced by nn.Identity) + a new head (nn.Linear)."""

    def __init__(self, backbone: nn.Module, head: nn.Module, *, feature_dim: int, head_path: str):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.feature_dim = feature_dim
        self.head_path = head_path          # where the ImageNet classifier sat inside the backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The head's input, shape (N, feature_dim)."""
        return self.backbone(x)


def _is_imagenet_classifier(module: nn.Module) -> bool:
    return (isinstance(module, nn.Linear) and module.out_features == IMAGENET_CLASSES) or \
        (isinstance(module, nn.Conv2d) and module.out_channels == IMAGENET_CLASSES)


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """Dotted path and module of the final ImageNet classifier layer (last in registration order)."""
    found = [(path, m) for path, m in model.named_modules() if _is_imagenet_classifier(m)]
    if not found:
        raise ModelError(f"{type(model).__name__} has no {IMAGENET_CLASSES}-class Linear/Conv2d layer to replace")
    return found[-1]


def _feature_dim(head: nn.Module) -> int:
    return head.in_features if isinstance(head, nn.Linear) else head.in_channels


def to_transfer_model(model: nn.Module, num_classes: int, *, seed: int | None = None) -> TransferModel:
    """Wrap `model` (modified in place) as backbone + a freshly initialised nn.Linear(feature_dim, num_classes).
    With `seed`, the new head's initial weights are reproducible without touching the global RNG."""
    path, old = find_head(model)
    model.set_submodule(path, nn.Identity())
    feature_dim = _feature_dim(old)
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        head = nn.Linear(feature_dim, num_classes, device=old.weight.device, dtype=old.weight.dtype)
    return TransferModel(model, head, feature_dim=feature_dim, head_path=path)


def create_model(name: str, num_classes: int, *, weights: str = "default",
                 weights_dir: str | Path | None = None, seed: int | None = None) -> TransferModel:
    """The registered ImageNet model `name` with a new `num_classes` head."""
    return to_transfer_model(build_model(name, weights=weights, weights_dir=weights_dir), num_classes, seed=seed)
