"""Test-time BatchNorm adaptation: the per-channel input moments of every BatchNorm layer (per class of the
source images, or of a target set), and a copy of the model whose layers normalise the target as the source was."""
from __future__ import annotations

import copy

import numpy as np
import torch

from ..console import progress_bar
from ..data.transforms import normalize, pixel_tensor
from ..runtime import reuse_freed_memory


class _MatchSourceBN(torch.nn.Module):
    """Stands in for one BatchNorm layer during a statistics pass: records the per-channel first and second
    moments of its input per group (a class of the source images; one group for the target) and, given the
    source's statistics, normalises each batch so that the outputs the source had come out."""

    def __init__(self, bn, source: tuple[torch.Tensor, torch.Tensor] | None, groups: int):
        super().__init__()
        self.bn, self.source, self.groups = bn, source, groups
        self.sum = self.sq = self.count = None
        self.group_of_batch: torch.Tensor | None = None    # set before each batch

    def forward(self, x):
        spatial = list(range(2, x.dim()))
        m = x.mean(spatial) if spatial else x                 # (N, C) per image
        sq = (x * x).mean(spatial) if spatial else x * x
        n = x[0, 0].numel()
        g = self.group_of_batch if self.group_of_batch is not None else torch.zeros(len(x), dtype=torch.long)
        g = g.to(x.device)
        if self.sum is None:
            self.sum = x.new_zeros(self.groups, x.shape[1], dtype=torch.float64)
            self.sq = torch.zeros_like(self.sum)
            self.count = x.new_zeros(self.groups, dtype=torch.float64)
        self.sum.index_add_(0, g, m.double() * n)
        self.sq.index_add_(0, g, sq.double() * n)
        self.count.index_add_(0, g, torch.full((len(x),), float(n), dtype=torch.float64, device=x.device))
        if self.source is None:   # recording the source: normalise as the model does
            return self.bn(x)
        mean = m.mean(0)
        var = (sq.mean(0) - mean ** 2).clamp_min(0)
        mm, v = _matched(self.bn, self.source, mean, var)
        shape = [1, -1] + [1] * (x.dim() - 2)
        out = (x - mm.view(shape)) / torch.sqrt(v.view(shape) + self.bn.eps)
        return out * self.bn.weight.view(shape) + self.bn.bias.view(shape) if self.bn.affine else out

    def statistics(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.sum, self.sq, self.count


def mixed_moments(statistics: dict, weights=None) -> dict:
    """Per layer (mean, var) of the recorded groups mixed with `weights` (e.g. a class prior; None: as
    recorded); groups with no image are left out and the weights renormalised."""
    out = {}
    for name, (total, sq, count) in statistics.items():
        present = count > 0
        w = count.clone() if weights is None else torch.as_tensor(weights, dtype=torch.float64, device=count.device)
        w = torch.where(present, w, torch.zeros_like(w))
        w = w / w.sum()
        safe = count.clamp_min(1)[:, None]
        mean = (w[:, None] * total / safe).sum(0)
        var = ((w[:, None] * sq / safe).sum(0) - mean ** 2).clamp_min(0)
        out[name] = (mean.float(), var.float())
    return out


def _matched(bn, source, mean, var):
    """Normalising statistics that map target inputs (mean, var) onto the outputs source inputs get from the
    layer's own running statistics: m = mu_t - sd_t (mu_s - mu_run) / sd_s, v = var_run var_t / var_s."""
    src_mean, src_var = source
    ratio = torch.sqrt((var + bn.eps) / (src_var + bn.eps))
    return mean - ratio * (src_mean - bn.running_mean), bn.running_var * ratio ** 2


@torch.no_grad()
def _batchnorm_pass(model, layers, pixels, sources, *, groups=None, n_groups=1, mean, std, device, batch_size,
                    progress, desc):
    """One pass over `pixels` with every BN layer wrapped; returns each layer's input moments per group."""
    wrappers = {}
    for name, bn in layers.items():
        parent, _, child = name.rpartition(".")
        wrappers[name] = _MatchSourceBN(bn, None if sources is None else sources[name], n_groups)
        setattr(model.get_submodule(parent) if parent else model, child, wrappers[name])
    try:
        for start in progress_bar(range(0, len(pixels), batch_size), progress=progress, desc=desc, leave=False):
            if groups is not None:
                for w in wrappers.values():
                    w.group_of_batch = torch.as_tensor(groups[start:start + batch_size], dtype=torch.long)
            model(normalize(pixel_tensor(pixels[start:start + batch_size]), mean, std).to(device))
    finally:
        for name, bn in layers.items():
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, bn)
    return {name: w.statistics() for name, w in wrappers.items()}


def _batchnorm_layers(model: torch.nn.Module) -> dict:
    return {name: m for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


def batchnorm_statistics(model: torch.nn.Module, pixels: np.ndarray, labels: np.ndarray, num_classes: int, *,
                         mean, std, device: torch.device, batch_size: int = 64, progress: bool = False) -> dict:
    """Per BatchNorm layer (by name), the per-channel moments of its input over `pixels`, per class (`labels`),
    with the model as it is (eval mode), for `mixed_moments`; the model is left unchanged."""
    model.eval().to(device)
    with reuse_freed_memory(enabled=device.type == "cpu"):
        return _batchnorm_pass(model, _batchnorm_layers(model), pixels, None, groups=labels, n_groups=num_classes,
                               mean=mean, std=std, device=device, batch_size=batch_size, progress=progress,
                               desc="BN statistics (validation)")


def adapt_batchnorm(model: torch.nn.Module, target: np.ndarray, source_statistics: dict, *, mean, std,
                    device: torch.device, prior=None, batch_size: int = 64,
                    progress: bool = False) -> tuple[torch.nn.Module, int]:
    """A copy of `model` whose BatchNorm layers normalise the target's images so that every layer's input
    statistics match those of the source (validation) images, `source_statistics` (batchnorm_statistics) with
    its classes mixed in the proportions `prior` (the target's, estimated without labels; None: validation's
    own). Mixing at the target's prior keeps a pure change of prevalence from being "corrected" as if the images
    had changed. Weights are unchanged; no target label is used.

    For a fine-tuned network, whose running statistics are those of its training images, this is AdaBN (Li et
    al. 2016): the target's own statistics replace them. For a frozen ImageNet backbone (`features`), plain
    AdaBN would move the features away from the ones its head was trained on; matching the source keeps them.
    Each layer's target statistics are measured with the layers before it already adapted (one pass).
    Returns (the adapted copy, the number of BatchNorm layers)."""
    adapted = copy.deepcopy(model).eval().to(device)
    layers = _batchnorm_layers(adapted)
    if not layers:
        return adapted, 0
    sources = mixed_moments(source_statistics, prior)
    with reuse_freed_memory(enabled=device.type == "cpu"):
        targets = mixed_moments(_batchnorm_pass(adapted, layers, target, sources, mean=mean, std=std, device=device,
                                                batch_size=batch_size, progress=progress,
                                                desc="BN statistics (target)"))
    for name, bn in layers.items():
        m, v = _matched(bn, sources[name], *targets[name])
        bn.running_mean.copy_(m)
        bn.running_var.copy_(v)
    return adapted.eval(), len(layers)
