#!/usr/bin/env python
"""Where a peers.py contender's main thread spends its time, from a py-spy profile (benchmarks/peers.py docstring).

    py-spy record --subprocesses --idle --format raw --rate 50 -o fastai.txt -- \
        python benchmarks/peers.py --contenders fastai --max-images 300 --epochs 2
    python benchmarks/pyspy_phases.py fastai.txt

Only the contender's own main thread counts (its DataLoader workers and helper threads apart: workers are shown as
busy or waiting). A sample goes to the first phase, in PHASES' order, one of whose markers names a frame of its
stack; seconds are samples / --rate.
"""
from __future__ import annotations

import argparse
from collections import Counter

CONTENDER_FRAMES = ("run_fastai", "run_transferlab", "run_tutorial")
PHASES = [   # (phase, markers: a frame's function name contains one of them), first match wins
    ("backward", ("Tensor.backward", "_engine_run_backward")),
    ("validation and scoring", ("_do_epoch_validate", "get_preds", "validation_step", "predict_probs", "evaluate_split",
                                "on_validation", "_predict")),
    ("training forward + loss", ("training_step",)),   # Lightning: inside the optimizer's closure, so before it
    ("optimizer step", ("Optimizer.step", "_do_grad_opt", "optimizer_step")),
    ("training forward + loss", ("_do_one_batch",)),   # fastai: its batch holds the optimizer step, so after it
    ("decode", ("load_images", "decode")),
    ("data pipeline in the main thread", ("DataLoader.__iter__", "_next_data", "__getitem__", "fetch")),
]


def phases(path: str) -> tuple[Counter, Counter]:
    main, workers = Counter(), Counter()
    for line in open(path):
        stack, count = line.rsplit(" ", 1)
        names = [f.split(" (")[0] for f in stack.split(";")]
        if not any(c in names for c in CONTENDER_FRAMES) or "Thread.run" in names:
            continue
        if "_worker_loop" in names:   # a DataLoader worker (forked: it carries the parent's stack)
            workers["waiting" if "Queue.get" in names or "_ConnectionBase.poll" in names else "busy"] += int(count)
            continue
        phase = next((p for p, markers in PHASES if any(m in n for n in names for m in markers)), "other")
        main[phase] += int(count)
    return main, workers


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("profiles", nargs="+", help="py-spy --format raw outputs")
    p.add_argument("--rate", type=float, default=50, help="py-spy's --rate (samples a second; default 50)")
    args = p.parse_args()
    for path in args.profiles:
        main_thread, workers = phases(path)
        total = sum(main_thread.values()) or 1
        print(f"## {path}: contender's main thread {total / args.rate:.1f} s")
        for phase, n in main_thread.most_common():
            print(f"  {phase:34s} {n / args.rate:7.1f} s {n / total:6.1%}")
        if workers:
            print("  DataLoader workers: " + ", ".join(f"{k} {v / args.rate:.1f} s" for k, v in workers.items()))


if __name__ == "__main__":
    main()
