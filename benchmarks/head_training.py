#!/usr/bin/env python
"""How long the `features` strategy's head takes to train on cached features, quiet and under background load.

    python benchmarks/head_training.py                         # quiet machine
    python benchmarks/head_training.py --background-load 2     # 2 CPU-bound processes beside it (a busy machine)

The head (Linear 1280 -> 2, EfficientNet-Lite0's feature size) trains for 30 epochs at batch 64 on 4,484 + 748
random "features" (the Kermany train/val split sizes), with the real transferlab code, two ways:
  per-step    the previous loop: a DataLoader batch per Lightning training step (71 steps an epoch), validation in
              batches of 64, torch's default thread count
  one-step    transferlab now (training.make_loaders(cached=True) + Classifier(minibatch=64)): each epoch is one
              Lightning step that runs the same 71 mini-batch optimizer steps itself, on one thread; validation
              is one batch
Both run the same epochs, mini-batches, optimizer, schedule, early-stopping monitor and checkpoints (patience is
set high so that both run every epoch). Prints seconds per run (best of --repeats), steps/s and
    SUMMARY per_step_s=<a> one_step_s=<b> speedup=<a/b> background_load=<n> other_load_cpus=<x>
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from load import background_load  # noqa: E402

import torch  # noqa: E402
from torch.utils.data import TensorDataset  # noqa: E402

from transferlab.config import TrainConfig  # noqa: E402
from transferlab.engine import Classifier, fit  # noqa: E402
from transferlab.loaders import class_weights_for, make_loader, with_index  # noqa: E402
from transferlab.machine import OtherLoad  # noqa: E402
from transferlab.training import make_loaders  # noqa: E402


def data(n: int, dim: int, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = (torch.rand(n, generator=g) < 0.74).long()                     # Kermany's ~1:2.9 imbalance
    x = torch.randn(n, dim, generator=g) + 0.5 * y[:, None] * torch.randn(1, dim, generator=g)
    return TensorDataset(x, y)


def run(way: str, train_set, val_set, cfg: TrainConfig) -> tuple[float, int]:
    torch.manual_seed(0)
    head = torch.nn.Linear(train_set.tensors[0].shape[1], 2)
    labels = train_set.tensors[1].numpy()
    one_step = way == "one-step"
    module = Classifier(head, [{"params": list(head.parameters()), "lr": cfg.lr}],
                        class_weights=class_weights_for(labels, 2), epochs=cfg.epochs, weight_decay=cfg.weight_decay,
                        seed=0, minibatch=cfg.batch_size if one_step else None)
    device = torch.device("cpu")
    if one_step:
        loaders = make_loaders(cfg, train_set, labels, val_set, device, cached=True)
    else:
        loaders = (make_loader(train_set, labels, batch_size=cfg.batch_size, shuffle=True),
                   make_loader(with_index(val_set), None, batch_size=cfg.batch_size, shuffle=False))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        fitted = fit(module, *loaders, checkpoint_dir=Path(tmp), epochs=cfg.epochs, monitor=cfg.monitor,
                     patience=10**6, device=device, precision="32-true", resume=False, progress=False)
        seconds = time.perf_counter() - start
    assert fitted["stopped_epoch"] == cfg.epochs
    return seconds, module.trainer.global_step


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=4484)
    parser.add_argument("--val", type=int, default=748)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--background-load", type=int, default=0, help="CPU-bound processes running beside it")
    args = parser.parse_args(argv)
    cfg = TrainConfig(strategy="features", epochs=args.epochs, progress=False)
    train_set, val_set = data(args.train, args.dim), data(args.val, args.dim, seed=1)
    print(f"head Linear({args.dim}, 2), {args.train} + {args.val} cached features, {cfg.epochs} epochs at batch "
          f"{cfg.batch_size}; torch threads {torch.get_num_threads()}; background load {args.background_load}")
    best = {}
    with background_load(args.background_load), OtherLoad() as load:
        for _ in range(args.repeats):
            for way in ("per-step", "one-step"):
                seconds, steps = run(way, train_set, val_set, cfg)
                best[way] = min(best.get(way, float("inf")), seconds)
                print(f"{way:>9}: {seconds:6.2f} s, {steps} optimizer steps, {steps / seconds:7.0f} steps/s", flush=True)
    print(f"other processes kept {load.cpus:.2f} CPUs busy meanwhile")
    print(f"SUMMARY per_step_s={best['per-step']:.2f} one_step_s={best['one-step']:.2f} "
          f"speedup={best['per-step'] / best['one-step']:.1f} background_load={args.background_load} "
          f"other_load_cpus={load.cpus:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
