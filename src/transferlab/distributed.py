"""Data parallel over several processes (GPUs, nodes, or CPU processes over gloo), on Lightning.

Lightning Fabric starts the other processes (re-running this command, as Lightning's `ddp` strategy does), or
finds the ones `torchrun` or Slurm's `srun` started, and joins the process group *before* any data is read, so
that every stage - feature extraction and evaluation as well as the training loop - can split its work by rank.
The Trainer's DDP strategy later finds the process group ready and uses it. One process: every function here is
a no-op that returns what one process would compute.
"""
from __future__ import annotations

from collections.abc import Callable
from contextlib import contextmanager

import torch
import torch.distributed as dist


def launch(device: torch.device, devices: int = 1, num_nodes: int = 1) -> torch.device:
    """Start (or join) `devices` x `num_nodes` processes and return this process's device (cuda:LOCAL_RANK on
    GPUs). One process: `device` unchanged."""
    if devices * num_nodes == 1:
        return device
    if not dist.is_initialized():
        from lightning.fabric import Fabric

        fabric = Fabric(accelerator="cuda" if device.type == "cuda" else "cpu", devices=devices, num_nodes=num_nodes,
                        strategy="ddp")
        fabric.launch()
    return torch.device("cuda", torch.cuda.current_device()) if device.type == "cuda" else device


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_global_zero() -> bool:
    return rank() == 0


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


@contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (e.g. filling an on-disk cache), the other ranks after it (reading that cache).
    Rank 0 releases them even when it fails: they then meet the same error themselves instead of waiting."""
    if world_size() == 1:
        yield
        return
    if is_global_zero():
        try:
            yield
        finally:
            dist.barrier()
    else:
        dist.barrier()
        yield


def every_rank(value) -> list:
    """`value` (any picklable object) from every rank, in rank order, on every rank; one process: [value]."""
    if world_size() == 1:
        return [value]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def shard(n: int) -> slice:
    """This rank's items of 0..n-1: every world_size-th one, from its rank (all of them in one process)."""
    return slice(rank(), n, world_size()) if world_size() > 1 else slice(None)


def gather_shards(compute: Callable[[slice], torch.Tensor], n: int) -> torch.Tensor:
    """compute(shard(n)) on every rank, reassembled on every rank as the (n, ...) tensor one process computes.

    Shards are strided (rank r holds items r, r + W, ...), so the gathered parts interleave back into order,
    and the padding that equal-sized all_gather needs falls beyond item n-1 and is cut off: every item once."""
    local = compute(shard(n))
    w = world_size()
    if w == 1:
        return local
    size = -(-n // w)
    # NCCL moves CUDA tensors only; gloo moves CPU tensors
    via = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    padded = torch.zeros((size, *local.shape[1:]), dtype=local.dtype, device=via)
    padded[:len(local)] = local.to(via)
    parts = [torch.empty_like(padded) for _ in range(w)]
    dist.all_gather(parts, padded)
    return torch.stack(parts, 1).flatten(0, 1)[:n].to(local.device)


def once_each(index: torch.Tensor, *values: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Rows gathered from every rank (leading dims: rank, item), each dataset index kept once, in index order:
    DistributedSampler pads the last ranks with repeats of the first items, which would otherwise count twice."""
    index = index.flatten()
    order = torch.argsort(index, stable=True)
    first = torch.ones_like(order, dtype=torch.bool)
    first[1:] = index[order][1:] != index[order][:-1]
    rows = order[first]
    return tuple(v.flatten(0, 1)[rows] for v in values)
