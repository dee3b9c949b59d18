"""Tensor-side preprocessing: augmentation on uint8 images, then ImageNet normalisation."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def xray_augment(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Small random affine and brightness/contrast jitter, uint8 (C,H,W) -> uint8 (C,H,W).

    Size-independent (translation is a fraction); `size` is taken for a uniform signature."""
    # No flips: the heart is on the patient's left, so a mirrored chest X-ray is not a plausible image.
    return v2.Compose([
        v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1)),
        v2.ColorJitter(brightness=0.2, contrast=0.2),
    ])


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N,C,H,W) or (C,H,W), C in {1, 3} -> float32 with 3 channels: (x / 255 - mean) / std.

    A 1-channel image is broadcast against the 3-channel mean/std, never copied three times first."""
    if batch.ndim not in (3, 4) or batch.shape[-3] not in (1, 3):
        raise ValueError(f"expected uint8 (N,C,H,W) or (C,H,W) with C in (1, 3), got shape {tuple(batch.shape)}")
    mean = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(3, 1, 1)
    return torch.addcmul(-mean / std, batch.to(torch.float32), 1 / (255 * std))


class ImageTensorDataset(torch.utils.data.Dataset):
    """In-memory uint8 images -> (normalised float32 3xHxW, label); `augment` runs on the uint8 image."""

    def __init__(self, pixels: np.ndarray | torch.Tensor, labels, *, mean: Sequence[float], std: Sequence[float],
                 augment: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.pixels = torch.from_numpy(pixels) if isinstance(pixels, np.ndarray) else pixels   # shares memory
        self.labels = [int(y) for y in labels]
        if len(self.pixels) != len(self.labels):
            raise ValueError(f"{len(self.pixels)} images but {len(self.labels)} labels")
        self.mean, self.std, self.augment = tuple(mean), tuple(std), augment

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.pixels[i]
        if self.augment is not None:
            x = self.augment(x)
        return normalize(x, self.mean, self.std), self.labels[i]
