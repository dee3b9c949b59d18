"""Transfer strategies: what trains, what is frozen, and what the training loop is fed.

- finetune: the whole network trains on (augmented) images; the backbone at a lower learning rate.
- features: the ImageNet backbone is a fixed feature extractor. It stays frozen and in eval mode (its
  BatchNorm statistics are never updated); its output is computed once per image and cached, and only the
  new head trains, on those cached features. The result is still one TransferModel (backbone + head).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import Dataset, TensorDataset
from tqdm.auto import tqdm

from .data.transforms import ImageTensorDataset, normalize, xray_augment
from .models.heads import TransferModel


class FineTune:
    name = "finetune"
    channels_last = True

    def trainable(self, model: TransferModel) -> nn.Module:
        model.requires_grad_(True)
        return model

    def param_groups(self, model: TransferModel, lr: float, backbone_lr_factor: float) -> list[dict]:
        return [{"params": list(model.backbone.parameters()), "lr": lr * backbone_lr_factor},
                {"params": list(model.head.parameters()), "lr": lr}]

    def dataset(self, model: TransferModel, pixels: np.ndarray, labels: np.ndarray, *, mean, std,
                augment: bool, device: torch.device, progress: bool, cache_dir: Path | None) -> Dataset:
        size = pixels.shape[-1]
        return ImageTensorDataset(pixels, labels, mean=mean, std=std, augment=xray_augment(size) if augment else None)


class FixedFeatures:
    name = "features"
    channels_last = False   # the trained module is a Linear layer on feature vectors
    _memory: "OrderedDict[str, torch.Tensor]" = OrderedDict()   # features of recent inputs, kept across runs

    def trainable(self, model: TransferModel) -> nn.Module:
        model.backbone.requires_grad_(False).eval()
        return model.head

    def param_groups(self, model: TransferModel, lr: float, backbone_lr_factor: float) -> list[dict]:
        return [{"params": list(model.head.parameters()), "lr": lr}]

    def dataset(self, model: TransferModel, pixels: np.ndarray, labels: np.ndarray, *, mean, std,
                augment: bool, device: torch.device, progress: bool, cache_dir: Path | None) -> Dataset:
        feats = self.features(model, pixels, mean=mean, std=std, device=device, progress=progress, cache_dir=cache_dir)
        return TensorDataset(feats, torch.as_tensor(labels, dtype=torch.long))

    def features(self, model: TransferModel, pixels: np.ndarray, *, mean, std, device: torch.device,
                 progress: bool, cache_dir: Path | None, batch_size: int = 64) -> torch.Tensor:
        """Backbone outputs for every image, computed once: reused from memory or disk when the same
        backbone weights meet the same pixels again (other seeds of a study, a resumed run)."""
        key = _digest(pixels, model.backbone)
        if key in self._memory:
            self._memory.move_to_end(key)
            return self._memory[key]
        path = cache_dir / "features" / f"{key}.safetensors" if cache_dir else None
        if path is not None and path.exists():
            feats = load_file(path)["features"]
        else:
            feats = extract_features(model, pixels, mean=mean, std=std, device=device, progress=progress,
                                     batch_size=batch_size)
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                save_file({"features": feats}, tmp)
                tmp.replace(path)
        self._memory[key] = feats
        while len(self._memory) > 8:
            self._memory.popitem(last=False)
        return feats


@torch.inference_mode()
def extract_features(model: TransferModel, pixels: np.ndarray, *, mean, std, device: torch.device,
                     progress: bool = True, batch_size: int = 64) -> torch.Tensor:
    """One forward pass of the frozen backbone (eval mode) over uint8 images -> float32 features on CPU."""
    backbone = model.backbone.eval().to(device).to(memory_format=torch.channels_last)
    images = torch.from_numpy(np.ascontiguousarray(pixels))
    out = []
    for start in tqdm(range(0, len(images), batch_size), desc="features", disable=not progress, leave=False):
        x = normalize(images[start:start + batch_size], mean, std).to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            out.append(backbone(x.contiguous(memory_format=torch.channels_last)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, model.feature_dim)


def _digest(pixels: np.ndarray, module: nn.Module) -> str:
    h = hashlib.blake2b(digest_size=16)
    h.update(str(pixels.shape).encode())
    h.update(np.ascontiguousarray(pixels).data)
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


STRATEGIES = {cls.name: cls for cls in (FineTune, FixedFeatures)}


def get_strategy(name: str):
    return STRATEGIES[name]()
