"""Transfer strategies: what trains, what is frozen, and what the training loop is fed.

- finetune: the whole network trains on (augmented) images; the backbone at a lower learning rate.
- features: the ImageNet backbone is a fixed feature extractor. It stays frozen and in eval mode (its
  BatchNorm statistics are never updated); its output is computed once per image and cached, and only the
  new head trains, on those cached features. The result is still one TransferModel (backbone + head).
- lpft: linear probing, then fine-tuning (Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features"):
  phase 1 is `features`, phase 2 is `finetune` starting from phase 1's best head (training.py runs the phases).
"""
from __future__ import annotations

import copy
import hashlib
import os
from pathlib import Path

import numpy as np
import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval
from torch.utils.data import Dataset, TensorDataset

from .data.transforms import ImageTensorDataset, augmented_copy, normalize, pixel_tensor
from .console import progress_bar
from .distributed import gather_shards, is_global_zero, world_size
from .gpu import to_device
from .models.heads import TransferModel


class FineTune:
    name = "finetune"
    channels_last = True
    augments = True     # training images are augmented (unless --augment none)
    cached = False      # inputs are images, not cached features
    probe = None        # the strategy of a phase before this one

    def trainable(self, model: TransferModel) -> nn.Module:
        model.requires_grad_(True).train()
        return model

    def param_groups(self, model: TransferModel, lr: float, backbone_lr_factor: float) -> list[dict]:
        return [{"params": list(model.backbone.parameters()), "lr": lr * backbone_lr_factor},
                {"params": list(model.head.parameters()), "lr": lr}]

    def dataset(self, model: TransferModel, pixels: np.ndarray, labels: np.ndarray, *, mean, std,
                device: torch.device, progress: bool, cache_dir: Path | None, augment=None, views: int = 1,
                seed: int = 0) -> Dataset:
        """augment: a uint8 image -> uint8 image transform applied to every training image each time it is read
        (data.transforms.make_augment), or None; views and seed: FixedFeatures'."""
        return ImageTensorDataset(pixels, labels, mean=mean, std=std, augment=augment)


class FixedFeatures:
    name = "features"
    channels_last = False   # the trained module is a Linear layer on feature vectors
    augments = False        # each image's features are computed once (augmented views: --feature-views)
    cached = True           # each epoch is one batch of cached features, split by Classifier itself
    probe = None
    cache_hits = 0          # splits whose features this instance read from the disk cache (no backbone pass timed)

    def trainable(self, model: TransferModel) -> nn.Module:
        model.backbone.requires_grad_(False).eval()
        return model.head

    def param_groups(self, model: TransferModel, lr: float, backbone_lr_factor: float) -> list[dict]:
        return [{"params": list(model.head.parameters()), "lr": lr}]

    def dataset(self, model: TransferModel, pixels: np.ndarray, labels: np.ndarray, *, mean, std,
                device: torch.device, progress: bool, cache_dir: Path | None, augment=None, views: int = 1,
                seed: int = 0) -> Dataset:
        """The backbone's features of every image; with `augment` and views > 1, also of views - 1 augmented
        copies of every image (view v drawn from (seed, v), so its features are cached like any other pixels)."""
        encode = dict(mean=mean, std=std, device=device, progress=progress, cache_dir=cache_dir)
        feats = [self.features(model, pixels, **encode)]
        if augment is not None:
            for view in range(1, views):
                copy = augmented_copy(pixels, augment, seed=seed * 1_000 + view)
                feats.append(self.features(model, copy, **encode))
        labels = torch.as_tensor(np.tile(np.asarray(labels), len(feats)), dtype=torch.long, device=device)
        # on a GPU the features stay there: the head trains and predicts without a host-to-device copy
        return TensorDataset(torch.cat(feats).to(device) if len(feats) > 1 else feats[0].to(device), labels)

    def features(self, model: TransferModel, pixels: np.ndarray, *, mean, std, device: torch.device,
                 progress: bool, cache_dir: Path | None, batch_size: int = 64) -> torch.Tensor:
        """Backbone outputs for every image, computed once: reused from the disk cache when the same backbone
        weights meet the same pixels again (other seeds of a study, a resumed run). No in-process cache: one
        shared across runs would hide what a run does to its own backbone.

        The cache is a float32 .npy file written batch by batch and renamed into place when complete; the
        tensor returned is that file, memory-mapped copy-on-write (writable for torch, never written back).
        DDP: each process extracts its shard of the images, every process gets all features, rank 0 writes."""
        key = _digest(pixels, model.backbone)
        path = cache_dir / "features" / f"{key}.npy" if cache_dir else None
        if path is not None and path.exists():
            self.cache_hits += 1
            return torch.from_numpy(np.load(path, mmap_mode="c"))
        fast = self._inference_backbone(model, pixels, mean, std, device)
        if world_size() > 1:
            feats = gather_shards(lambda part: extract_features(model, pixels[part], mean=mean, std=std, device=device,
                                                                progress=progress, batch_size=batch_size, backbone=fast),
                                  len(pixels))
            if path is None or not is_global_zero():
                return feats
            batches = [feats.cpu()]
        else:
            batches = feature_batches(model, pixels, mean=mean, std=std, device=device, progress=progress,
                                      batch_size=batch_size, backbone=fast)
            if path is None:
                return torch.cat([torch.zeros(0, model.feature_dim), *batches])
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f"{path.stem}-{os.getpid()}.npy.tmp")
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(len(pixels), model.feature_dim))
            start = 0
            for batch in batches:
                out[start:start + len(batch)] = batch.numpy()
                start += len(batch)
            out.flush()
            del out
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return torch.from_numpy(np.load(path, mmap_mode="c"))

    def _inference_backbone(self, model: TransferModel, pixels: np.ndarray, mean, std, device) -> nn.Module | None:
        """inference_backbone(model.backbone), made and checked once per strategy instance (one run), not per split."""
        known = getattr(self, "_inference", None)
        if known is not None and known[0] is model.backbone:
            return known[1]
        if len(pixels) == 0:
            return None
        model.backbone.eval().to(device).to(memory_format=torch.channels_last)
        example = _channels_last(normalize(to_device(pixel_tensor(pixels[:1]), device), mean, std))
        with torch.inference_mode():
            fast = inference_backbone(model.backbone, example, device=device)
        self._inference = (model.backbone, fast)
        return fast


