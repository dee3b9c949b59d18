"""What the catalogue knows of a model without running it: parameters, FLOPs and the registry's published facts.

Each model is built on PyTorch's meta device (no memory, no weights) to count its parameters and FLOPs.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from ..models.heads import feature_dim, find_head
from ..models.registry import build_model, get_spec

NUM_CLASSES = 2                 # default classes of the new head (NORMAL vs PNEUMONIA); catalog(num_classes=...)


@dataclass
class CatalogEntry:
    name: str
    source: str
    input_size: int                          # the weights' native resolution
    params_total: int                        # the ImageNet model as built (1000-class head, no aux heads)
    params_trainable_finetune: int           # backbone + new num_classes-class head
    params_trainable_features: int           # new num_classes-class head only
    gflops: float | None                     # counted (FlopCounterMode, GMACs) at `resolution`
    gflops_meta: float | None                # published (torchvision meta `_ops` / EfficientNet-Lite README)
    acc1: float | None
    acc5: float | None
    file_size_mb: float | None
    weights_file: str | None
    resolution: int | None = None            # image size FLOPs were counted and timings measured at
    latency_ms: float | None = None          # inference, batch 1: the fastest call (as timeit)
    latency_ms_median: float | None = None   # ... the median and 90th percentile of the calls: the spread
    latency_ms_p90: float | None = None
    throughput_ips: float | None = None      # inference images/s at batch_size
    train_step_ms_finetune: float | None = None
    train_ips_finetune: float | None = None
    train_step_ms_features: float | None = None
    train_ips_features: float | None = None
    peak_mem_mb: float | None = None         # CUDA max allocated, or the process's peak RSS increase on CPU
    batch_size: int | None = None
    device: str | None = None
    threads: int | None = None               # torch CPU threads while measuring
    other_load_cpus: float | None = None     # CPUs other processes kept busy while the catalogue was measured
    busy: bool | None = None                 # other_load_cpus > BUSY_SHARE of the CPUs: latencies are unreliable
    error: str | None = None                 # why measuring this model failed (e.g. out of memory)
    budget_note: str | None = None           # what its time budget (model_budget_s) left unmeasured or cut short
    num_classes: int = NUM_CLASSES           # classes of the new head the trainable counts and timings assume
    metrics_source: str | None = None        # where acc1/acc5 come from (or why they are blank)


def count_gflops(model: torch.nn.Module, input_size: int) -> float:
    """GMACs for one image (FLOPs / 2 / 1e9, torchvision's `_ops` convention), on the model's own device
    (the meta device counts without computing anything)."""
    p = next(model.parameters())
    x = torch.zeros(1, 3, input_size, input_size, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


class _AllocateOnMeta(TorchFunctionMode):
    """Puts new tensors (parameters, buffers) on the meta device but leaves the small index arithmetic some
    constructors do on the CPU (RegNet calls torch.arange(...).tolist(), which torch.device("meta") breaks)."""
    _ALLOCATORS = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._ALLOCATORS and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def static_entry(name: str, *, flops: bool, image_size: int | None, num_classes: int = NUM_CLASSES) -> CatalogEntry:
    """One model's entry from its registry spec and a build on the meta device: nothing measured yet."""
    spec = get_spec(name)
    with _AllocateOnMeta():
        model = build_model(name, weights="none")
    model = model.to("meta")
    _, head = find_head(model)
    total = sum(p.numel() for p in model.parameters())
    head_params = sum(p.numel() for p in head.parameters())
    new_head = feature_dim(model) * num_classes + num_classes
    resolution = image_size or spec.input_size
    return CatalogEntry(
        name=name, source=spec.source, input_size=spec.input_size, params_total=total,
        params_trainable_finetune=total - head_params + new_head, params_trainable_features=new_head,
        gflops=round(count_gflops(model, resolution), 4) if flops else None, gflops_meta=spec.gflops,
        acc1=spec.acc1, acc5=spec.acc5, file_size_mb=spec.file_size_mb, weights_file=spec.weights_file,
        resolution=resolution, num_classes=num_classes, metrics_source=spec.metrics_source)
