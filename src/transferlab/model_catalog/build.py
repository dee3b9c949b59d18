"""catalog(): one CatalogEntry per model, its static facts first, then (measure=True) its timings.

While measuring, the CPU time other processes used is recorded (machine.OtherLoad): on a busy machine the latencies
are noise, and choice.py compares none of them.
"""
from __future__ import annotations

import torch

from ..config import MODEL_BUDGET_S   # measuring one model: at most about this many seconds (model_budget_s)
from ..console import progress_bar
from ..errors import TransferlabError
from ..machine import OtherLoad
from ..models.registry import get_spec, list_models
from .entries import NUM_CLASSES, CatalogEntry, static_entry
from .timing import apply_measurement, latency_groups, run_latencies, run_measurement

FLOPS_NAMES_LIMIT = 20          # count FLOPs without `measure` only for this many models or fewer (~0.3 s each)


def catalog(names: list[str] | None = None, *, measure: bool = False, device: str = "auto", batch_size: int = 32,
            repeats: int = 10, warmup: int = 3, image_size: int | dict | None = None, progress: bool = True,
            count_flops: bool | None = None, isolate: bool = True, budget_s: float = 30.0,
            threads: int | None = None, num_classes: int = NUM_CLASSES,
            model_budget_s: float | None = MODEL_BUDGET_S) -> list[CatalogEntry]:
    """One CatalogEntry per model (all registered models when `names` is None), each with a new head for
    `num_classes` classes (the trainable-parameter counts and the training-step timings depend on it).

    image_size: one resolution for every model, or {name: size} (missing names: the model's own).
    count_flops: None = when measuring or for <= FLOPS_NAMES_LIMIT models (otherwise `gflops_meta` only).
    repeats / warmup are upper bounds: a timing phase ends once it has run `budget_s` seconds (per model) and has
    at least MIN_REPEATS samples, so big models at batch 32 on a small CPU still finish. isolate=False measures
    in this process (no ~3 s interpreter start per model; CPU peak memory then relies on resetting the peak-RSS
    mark). threads: torch CPU threads for every measurement (default: this process's count).
    model_budget_s: wall-clock seconds for measuring one model, warm-up included (LATENCY_SHARE of it for its
    share of the latency rounds, the rest for throughput and the two training steps; the process start is not
    counted); None: no limit. When it is spent, the model's timing stops after the call in progress (a measurement
    that has started gets at least one timed call), what is left is not measured (None), and `budget_note` says
    which numbers are missing or rest on fewer than MIN_REPEATS calls.
    """
    if num_classes < 2:
        raise TransferlabError(f"--classes must be at least 2, not {num_classes}")
    if model_budget_s is not None and not model_budget_s > 0:
        raise TransferlabError(f"--budget-s must be positive, not {model_budget_s}")
    names = list_models() if names is None else list(names)
    for name in names:
        get_spec(name)          # unknown names fail before any work
    flops = count_flops if count_flops is not None else (measure or len(names) <= FLOPS_NAMES_LIMIT)
    sizes = image_size if isinstance(image_size, dict) else {name: image_size for name in names}
    entries = [static_entry(name, flops=flops, image_size=sizes.get(name), num_classes=num_classes)
               for name in progress_bar(names, progress=progress and not measure, desc="models", unit="model")]
    if not measure:
        return entries
    from ..runtime import resolve_device

    settings = dict(device=str(resolve_device(device)), repeats=repeats, warmup=warmup, budget_s=budget_s,
                    threads=threads or torch.get_num_threads(), model_budget_s=model_budget_s)
    with OtherLoad() as load:
        for group in latency_groups(entries):
            for entry, result in zip(group, run_latencies(group, isolate=isolate, **settings)):
                apply_measurement(entry, result)
        bar = progress_bar(entries, progress=progress, desc="measuring", unit="model")
        for entry in bar:
            bar.set_postfix_str(entry.name)
            if entry.error is None:
                apply_measurement(entry, run_measurement(entry.name, entry.resolution, isolate=isolate,
                                                         batch_size=batch_size, num_classes=num_classes,
                                                         **settings))
    for entry in entries:
        entry.other_load_cpus, entry.busy = load.cpus, load.busy
    return entries