def extract_features(model: TransferModel, pixels: np.ndarray, *, mean, std, device: torch.device,
                     progress: bool = True, batch_size: int = 64, backbone: nn.Module | None = None) -> torch.Tensor:
    """One forward pass of the frozen backbone (eval mode) over uint8 images -> float32 features on CPU.

    The pass runs on `inference_backbone(model.backbone)`: a copy with BatchNorm folded into the convolutions
    and in-place activations (checked against the original backbone on the first image; the original is used
    when they differ or the copy cannot be made). The model itself is not modified. `backbone`: such a copy
    made earlier for the same model (skips making and checking it)."""
    return torch.cat([torch.zeros(0, model.feature_dim),
                      *feature_batches(model, pixels, mean=mean, std=std, device=device, progress=progress,
                                       batch_size=batch_size, backbone=backbone)])


@torch.inference_mode()
def feature_batches(model: TransferModel, pixels: np.ndarray, *, mean, std, device: torch.device,
                    progress: bool = True, batch_size: int = 64, backbone: nn.Module | None = None):
    """extract_features one batch at a time: `pixels` (e.g. a memory-mapped cache) are read batch by batch."""
    if len(pixels) == 0:
        return
    model.backbone.eval().to(device).to(memory_format=torch.channels_last)
    if backbone is None:
        example = _channels_last(normalize(to_device(pixel_tensor(pixels[:1]), device), mean, std))
        backbone = inference_backbone(model.backbone, example, device=device)
    for start in progress_bar(range(0, len(pixels), batch_size), progress=progress, desc="features", leave=False):
        x = _channels_last(normalize(to_device(pixel_tensor(pixels[start:start + batch_size]), device), mean, std))
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            out = backbone(x).float().cpu()
        del x
        yield out   # outside autocast: the caller's code between batches runs without it


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


# --- a faster copy of a frozen backbone for inference ------------------------------------------------------

_ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh, nn.SiLU, nn.Hardswish, nn.Mish)


