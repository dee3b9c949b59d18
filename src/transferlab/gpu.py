"""Host-to-GPU copies that overlap with compute: pinned (page-locked) memory and non-blocking copies.

On the CPU both are no-ops, so the same code path runs everywhere."""
from __future__ import annotations

import torch
from torch.utils.data import Dataset


def to_device(batch: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`batch` on `device`; from the CPU to CUDA through pinned memory, without waiting for the copy to finish
    (CUDA orders it before any kernel that reads it)."""
    if batch.device == device or device.type != "cuda":
        return batch.to(device)
    if batch.device.type == "cpu" and not batch.is_pinned():
        batch = batch.pin_memory()
    return batch.to(device, non_blocking=True)


def pin_memory_for(dataset: Dataset, device: torch.device) -> bool:
    """DataLoader(pin_memory=...): on CUDA, for a dataset whose tensors are on the CPU (cached features that
    already live on the GPU cannot be pinned, and need no copy)."""
    if device.type != "cuda" or len(dataset) == 0:
        return False
    first = dataset[0][0]
    return not torch.is_tensor(first) or first.device.type == "cpu"
