"""Tensor-side preprocessing: augmentation on uint8 images, then ImageNet normalisation.

Speed: the augmentation and the normalisation run on whole batches (one affine_grid/grid_sample and a few
element-wise ops for 32 images), not image by image. ImageTensorDataset implements `__getitems__`, which
torch's DataLoader calls with the batch's indices, so a training batch costs a handful of tensor ops instead
of ~10 small ops per image; on 2 cores the per-image path spent more time in thread start-up than in work.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)   # torchvision's rgb_to_grayscale, used for the contrast mean


class XrayAugment:
    """Small random affine and brightness/contrast jitter on uint8 images, one image or a batch.

    Same distributions as ``v2.Compose([v2.RandomAffine(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1)),
    v2.ColorJitter(brightness=0.2, contrast=0.2)])``: rotation U(-10, 10) degrees about the centre, translation a
    whole number of pixels up to 6 % of each side, scale U(0.9, 1.1), nearest-neighbour sampling, zero fill;
    then brightness and contrast factors U(0.8, 1.2) applied in a random order, each clamped to 0..255.
    Parameters are drawn from torch's global RNG, one set per image.
    """

    def __init__(self, degrees: float = 10.0, translate: tuple[float, float] = (0.06, 0.06),
                 scale: tuple[float, float] = (0.9, 1.1), brightness: float = 0.2, contrast: float = 0.2):
        self.degrees, self.translate, self.scale = float(degrees), tuple(translate), tuple(scale)
        self.brightness, self.contrast = float(brightness), float(contrast)

    def __repr__(self) -> str:
        return (f"XrayAugment(degrees={self.degrees}, translate={self.translate}, scale={self.scale}, "
                f"brightness={self.brightness}, contrast={self.contrast})")

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (C,H,W) -> uint8 (C,H,W)."""
        return self.batch(image.unsqueeze(0))[0].round_().to(torch.uint8)

    def batch(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 or float (N,C,H,W) in 0..255 -> float32 (N,C,H,W) in 0..255 (not rounded: normalise next)."""
        x = images.to(torch.float32)
        n, c, h, w = x.shape
        if n == 0:
            return x
        x = self._affine(x, n, h, w)
        return self._jitter(x, n, c)

    def _affine(self, x: torch.Tensor, n: int, h: int, w: int) -> torch.Tensor:
        angle = torch.empty(n).uniform_(-self.degrees, self.degrees) * (math.pi / 180)
        max_dx, max_dy = self.translate[0] * w, self.translate[1] * h
        tx = torch.empty(n).uniform_(-max_dx, max_dx).round()
        ty = torch.empty(n).uniform_(-max_dy, max_dy).round()
        s = torch.empty(n).uniform_(*self.scale)
        # output pixel p (centred pixel coordinates) samples input (R S)^-1 (p - t); in affine_grid's normalised
        # coordinates u = D p, D = diag(2/w, 2/h): theta = D (R S)^-1 D^-1 | -D (R S)^-1 t
        cos, sin = torch.cos(angle) / s, torch.sin(angle) / s
        a, b = cos, sin * (h / w)
        c_, d = -sin * (w / h), cos
        theta = torch.stack([
            torch.stack([a, b, -(cos * tx + sin * ty) * (2 / w)], 1),
            torch.stack([c_, d, -(-sin * tx + cos * ty) * (2 / h)], 1),
        ], 1)
        grid = F.affine_grid(theta, [n, 1, h, w], align_corners=False)
        return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)

    def _jitter(self, x: torch.Tensor, n: int, c: int) -> torch.Tensor:
        bright = torch.empty(n).uniform_(1 - self.brightness, 1 + self.brightness).view(n, 1, 1, 1)
        contr = torch.empty(n).uniform_(1 - self.contrast, 1 + self.contrast).view(n, 1, 1, 1)
        brightness_first = (torch.rand(n) < 0.5).view(n, 1, 1, 1)
        for step in range(2):
            use_brightness = brightness_first if step == 0 else ~brightness_first
            gray = x if c == 1 else (x * torch.tensor(_GRAY_WEIGHTS).view(1, 3, 1, 1)).sum(1, keepdim=True)
            mean = gray.floor().mean(dim=(1, 2, 3), keepdim=True)   # torchvision floors uint8 grayscale first
            alpha = torch.where(use_brightness, bright, contr)
            beta = torch.where(use_brightness, torch.zeros_like(mean), (1 - contr) * mean)
            x = torch.addcmul(beta, x, alpha).clamp_(0, 255)
        return x


def xray_augment(size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """Small random affine and brightness/contrast jitter, uint8 (C,H,W) -> uint8 (C,H,W).

    Size-independent (translation is a fraction); `size` is taken for a uniform signature.
    The returned XrayAugment also has `.batch()`, which ImageTensorDataset uses for whole batches."""
    # No flips: the heart is on the patient's left, so a mirrored chest X-ray is not a plausible image.
    return XrayAugment(degrees=10, translate=(0.06, 0.06), scale=(0.9, 1.1), brightness=0.2, contrast=0.2)


def normalize(batch: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (N,C,H,W) or (C,H,W), C in {1, 3} -> float32 with 3 channels: (x / 255 - mean) / std.

    A 1-channel image is broadcast against the 3-channel mean/std, never copied three times first."""
    if batch.ndim not in (3, 4) or batch.shape[-3] not in (1, 3):
        raise ValueError(f"expected uint8 (N,C,H,W) or (C,H,W) with C in (1, 3), got shape {tuple(batch.shape)}")
    mean = torch.as_tensor(mean, dtype=torch.float32, device=batch.device).view(3, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=batch.device).view(3, 1, 1)
    return torch.addcmul(-mean / std, batch.to(torch.float32), 1 / (255 * std))


class ImageTensorDataset(torch.utils.data.Dataset):
    """In-memory uint8 images -> (normalised float32 3xHxW, label); `augment` runs on the uint8 image.

    DataLoader fetches whole batches through `__getitems__`: one indexing, one (batched) augmentation and one
    normalisation per batch. An `augment` with a `.batch` method (xray_augment's) is applied to the batch at
    once; any other callable still runs image by image."""

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

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """The samples at `indices`, computed as one batch (DataLoader's batched fetch)."""
        indices = [int(i) for i in indices]
        if not indices:
            return []
        x = self.pixels[indices]                       # (N, C, H, W) uint8 copy of the batch
        if self.augment is not None:
            batch_fn = getattr(self.augment, "batch", None)
            x = batch_fn(x) if callable(batch_fn) else torch.stack([self.augment(img) for img in x])
        x = normalize(x, self.mean, self.std)
        return list(zip(x.unbind(0), (self.labels[i] for i in indices)))