class _ConvLeafTracer(fx.Tracer):
    """fx tracer that keeps every Conv2d subclass (e.g. EfficientNet-Lite's Conv2dStaticSamePadding) a leaf."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, qualname)


@torch.inference_mode(False)
def inference_backbone(backbone: nn.Module, example: torch.Tensor | None = None, *,
                       device: torch.device | str = "cpu", rtol: float = 1e-3) -> nn.Module:
    """An inference-only copy of an eval-mode backbone that computes the same function with less memory traffic:

    - BatchNorm after a convolution is folded into the convolution's weights and bias (eval statistics);
    - activations whose input is used by nothing else run in place.
    The effect on 2 CPU cores is measured by benchmarks/transfer_speed.py (BENCHMARKS.md).
    With `example`, the copy's output is checked against the original's (relative max error <= rtol); on any
    failure - tracing, folding or a mismatch - the original backbone is returned unchanged."""
    if backbone.training:
        return backbone
    try:
        work = copy.deepcopy(backbone).eval()
        graph = _ConvLeafTracer().trace(work)
        gm = fx.GraphModule(work, graph)
        _fold_batchnorm(gm)
        _inplace_activations(gm)
        gm.graph.eliminate_dead_code()
        gm.delete_all_unused_submodules()
        gm.graph.lint()
        gm.recompile()
        gm.requires_grad_(False).eval().to(device=device, memory_format=torch.channels_last)
        if example is not None:
            with torch.inference_mode(), torch.autocast(example.device.type, enabled=False):
                want, got = backbone(example), gm(example.clone())
            scale = want.abs().max().clamp_min(1e-6)
            if want.shape != got.shape or not bool(((want - got).abs().max() / scale) <= rtol):
                return backbone
        return gm
    except Exception:   # any model fx cannot trace or rewrite: the plain backbone is always correct
        return backbone


def inference_model(net: nn.Module, example: torch.Tensor) -> nn.Module:
    """What evaluates an eval-mode TransferModel: its head on inference_backbone(backbone) (a BatchNorm-folded
    copy, checked on `example`); anything else (a head on cached features, a model in training) unchanged."""
    if not isinstance(net, TransferModel) or net.training:
        return net
    return nn.Sequential(inference_backbone(net.backbone, example, device=example.device), net.head)


def _module(gm: fx.GraphModule, node: fx.Node) -> nn.Module | None:
    return gm.get_submodule(node.target) if node.op == "call_module" else None


def _fold_batchnorm(gm: fx.GraphModule) -> None:
    for node in list(gm.graph.nodes):
        bn = _module(gm, node)
        if not isinstance(bn, nn.BatchNorm2d) or bn.training or not bn.track_running_stats or len(node.args) != 1:
            continue
        src = node.args[0]
        conv = _module(gm, src) if isinstance(src, fx.Node) else None
        if not isinstance(conv, nn.Conv2d) or len(src.users) != 1:
            continue
        _set_submodule(gm, src.target, fuse_conv_bn_eval(conv, bn))
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)


def _inplace_activations(gm: fx.GraphModule) -> None:
    for i, node in enumerate(list(gm.graph.nodes)):
        act = _module(gm, node)
        if not isinstance(act, _ACTIVATIONS) or getattr(act, "inplace", True) or len(node.args) != 1:
            continue
        src = node.args[0]
        producer = _module(gm, src) if isinstance(src, fx.Node) else None
        # only outputs that are fresh tensors used by this activation alone
        if not isinstance(producer, (nn.Conv2d, nn.BatchNorm2d, nn.Linear)) or len(src.users) != 1:
            continue
        inplace = copy.deepcopy(act)
        inplace.inplace = True
        name = f"_inplace_act_{i}"
        gm.add_submodule(name, inplace)
        node.target = name


def _set_submodule(gm: fx.GraphModule, target: str, module: nn.Module) -> None:
    parent, _, name = target.rpartition(".")
    setattr(gm.get_submodule(parent) if parent else gm, name, module)


def _digest(pixels: np.ndarray, module: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).data)
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


class LinearProbeFineTune(FineTune):
    """lpft: what trains in phase 2 (the whole network, as finetune); phase 1 is `probe`, on cached features."""
    name = "lpft"
    probe = FixedFeatures


STRATEGIES = {cls.name: cls for cls in (FineTune, FixedFeatures, LinearProbeFineTune)}


def get_strategy(name: str):
    return STRATEGIES[name]()
