"""Tensor-side preprocessing: augmentation on uint8 images, then ImageNet normalisation."""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torchvision.transforms import v2

from .images import MappedRows

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def basic_augment(size: int, strength: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Small random affine and brightness/contrast jitter, uint8 (C,H,W) -> uint8 (C,H,W); `strength` scales
    every range (1: rotation 10 degrees, shift 6%, zoom 10%, brightness/contrast 20%).

    Size-independent (translation is a fraction); `size` is taken for a uniform signature."""
    # No flips: the heart is on the patient's left, so a mirrored chest X-ray is not a plausible image.
    shift, zoom, jitter = min(0.06 * strength, 1.0), min(0.1 * strength, 0.9), min(0.2 * strength, 1.0)
    return v2.Compose([
        v2.RandomAffine(degrees=10 * strength, translate=(shift, shift), scale=(1 - zoom, 1 + zoom)),
        v2.ColorJitter(brightness=jitter, contrast=jitter),
    ])


class _RandomGamma(torch.nn.Module):
    """Intensity curve x -> x ** gamma, gamma log-uniform in [1 / top, top]: another detector's response."""

    def __init__(self, top: float):
        super().__init__()
        self.log_top = float(np.log(top))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gamma = float(np.exp((2 * torch.rand(()).item() - 1) * self.log_top))
        return v2.functional.adjust_gamma(x, gamma)


class _LowerResolution(torch.nn.Module):
    """Down to a random fraction in [lowest, 1] of the size and back up: a detector with coarser pixels."""

    def __init__(self, lowest: float):
        super().__init__()
        self.lowest = lowest

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-1]
        small = max(8, round(size * (self.lowest + (1 - self.lowest) * torch.rand(()).item())))
        return v2.functional.resize(v2.functional.resize(x, [small, small], antialias=True), [size, size],
                                    antialias=True)


# --augment xray: what differs between X-ray machines and hospitals, each applied to half of the images (at
# strength 1). The ranges stop short of the shift harness's settings (benchmarks/shift.py: gamma 0.6 and 1.6,
# contrast 0.6, blur sigma 3, noise sd 15, JPEG quality 10, 64 px, crop 75%), which then measure how far the
# robustness carries beyond what training saw, not a copy of it.
XRAY_P = 0.5


def acquisition_augment(size: int, strength: float = 1.0) -> Callable[[torch.Tensor], torch.Tensor]:
    """Acquisition augmentation, uint8 (C,H,W) -> uint8 (C,H,W): framing (zoom 0.9-1.2, shift 5%, rotation
    8 degrees), intensity (gamma 0.75-1.33, brightness/contrast 25%), detail (blur sigma up to 1.5 or unsharp
    masking), noise (sd 2% of the range), JPEG quality 30-95 and resolution down to 50%; `strength` scales every
    range (0: the image unchanged)."""
    s = strength
    p = min(1.0, XRAY_P * s) if s > 0 else 0.0
    return v2.Compose([
        v2.RandomAffine(degrees=8 * s, translate=(min(0.05 * s, 1.0),) * 2,
                        scale=(max(0.1, 1 - 0.1 * s), 1 + 0.2 * s)),
        v2.RandomApply([_RandomGamma(1 + 0.33 * s)], p=p),
        v2.RandomApply([v2.ColorJitter(brightness=min(0.25 * s, 1.0), contrast=min(0.25 * s, 1.0))], p=p),
        v2.RandomApply([v2.RandomChoice([v2.GaussianBlur(9, (0.1, max(0.1, 1.5 * s))),
                                         v2.RandomAdjustSharpness(1 + 2 * s, p=1.0)])], p=p),
        v2.RandomApply([v2.GaussianNoise(sigma=0.02 * s, clip=True)], p=p),
        v2.RandomApply([_LowerResolution(max(0.05, 1 - 0.5 * s))], p=p),
        v2.RandomApply([v2.JPEG((max(1, round(95 - 65 * min(s, 1.4))), 95))], p=p),
    ])


AUGMENTATIONS = {"basic": basic_augment, "xray": acquisition_augment}   # --augment; "none": no augmentation


def augments(name: str, strength: float) -> bool:
    """Whether --augment NAME at --augment-strength STRENGTH changes anything ("none" and strength 0 do not)."""
    return name != "none" and strength != 0


def make_augment(name: str, size: int, strength: float) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The training augmentation --augment names, at --augment-strength; None where it would not augment."""
    if not augments(name, strength):
        return None
    return AUGMENTATIONS[name](size, strength)


def augmented_copy(pixels: np.ndarray, augment: Callable[[torch.Tensor], torch.Tensor], seed: int) -> np.ndarray:
    """One random view of every image (uint8 rows in, a new uint8 array out), drawn from `seed` alone: the same
    seed gives the same views, without touching the caller's random state."""
    out = np.empty(pixels.shape, dtype=np.uint8)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(len(pixels)):
            out[i] = augment(torch.from_numpy(np.array(pixels[i]))).numpy()
    return out


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
