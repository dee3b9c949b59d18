"""Model catalogue (`transferlab models`): size, compute, ImageNet accuracy and, on request, measured speed.

Without `measure` nothing runs on real tensors: each model is built on PyTorch's meta device (no memory, no
weights) to count parameters and, when few models are asked for (<= FLOPS_NAMES_LIMIT) or when measuring, FLOPs.
With `measure`, the models are benchmarked with random weights (same cost as pretrained), fp32, no autocast, on a
fixed number of threads:
- latency at batch 1, like `timeit`: the fastest of many calls (the least disturbed by other work), with the
  median and 90th percentile as the spread. The models are timed in turn, round after round (interleaved, in one
  process), so that a burst of other work slows them all alike instead of one model's whole series;
- in a fresh Python process per model (so that its peak memory is its own): inference throughput, and one
  training step (forward + backward) at `batch_size` for both strategies (finetune: everything trains;
  features: frozen backbone in eval mode, only the new head trains).
While measuring, the CPU time other processes used is recorded (machine.OtherLoad). On a busy machine the
latencies are noise: they are shown, but the Pareto front and the recommendations use GFLOPs instead, and say why.
"""
from __future__ import annotations

import csv
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode

from .config import MODEL_BUDGET_S   # measuring one model: at most about this many seconds (model_budget_s)
from .console import progress_bar
from .machine import BUSY_SHARE, OtherLoad
from .errors import TransferlabError
from .formatting import MISSING, fmt
from .models.heads import create_model, feature_dim, find_head
from .models.registry import build_model, get_spec, list_models

NUM_CLASSES = 2                 # default classes of the new head (NORMAL vs PNEUMONIA); catalog(num_classes=...)
FLOPS_NAMES_LIMIT = 20          # count FLOPs without `measure` only for this many models or fewer (~0.3 s each)
MIN_REPEATS = 3                 # a timing phase stops after `budget_s` once it has this many samples
LATENCY_SHARE = 0.25            # ... of which its share of the batch-1 latency rounds; the rest: throughput + steps
LATENCY_GROUP_PARAMS = 400e6    # models timed together (interleaved) in one process: at most this many parameters
HIGHER_IS_BETTER = {"acc1", "acc5", "throughput_ips", "train_ips_finetune", "train_ips_features"}


@dataclass
class CatalogEntry:
    name: str
    source: str
    input_size: int                          # the weights' native resolution
    params_total: int                        # the ImageNet model as built (1000-class head, no aux heads)
    params_trainable_finetune: int           # backbone + new num_classes-class head
    params_trainable_features: int           # new num_classes-class head only
    gflops: float | None                     # counted (FlopCounterMode, GMACs) at `resolution`
    gflops_meta: float | None                # published (torchvision meta `_ops` / EfficientNet-Lite README)
    acc1: float | None
    acc5: float | None
    file_size_mb: float | None
    weights_file: str | None
    resolution: int | None = None            # image size FLOPs were counted and timings measured at
    latency_ms: float | None = None          # inference, batch 1: the fastest call (as timeit)
    latency_ms_median: float | None = None   # ... the median and 90th percentile of the calls: the spread
    latency_ms_p90: float | None = None
    throughput_ips: float | None = None      # inference images/s at batch_size
    train_step_ms_finetune: float | None = None
    train_ips_finetune: float | None = None
    train_step_ms_features: float | None = None
    train_ips_features: float | None = None
    peak_mem_mb: float | None = None         # CUDA max allocated, or the process's peak RSS increase on CPU
    batch_size: int | None = None
    device: str | None = None
    threads: int | None = None               # torch CPU threads while measuring
    other_load_cpus: float | None = None     # CPUs other processes kept busy while the catalogue was measured
    busy: bool | None = None                 # other_load_cpus > BUSY_SHARE of the CPUs: latencies are unreliable
    error: str | None = None                 # why measuring this model failed (e.g. out of memory)
    budget_note: str | None = None           # what its time budget (model_budget_s) left unmeasured or cut short
    num_classes: int = NUM_CLASSES           # classes of the new head the trainable counts and timings assume
    metrics_source: str | None = None        # where acc1/acc5 come from (or why they are blank)


