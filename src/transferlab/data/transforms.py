"""Tensor-side preprocessing: augmentation on uint8 images, then ImageNet normalisation."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

from .images import MappedRows

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def xray_augment(size: int, strength: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Small random affine and brightness/contrast jitter, uint8 (C,H,W) -> uint8 (C,H,W); `strength` scales
    every range (1: rotation 10 degrees, shift 6%, zoom 10%, brightness/contrast 20%).

    Size-independent (translation is a fraction); `size` is taken for a uniform signature."""
    # No flips: the heart is on the patient's left, so a mirrored chest X-ray is not a plausible image.
    shift, zoom, jitter = min(0.06 * strength, 1.0), min(0.1 * strength, 0.9), min(0.2 * strength, 1.0)
    return v2.Compose([
        v2.RandomAffine(degrees=10 * strength, translate=(shift, shift), scale=(1 - zoom, 1 + zoom)),
        v2.ColorJitter(brightness=jitter, contrast=jitter),
    ])


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N,C,H,W) or (C,H,W), C in {1, 3} -> float32 with 3 channels: (x / 255 - mean) / std.

    A 1-channel image is broadcast against the 3-channel mean/std, never copied three times first."""
    if batch.ndim not in (3, 4) or batch.shape[-3] not in (1, 3):
        raise ValueError(f"expected uint8 (N,C,H,W) or (C,H,W) with C in (1, 3), got shape {tuple(batch.shape)}")
    mean = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(3, 1, 1)
    return torch.addcmul(-mean / std, batch.to(torch.float32), 1 / (255 * std))


def pixel_tensor(pixels: np.ndarray) -> torch.Tensor:
    """uint8 rows (an array, or a slice of a read-only memory-mapped cache) -> a tensor of their own: torch
    cannot share read-only memory, and a copy of one batch is what reading from disk costs anyway."""
    return torch.from_numpy(np.array(pixels, dtype=np.uint8, copy=True))


class ImageTensorDataset(torch.utils.data.Dataset):
    """uint8 images (an array or a memory-mapped cache) -> (normalised float32 3xHxW, label); `augment` runs on
    the uint8 image. Reads one image per item, so a memory-mapped cache is never loaded whole; pickled for a
    DataLoader worker process, a memory map travels as its file name and offset (see images.MappedRows)."""

    def __init__(self, pixels: np.ndarray | torch.Tensor, labels, *, mean: Sequence[float], std: Sequence[float],
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.pixels = pixels.numpy() if isinstance(pixels, torch.Tensor) else pixels   # not copied
        self.labels = [int(y) for y in labels]
        if len(self.pixels) != len(self.labels):
            raise ValueError(f"{len(self.pixels)} images but {len(self.labels)} labels")
        self.mean, self.std, self.augment = tuple(mean), tuple(std), augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = pixel_tensor(self.pixels[i])
        if self.augment is not None:
            x = self.augment(x)
        return normalize(x, self.mean, self.std), self.labels[i]

    def __getstate__(self) -> dict:
        return self.__dict__ | {"pixels": MappedRows.of(self.pixels) or self.pixels}

    def __setstate__(self, state: dict) -> None:
        pixels = state["pixels"]
        self.__dict__.update(state, pixels=pixels.open() if isinstance(pixels, MappedRows) else pixels)
