"""What the training loop is fed: shuffled (optionally class-balanced) loaders, a whole epoch of cached features
as one batch, validation items that carry their index, and the class weights of the loss."""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler, WeightedRandomSampler


class _WholeEpoch(Dataset):
    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self):
        return 1

    def __getitem__(self, i):
        return self.x, self.y


def whole_epoch_loader(dataset: Dataset) -> DataLoader:
    """A training loader whose only batch is the whole `dataset` (tensors, e.g. cached features): for
    Classifier(minibatch=...), which shuffles and splits it into mini-batches itself."""
    x, y = dataset[:]  # TensorDataset
    return DataLoader(_WholeEpoch(x, y), batch_size=None, shuffle=False, generator=torch.Generator())   # as make_loader


class _WithIndex(Dataset):
    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        return (*self.dataset[i], i)


def with_index(dataset: Dataset) -> Dataset:
    """(x, y) items -> (x, y, i): what Classifier.validation_step takes, so that under DDP every validation image
    is counted once however the sampler padded the ranks."""
    return _WithIndex(dataset)


def class_weights_for(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """Inverse-frequency weights, n / (k * count_c): each class contributes equally to the loss."""
    counts = np.bincount(labels, minlength=num_classes).astype(np.float64)
    return torch.tensor(len(labels) / (num_classes * np.maximum(counts, 1)), dtype=torch.float32)


def make_loader(dataset: Dataset, labels: np.ndarray | None, *, batch_size: int, shuffle: bool,
                balance: str = "none", num_workers: int = 0, pin_memory: bool = False, replicas: int = 1) -> DataLoader:
    """replicas: DDP processes, among which Lightning's DistributedSampler will share the dataset."""
    sampler = None
    if shuffle and balance == "sampler":
        weights = class_weights_for(labels, int(labels.max()) + 1)[labels]
        sampler = WeightedRandomSampler(weights.double(), len(labels))
    elif shuffle:
        sampler = RandomSampler(dataset)
    # Creating an iterator draws a base seed; from its own generator it leaves the global RNG alone, so the
    # epoch's order does not depend on whether Lightning created the iterator before or after the reseed.
    # A last training batch of one image is dropped: BatchNorm cannot train on a single value per channel.
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      pin_memory=pin_memory, persistent_workers=False, generator=torch.Generator(),
                      drop_last=shuffle and -(-len(dataset) // replicas) % batch_size == 1)