def count_gflops(model: torch.nn.Module, input_size: int) -> float:
    """GMACs for one image (FLOPs / 2 / 1e9, torchvision's `_ops` convention), on the model's own device
    (the meta device counts without computing anything)."""
    p = next(model.parameters())
    x = torch.zeros(1, 3, input_size, input_size, device=p.device, dtype=p.dtype)
    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9


class _AllocateOnMeta(TorchFunctionMode):
    """Puts new tensors (parameters, buffers) on the meta device but leaves the small index arithmetic some
    constructors do on the CPU (RegNet calls torch.arange(...).tolist(), which torch.device("meta") breaks)."""
    _ALLOCATORS = {torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self._ALLOCATORS and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def _static_entry(name: str, *, flops: bool, image_size: int | None, num_classes: int = NUM_CLASSES) -> CatalogEntry:
    spec = get_spec(name)
    with _AllocateOnMeta():
        model = build_model(name, weights="none")
    model = model.to("meta")
    _, head = find_head(model)
    total = sum(p.numel() for p in model.parameters())
    head_params = sum(p.numel() for p in head.parameters())
    new_head = feature_dim(model) * num_classes + num_classes
    resolution = image_size or spec.input_size
    return CatalogEntry(
        name=name, source=spec.source, input_size=spec.input_size, params_total=total,
        params_trainable_finetune=total - head_params + new_head, params_trainable_features=new_head,
        gflops=round(count_gflops(model, resolution), 4) if flops else None, gflops_meta=spec.gflops,
        acc1=spec.acc1, acc5=spec.acc5, file_size_mb=spec.file_size_mb, weights_file=spec.weights_file,
        resolution=resolution, num_classes=num_classes, metrics_source=spec.metrics_source)


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
    entries = [_static_entry(name, flops=flops, image_size=sizes.get(name), num_classes=num_classes)
               for name in progress_bar(names, progress=progress and not measure, desc="models", unit="model")]
    if not measure:
        return entries
    from .runtime import resolve_device

    settings = dict(device=str(resolve_device(device)), repeats=repeats, warmup=warmup, budget_s=budget_s,
                    threads=threads or torch.get_num_threads(), model_budget_s=model_budget_s)
    with OtherLoad() as load:
        for group in _latency_groups(entries):
            for entry, result in zip(group, _run_latencies(group, isolate=isolate, **settings)):
                _apply_measurement(entry, result)
        bar = progress_bar(entries, progress=progress, desc="measuring", unit="model")
        for entry in bar:
            bar.set_postfix_str(entry.name)
            if entry.error is None:
                _apply_measurement(entry, _run_measurement(entry.name, entry.resolution, isolate=isolate,
                                                           batch_size=batch_size, num_classes=num_classes,
                                                           **settings))
    for entry in entries:
        entry.other_load_cpus, entry.busy = load.cpus, load.busy
    return entries


# --- measuring ---------------------------------------------------------------------------------------------

_CHILD = ("import json, sys; from transferlab import model_catalog as c; "
          "job = json.load(sys.stdin); print(json.dumps(getattr(c, job.pop('function'))(**job)))")


def _in_child(function: str, **job):
    """model_catalog.<function>(**job) in a fresh Python process (own peak memory; no multiprocessing re-import of
    __main__); {"error": ...} when it fails (out of memory, killed, ...), so that the other models carry on."""
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(dict(function=function, **job)),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        return {"error": lines[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _run_measurement(name: str, size: int, *, isolate: bool, **settings) -> dict:
    return _in_child("_measure", name=name, size=size, **settings) if isolate else _measure(name, size, **settings)


def _latency_groups(entries: list[CatalogEntry]) -> list[list[CatalogEntry]]:
    """Consecutive models whose parameters together stay under LATENCY_GROUP_PARAMS (they share a process)."""
    groups, total = [], math.inf
    for entry in entries:
        if total + entry.params_total > LATENCY_GROUP_PARAMS:
            groups.append([])
            total = 0
        groups[-1].append(entry)
        total += entry.params_total
    return groups


def _run_latencies(group: list[CatalogEntry], *, isolate: bool, **settings) -> list[dict]:
    job = dict(items=[(e.name, e.resolution) for e in group], **settings)
    result = _in_child("_latencies", **job) if isolate else _latencies(**job)
    return [result] * len(group) if "error" in result else [result[e.name] for e in group]


def _apply_measurement(entry: CatalogEntry, result: dict) -> None:
    for key, value in result.items():
        if key == "budget_note":   # the latency rounds' note, then the steps': one "N s budget spent: ..." line
            if not value:
                continue
            if entry.budget_note:
                value = f"{entry.budget_note}; {value.split(': ', 1)[1]}"
        setattr(entry, key, value)


def _reset_peak_rss() -> float:
    """Reset the kernel's peak-RSS mark (Linux: /proc/self/clear_refs) and return the current RSS in MiB."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    return _proc_status_mb("VmRSS")


def _peak_rss_mb() -> float:
    peak = _proc_status_mb("VmHWM")
    return peak if peak else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: KiB


def _proc_status_mb(field: str) -> float:
    lines = [line for line in _read("/proc/self/status").splitlines() if line.startswith(field + ":")]
    return int(lines[0].split()[1]) / 1024 if lines else 0.0


def _device_label(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.machine())
    return f"cpu ({torch.get_num_threads()} threads, {cpu})"


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _warm_up(fn, *, warmup: int, budget_s: float, sync, deadline: float = math.inf) -> None:
    start = time.perf_counter()
    for _ in range(max(warmup, 1)):
        fn()
        sync()
        now = time.perf_counter()
        if now - start > budget_s / 2 or now > deadline:
            break


def _timeit(fn, *, repeats: int, warmup: int, budget_s: float, sync, deadline: float = math.inf) -> list[float]:
    """Seconds per call of `fn` after warm-up; see `catalog` for how `budget_s` bounds the work. Past `deadline`
    (time.perf_counter(); the model's budget) it stops after the call in progress: at least one timed call."""
    _warm_up(fn, warmup=warmup, budget_s=budget_s, sync=sync, deadline=deadline)
    times, start = [], time.perf_counter()
    for _ in range(max(repeats, 1)):
        t = time.perf_counter()
        fn()
        sync()
        now = time.perf_counter()
        times.append(now - t)
        if (len(times) >= min(MIN_REPEATS, repeats) and now - start > budget_s) or now > deadline:
            break
    return times


def _budget_note(budget: float, short: list[str], skipped: list[str]) -> str | None:
    """What a model's time budget cut: measurements from fewer than MIN_REPEATS calls, and those not made."""
    if not short and not skipped:
        return None
    parts = short + ([f"{', '.join(skipped)} not measured"] if skipped else [])
    return f"{budget:g} s budget spent: {'; '.join(parts)}"


def _sync(dev: torch.device):
    return (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)


class _Threads:
    """torch.set_num_threads(n) inside the block (a measuring child keeps it; in-process calls get theirs back)."""

    def __init__(self, n: int):
        self.n, self.before = n, torch.get_num_threads()

    def __enter__(self):
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def _latencies(items: list[tuple[str, int]], *, device: str, repeats: int, warmup: int, budget_s: float,
               threads: int, model_budget_s: float | None = None) -> dict[str, dict]:
    """Batch-1 inference latency of several models (random weights), timed in turn, round after round (each
    round starts one model later); per model the fastest call, the median and the 90th percentile, in ms.
    model_budget_s: LATENCY_SHARE of it per model bounds the rounds (after the first), warm-ups included."""
    dev = torch.device(device)
    sync = _sync(dev)
    share = math.inf if model_budget_s is None else LATENCY_SHARE * model_budget_s
    budget_s = min(budget_s, share)
    begin = time.perf_counter()
    with _Threads(threads), torch.inference_mode():
        models = {}
        for name, size in items:
            torch.manual_seed(0)
            models[name] = (create_model(name, NUM_CLASSES, weights="none").to(dev).eval(),
                            torch.randn(1, 3, size, size, device=dev))
        for model, x in models.values():
            _warm_up(lambda: model(x), warmup=warmup, budget_s=budget_s, sync=sync)
        names, times = list(models), {name: [] for name in models}
        start = time.perf_counter()
        for r in range(max(repeats, MIN_REPEATS)):
            for name in names[r % len(names):] + names[:r % len(names)]:
                model, x = models[name]
                t = time.perf_counter()
                model(x)
                sync()
                times[name].append(time.perf_counter() - t)
            now = time.perf_counter()
            if (r + 1 >= MIN_REPEATS and now - start > budget_s * len(names)) or now - begin > share * len(names):
                break
    short = {name: [f"latency from {len(t)} call{'s' * (len(t) > 1)}"] if len(t) < MIN_REPEATS else []
             for name, t in times.items()}
    return {name: dict(latency_ms=min(t) * 1e3, latency_ms_median=statistics.median(t) * 1e3,
                       latency_ms_p90=_percentile(t, 90) * 1e3,
                       **({"budget_note": _budget_note(model_budget_s, short[name], [])} if short[name] else {}))
            for name, t in times.items()}


def _percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    k = (len(values) - 1) * q / 100
    lo = math.floor(k)
    return values[lo] + (values[min(lo + 1, len(values) - 1)] - values[lo]) * (k - lo)


def _measure(name: str, size: int, *, device: str, batch_size: int, repeats: int, warmup: int,
             budget_s: float, threads: int, num_classes: int = NUM_CLASSES,
             model_budget_s: float | None = None) -> dict:
    """Throughput, training steps and peak memory of one model (random weights) on `device`; CatalogEntry fields."""
    with _Threads(threads):
        return _measure_steps(name, size, device=device, batch_size=batch_size, repeats=repeats, warmup=warmup,
                              budget_s=budget_s, num_classes=num_classes, model_budget_s=model_budget_s)


def _measure_steps(name: str, size: int, *, device: str, batch_size: int, repeats: int, warmup: int,
                   budget_s: float, num_classes: int = NUM_CLASSES, model_budget_s: float | None = None) -> dict:
    """model_budget_s: (1 - LATENCY_SHARE) of it bounds everything here, building the model included; each of the
    three timings gets at most an equal share of what is left when it starts (and `budget_s`)."""
    start = time.perf_counter()
    deadline = math.inf if model_budget_s is None else start + (1 - LATENCY_SHARE) * model_budget_s
    dev = torch.device(device)
    sync = _sync(dev)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    rss_before = _reset_peak_rss()
    torch.manual_seed(0)
    model = create_model(name, num_classes, weights="none").to(dev)
    batch = torch.randn(batch_size, 3, size, size, device=dev)
    labels = torch.randint(0, num_classes, (batch_size,), device=dev)
    short, skipped = [], []

    def timed(what: str, fn, left: int) -> list[float] | None:
        """`fn` timed within the model's budget (None: the budget was spent before it started); left: the
        timings still to run, this one included."""
        now = time.perf_counter()
        if now >= deadline:
            skipped.append(what)
            return None
        times = _timeit(fn, repeats=repeats, warmup=warmup, budget_s=min(budget_s, (deadline - now) / left),
                        sync=sync, deadline=deadline)
        if len(times) < min(MIN_REPEATS, repeats):
            short.append(f"{what} from {len(times)} call{'s' * (len(times) > 1)}")
        return times

    model.eval()
    with torch.inference_mode():
        infer = timed("throughput", lambda: model(batch), 3)

    def finetune_step():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(batch), labels).backward()

    def features_step():
        model.head.zero_grad(set_to_none=True)
        with torch.no_grad():
            feats = model.features(batch)
        F.cross_entropy(model.head(feats), labels).backward()

    model.train()
    finetune = timed("finetune step", finetune_step, 2)
    model.backbone.requires_grad_(False).eval()
    features = timed("features step", features_step, 1)

    step = {k: statistics.median(v) if v else None for k, v in (("infer", infer), ("ft", finetune),
                                                                ("feat", features))}
    peak = (torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == "cuda"
            else _peak_rss_mb() - rss_before)

    def per_image(seconds):
        return None if seconds is None else batch_size / seconds

    def ms(seconds):
        return None if seconds is None else seconds * 1e3

    return dict(throughput_ips=per_image(step["infer"]),
                train_step_ms_finetune=ms(step["ft"]), train_ips_finetune=per_image(step["ft"]),
                train_step_ms_features=ms(step["feat"]), train_ips_features=per_image(step["feat"]),
                peak_mem_mb=peak, batch_size=batch_size, device=_device_label(dev), threads=torch.get_num_threads(),
                budget_note=_budget_note(model_budget_s, short, skipped) if model_budget_s is not None else None)


# --- analysis ----------------------------------------------------------------------------------------------

def _value(entry: CatalogEntry, key: str):
    value = getattr(entry, key)
    if value is None and key == "gflops":
        value = entry.gflops_meta
    return value if value is not None and math.isfinite(value) else None


def busy_note(entries: list[CatalogEntry]) -> str | None:
    """One sentence when the latencies were measured on a busy machine (then they are not compared), else None."""
    e = next((e for e in entries if e.busy), None)
    if e is None:
        return None
    return (f"The machine was busy while the models were timed: other processes kept {e.other_load_cpus:.1f} of its "
            f"{os.cpu_count()} CPUs busy (more than {BUSY_SHARE:.0%}), so the latencies are noise; they are shown "
            f"with their spread but not compared: the Pareto front is on GFLOPs. Measure again on a quiet machine.")


def default_x(entries: list[CatalogEntry]) -> str:
    """The cost axis: measured latency when available and measured on a quiet machine, else GFLOPs."""
    measured = any(e.latency_ms is not None for e in entries)
    return "latency_ms" if measured and not busy_note(entries) else "gflops"


def clearly_faster(a: CatalogEntry, b: CatalogEntry) -> bool:
    """a's latency beats b's beyond the measurement noise: a's 90th percentile is below b's fastest call."""
    return a.latency_ms_p90 is not None and b.latency_ms is not None and a.latency_ms_p90 < b.latency_ms


def pareto_front(entries: list[CatalogEntry], x: str = "latency_ms", y: str = "acc1") -> list[str]:
    """Names of the models no other model beats on both: lower `x` and higher `y`; ordered by `x`."""
    points = [(_value(e, x), _value(e, y), e.name) for e in entries]
    points = sorted((p for p in points if p[0] is not None and p[1] is not None), key=lambda p: (p[0], -p[1]))
    front, best = [], -math.inf
    for _, yv, name in points:
        if yv > best:
            front.append(name)
            best = yv
    return front


def filter_entries(entries: list[CatalogEntry], max_latency_ms: float | None = None, max_params: int | None = None,
                   max_gflops: float | None = None) -> list[CatalogEntry]:
    """Entries within every given budget (an entry missing a budgeted value is left out)."""
    limits = {k: v for k, v in (("latency_ms", max_latency_ms), ("params_total", max_params),
                                ("gflops", max_gflops)) if v is not None}
    return [e for e in entries if all(_value(e, k) is not None and _value(e, k) <= v for k, v in limits.items())]


def sort_entries(entries: list[CatalogEntry], by: str = "acc1", descending: bool | None = None) -> list[CatalogEntry]:
    """Sorted by `by` (best first by default: high accuracy/throughput, low cost); missing values last."""
    descending = by in HIGHER_IS_BETTER if descending is None else descending
    present = [e for e in entries if _value(e, by) is not None]
    missing = [e for e in entries if _value(e, by) is None]
    return sorted(present, key=lambda e: _value(e, by), reverse=descending) + missing


_X_LABELS = {"latency_ms": "latency", "gflops": "GFLOPs"}


def _fmt_x(x: str, value: float) -> str:
    return f"{value:.1f} ms" if x == "latency_ms" else f"{value:.2f} GFLOPs"


KNEE_POINTS_PER_DOUBLING = 1.0   # a front step "pays" if it buys this much acc@1 per doubling of cost


def recommend(entries: list[CatalogEntry], max_latency_ms: float | None = None, max_params: int | None = None,
              max_gflops: float | None = None, max_dominated: int = 3) -> list[str]:
    """Short data-driven sentences: the Pareto-optimal models (ImageNet acc@1 vs cost) under the budget."""
    x = default_x(entries)
    cost = _X_LABELS[x]
    budget = ", ".join(f"{k}={v:g}" for k, v in
                       (("max_latency_ms", max_latency_ms), ("max_params", max_params), ("max_gflops", max_gflops))
                       if v is not None)
    pool = filter_entries(entries, max_latency_ms, max_params, max_gflops)
    if not pool:
        cheapest = sort_entries(entries, x)[:1]
        hint = f"; the cheapest is {cheapest[0].name} ({_fmt_x(x, _value(cheapest[0], x))})" if cheapest else ""
        return [f"No model fits the budget ({budget}){hint}."]
    by_name = {e.name: e for e in pool}
    front = [by_name[n] for n in pareto_front(pool, x, "acc1")]
    if not front:
        return [f"No model has both ImageNet acc@1 and {cost} to compare."]
    label = {e.name: f"{e.name} ({e.acc1:.1f}%, {_fmt_x(x, _value(e, x))})" for e in pool if e in front}
    where = f" within {budget}" if budget else ""
    device = f" on {pool[0].device}" if x == "latency_ms" and pool[0].device else ""
    note = busy_note(entries)
    out = ([note] if note else []) + [f"Pareto-optimal{where} (ImageNet acc@1 vs {cost}{device}): "
                                      + ", ".join(label[e.name] for e in front) + "."]
    cheap, best = front[0], front[-1]
    if len(front) > 1:
        ratio = _value(best, x) / max(_value(cheap, x), 1e-12)
        out.append(f"The most accurate, {best.name}, gains {best.acc1 - cheap.acc1:+.1f} points over the cheapest, "
                   f"{cheap.name}, for {ratio:.1f}x the {cost}.")
        knee = _knee(front, x)
        if knee is not best:
            out.append(f"Past {label[knee.name]} every step along the front gains less than "
                       f"{KNEE_POINTS_PER_DOUBLING:g} point of acc@1 per doubling of {cost}.")
    dominated = [e for e in pool if e not in front and _value(e, x) is not None and e.acc1 is not None]
    for e in sort_entries(dominated, "acc1")[:max_dominated]:
        beater = next(f for f in front if _value(f, x) <= _value(e, x) and f.acc1 >= e.acc1)
        if x == "latency_ms" and not clearly_faster(beater, e):   # no conclusion from noise
            out.append(f"{beater.name} is {'as accurate as' if beater.acc1 == e.acc1 else 'more accurate than'} "
                       f"{e.name} ({beater.acc1:.1f}% vs {e.acc1:.1f}%) at a latency within the measurement noise "
                       f"of it (fastest-p90: {_spread(beater)} vs {_spread(e)}).")
            continue
        out.append(f"{e.name} is dominated by {beater.name} ({_fmt_x(x, _value(beater, x))} vs "
                   f"{_fmt_x(x, _value(e, x))}, {beater.acc1:.1f}% vs {e.acc1:.1f}%).")
    if len(dominated) > max_dominated:
        out.append(f"{len(dominated) - max_dominated} more models are dominated.")
    trained = [e for e in front if e.train_ips_finetune is not None]
    if trained:
        out.append(f"Training throughput at batch {trained[0].batch_size} (fine-tune / frozen features, images/s): "
                   + ", ".join(f"{e.name} {e.train_ips_finetune:.1f} / {e.train_ips_features:.1f}" for e in trained)
                   + ".")
    out.append("ImageNet accuracy is only a proxy for transfer to chest X-rays: train the front models on your "
               "data before choosing.")
    return out


def _spread(e: CatalogEntry) -> str:
    return f"{e.latency_ms:.1f}-{e.latency_ms_p90:.1f} ms"


def _knee(front: list[CatalogEntry], x: str) -> CatalogEntry:
    """The last front model reached by a step worth >= KNEE_POINTS_PER_DOUBLING points per doubling of cost."""
    knee = front[0]
    for cheap, better in zip(front, front[1:]):
        doublings = math.log2(max(_value(better, x), 1e-12) / max(_value(cheap, x), 1e-12))
        if doublings <= 0 or (better.acc1 - cheap.acc1) / doublings >= KNEE_POINTS_PER_DOUBLING:
            knee = better
    return knee


# --- output ------------------------------------------------------------------------------------------------

def write_catalog(entries: list[CatalogEntry], out_dir: str | Path) -> list[Path]:
    """catalog.csv, catalog.json and catalog.png (acc@1 vs cost, Pareto front marked) in `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = [asdict(e) for e in entries]
    x = default_x(entries)
    csv_path, json_path, png_path = out / "catalog.csv", out / "catalog.json", out / "catalog.png"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=[fl.name for fl in fields(CatalogEntry)])
        writer.writeheader()
        writer.writerows(rows)
    doc = {"entries": rows, "pareto_x": x, "pareto_y": "acc1", "pareto_front": pareto_front(entries, x, "acc1"),
           "recommendations": recommend(entries)}
    json_path.write_text(json.dumps(doc, indent=2))
    _plot(entries, x, png_path)
    return [csv_path, json_path, png_path]


def _plot(entries: list[CatalogEntry], x: str, path: Path) -> None:
    catalog_figure(entries, x).savefig(path, dpi=150)


def catalog_figure(entries: list[CatalogEntry], x: str):
    """ImageNet acc@1 vs cost, the Pareto front in red; the legend beside the axes and every label inside them."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    shown = [e for e in entries if _value(e, x) is not None and e.acc1 is not None]
    front = set(pareto_front(shown, x, "acc1"))
    fig = Figure(figsize=(10, 6.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for on_front, color in ((False, "tab:blue"), (True, "tab:red")):
        group = [e for e in shown if (e.name in front) == on_front]
        ax.scatter([_value(e, x) for e in group], [e.acc1 for e in group], c=color, alpha=0.6,
                   s=[15 + 4 * math.sqrt(e.params_total / 1e5) for e in group],
                   label="Pareto front" if on_front else "dominated", edgecolors="k", linewidths=0.5)
    line = sorted((e for e in shown if e.name in front), key=lambda e: _value(e, x))
    ax.plot([_value(e, x) for e in line], [e.acc1 for e in line], color="tab:red", lw=1.2)
    if shown and max(_value(e, x) for e in shown) / max(min(_value(e, x) for e in shown), 1e-9) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.06, y=0.08)
    labels = [ax.annotate(e.name, (_value(e, x), e.acc1), fontsize=7, xytext=(4, 3), textcoords="offset points")
              for e in (shown if len(shown) <= 25 else line)]      # crowded plots: label the front only
    device = next((e.device for e in shown if e.device), "")
    ax.set_xlabel(f"inference latency, batch 1, fastest call (ms)\n{device}" if x == "latency_ms"
                  else "GFLOPs per image (multiply-adds)")
    ax.set_ylabel("ImageNet-1K top-1 accuracy (%)")
    ax.set_title("ImageNet accuracy vs cost (marker area ∝ parameters)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0, fontsize=8)   # beside the points
    fig.tight_layout()
    _keep_labels_inside(fig, ax, labels)
    return fig


def _keep_labels_inside(fig, ax, labels) -> None:
    """Labels that would cross the right or top edge of the axes go to the left of / below their point."""
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    for label in labels:
        extent = label.get_window_extent(renderer)
        dx, dy = label.xyann
        if extent.x1 > box.x1:
            label.set_horizontalalignment("right")
            dx = -4
        if extent.y1 > box.y1:
            dy = -10
        label.xyann = (dx, dy)


_STATIC_COLUMNS = [
    ("model", lambda e: e.name),
    ("px", lambda e: str(e.resolution) + (f" ({e.input_size})" if e.resolution != e.input_size else "")),
    ("params M", lambda e: fmt(e.params_total / 1e6, ".2f")),
    ("new head", lambda e: f"{e.params_trainable_features:,}"),
    ("GFLOPs", lambda e: fmt(_value(e, "gflops"), ".2f")),
    ("acc@1", lambda e: fmt(e.acc1, ".1f")),
    ("acc@5", lambda e: fmt(e.acc5, ".1f")),
    ("MB", lambda e: fmt(e.file_size_mb, ".1f")),
]
_MEASURED_COLUMNS = [
    ("lat ms", lambda e: e.error[:30] if e.error else fmt(e.latency_ms, ".1f")),
    ("p50-p90", lambda e: MISSING if e.latency_ms_median is None else f"{e.latency_ms_median:.1f}-{e.latency_ms_p90:.1f}"),
    ("inf img/s", lambda e: fmt(e.throughput_ips, ".1f")),
    ("ft ms/step", lambda e: fmt(e.train_step_ms_finetune, ".0f")),
    ("ft img/s", lambda e: fmt(e.train_ips_finetune, ".1f")),
    ("feat ms/step", lambda e: fmt(e.train_step_ms_features, ".0f")),
    ("feat img/s", lambda e: fmt(e.train_ips_features, ".1f")),
    ("peak MB", lambda e: fmt(e.peak_mem_mb, ".0f")),
]


def blank_accuracy_notes(entries: list[CatalogEntry]) -> list[str]:
    """Why acc@1 is blank, per source of the models without one (e.g. timm publishes none in its package)."""
    blank = {}
    for e in entries:
        if e.acc1 is None and e.metrics_source:
            blank.setdefault(e.metrics_source, []).append(e.name)
    return [f"acc@1 blank for {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}: {source}"
            for source, names in blank.items()]


def format_table(entries: list[CatalogEntry]) -> str:
    """A plain-text table for the terminal (measured columns only when something was measured)."""
    measured = any(e.latency_ms is not None or e.error for e in entries)
    columns = _STATIC_COLUMNS + (_MEASURED_COLUMNS if measured else [])
    cells = [[head for head, _ in columns]] + [[get(e) for _, get in columns] for e in entries]
    widths = [max(len(row[i]) for row in cells) for i in range(len(columns))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
             for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    notes = []
    if measured:
        e = next((e for e in entries if e.device), entries[0])
        sizes = {e.resolution for e in entries}
        size = f"{sizes.pop()}px" if len(sizes) == 1 else "each model's input size"
        notes.append(f"measured on {e.device} at {size}; lat ms = the fastest of the batch-1 calls, p50-p90 = "
                     f"their median and 90th percentile (the spread); inference throughput and training steps at "
                     f"batch {e.batch_size}; ft = fine-tune, feat = frozen features (only the new head trains)")
        notes += [busy_note(entries)] if busy_note(entries) else []
        notes += [f"{e.name}: {e.budget_note} (--budget-s)" for e in entries if e.budget_note]
    counted = {e.resolution for e in entries if e.gflops is not None}
    at = f" at {counted.pop()}px" if len(counted) == 1 else ""
    notes += blank_accuracy_notes(entries)
    heads = sorted({e.num_classes for e in entries})
    notes.append(f"px = image size (the weights' own in brackets where different); new head = parameters of the "
                 f"new {'/'.join(map(str, heads))}-class head (all that trains with frozen features); GFLOPs = "
                 f"multiply-adds per image{at}")
    return "\n".join(lines + notes)
