"""Generic head replacement: remove the ImageNet classifier, add a fresh head.

timm models say where their classifier is themselves (``get_classifier``, ``reset_classifier(0)``,
``num_features``/``head_hidden_size``): that interface is used wherever a model has it, so heads of any size
(in-22k's 21,841 classes, none at all) are replaced alike. For the others one rule covers every registered
model: the final classifier is the last module that maps to the 1000 ImageNet classes (an nn.Linear, or
SqueezeNet's 1x1 Conv2d). Replacing it by nn.Identity leaves the backbone returning exactly the head's input,
flattened: for SqueezeNet the layers after the conv (ReLU, global average pooling, flatten) then pool the 512
feature maps, whose values are already >= 0 so the ReLU changes nothing.
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


def _has_timm_head(model: nn.Module) -> bool:
    return all(hasattr(model, attr) for attr in ("get_classifier", "reset_classifier", "num_features"))


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """Dotted path and module of the final ImageNet classifier layer (last in registration order; timm: its own)."""
    if _has_timm_head(model):
        return model.pretrained_cfg.get("classifier", "classifier"), model.get_classifier()
    found = [(path, m) for path, m in model.named_modules() if _is_imagenet_classifier(m)]
    if not found:
        raise ModelError(f"{type(model).__name__} has no {IMAGENET_CLASSES}-class Linear/Conv2d layer to replace")
    return found[-1]


def feature_dim(model: nn.Module) -> int:
    """Width of the classifier's input: what the backbone returns once the classifier is removed."""
    if _has_timm_head(model):
        return getattr(model, "head_hidden_size", None) or model.num_features
    head = find_head(model)[1]
    return head.in_features if isinstance(head, nn.Linear) else head.in_channels


def remove_head(model: nn.Module) -> str:
    """Take the classifier out of `model` (in place) so that it returns the classifier's input; its path."""
    path = find_head(model)[0]
    if _has_timm_head(model):
        model.reset_classifier(0)
    else:
        model.set_submodule(path, nn.Identity())
    return path


class Head(nn.Linear):
    """The new classifier: an nn.Linear (the same state_dict) with dropout on its input while training."""

    def __init__(self, in_features: int, out_features: int, *, dropout: float = 0.0, **kwargs):
        super().__init__(in_features, out_features, **kwargs)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(nn.functional.dropout(x, self.dropout, self.training))


def to_transfer_model(model: nn.Module, num_classes: int, *, seed: int | None = None,
                      dropout: float = 0.0) -> TransferModel:
    """Wrap `model` (modified in place) as backbone + a freshly initialised Head(feature_dim, num_classes).
    With `seed`, the new head's initial weights are reproducible without touching the global RNG."""
    width = feature_dim(model)
    path = remove_head(model)
    p = next(model.parameters())
    with torch.random.fork_rng(devices=[], enabled=seed is not None):
        if seed is not None:
            torch.manual_seed(seed)
        head = Head(width, num_classes, dropout=dropout, device=p.device, dtype=p.dtype)
    return TransferModel(model, head, feature_dim=width, head_path=path)


def create_model(name: str, num_classes: int, *, weights: str = "default", weights_dir: str | Path | None = None,
                 seed: int | None = None, head_dropout: float = 0.0) -> TransferModel:
    """The registered ImageNet model `name` with a new `num_classes` head."""
    return to_transfer_model(build_model(name, weights=weights, weights_dir=weights_dir), num_classes, seed=seed,
                             dropout=head_dropout)


def last_feature_map(backbone: nn.Module, example: torch.Tensor) -> nn.Module | None:
    """Grad-CAM's target layer: the module that makes the backbone's last spatial feature map. Found by running
    `example` (an input batch) once: the last module to finish that returns an (N, C, H, W) map with H, W > 1
    and holds a Conv2d or BatchNorm2d, e.g. ResNet's layer4, DenseNet's final norm, EfficientNet's head
    convolution block, ConvNeXt's last stage, MobileNetV3's last block (timm's puts a 1x1 conv after pooling).
    This holds for every ConvNet, whoever wrote it; None when there is none (a transformer's tokens)."""
    finished = []

    def record(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.dim() == 4 and min(output.shape[-2:]) > 1:
            finished.append(module)

    convolutional = [m for m in backbone.modules()
                     if any(isinstance(x, (nn.Conv2d, nn.BatchNorm2d)) for x in m.modules())]
    hooks = [m.register_forward_hook(record) for m in convolutional]
    try:
        with torch.no_grad():
            backbone(example)
    finally:
        for hook in hooks:
            hook.remove()
    return finished[-1] if finished else None
