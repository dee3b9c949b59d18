"""ModelSpec: the facts every model source (torchvision, EfficientNet-Lite, timm) states about a model."""
from __future__ import annotations

from dataclasses import dataclass

SOURCES = ("torchvision", "efficientnet_lite", "timm", "all")   # what `list_models(source=...)` takes


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str                          # "torchvision" | "efficientnet_lite" | "timm"
    input_size: int                      # square training/eval resolution (the weights' crop size)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    weights_name: str | None
    weights_file: str | None
    weights_url: str | None
    acc1: float | None                   # ImageNet-1K top-1 / top-5 (%)
    acc5: float | None
    gflops: float | None                 # GMACs per image at input_size (torchvision's `_ops` convention)
    file_size_mb: float | None           # MiB, like torchvision's `_file_size`
    num_params: int | None
    metrics_source: str
    resize_size: int | None = None       # ImageNet eval preset: resize the short side to this, centre-crop input_size
    interpolation: str = "bilinear"
