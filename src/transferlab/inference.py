"""Class probabilities of a trained network on a dataset."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .console import progress_bar
from .gpu import pin_memory_for, to_device
from .runtime import reuse_freed_memory
from .strategies import inference_model


@torch.inference_mode()
def predict_probs(net: torch.nn.Module, dataset: Dataset, *, batch_size: int = 64, device: torch.device,
                  channels_last: bool = False, progress: bool = False, desc: str = "predict") -> np.ndarray:
    """Class probabilities (N, C) of `net` on `dataset`, in eval mode."""
    net.eval().to(device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    out = []
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, pin_memory=pin_memory_for(dataset, device))
    with reuse_freed_memory(enabled=device.type == "cpu"):
        for i, (x, _) in enumerate(progress_bar(loader, progress=progress, desc=desc, leave=False)):
            x = to_device(x, device)
            if channels_last and x.dim() == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            if i == 0:
                fast = inference_model(net, x[:1])
            with torch.autocast(device.type, enabled=device.type == "cuda"):
                out.append(fast(x).float().softmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 2), dtype=np.float32)
