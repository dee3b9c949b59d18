"""Measured speed and memory of the catalogue's models: random weights (same cost as pretrained), fp32, no autocast,
a fixed number of threads:
- latency at batch 1, like `timeit`: the fastest of many calls (the least disturbed by other work), with the
  median and 90th percentile as the spread. The models are timed in turn, round after round (interleaved, in one
  process), so that a burst of other work slows them all alike instead of one model's whole series;
- in a fresh Python process per model (so that its peak memory is its own): inference throughput, and one
  training step (forward + backward) at `batch_size` for both strategies (finetune: everything trains;
  features: frozen backbone in eval mode, only the new head trains).
"""
from __future__ import annotations

import json
import math
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ..models.heads import create_model
from .entries import NUM_CLASSES, CatalogEntry

MIN_REPEATS = 3                 # a timing phase stops after `budget_s` once it has this many samples
LATENCY_SHARE = 0.25            # share of model_budget_s for the batch-1 latency rounds; the rest: throughput + steps
LATENCY_GROUP_PARAMS = 400e6    # models timed together (interleaved) in one process: at most this many parameters

_CHILD = ("import json, sys; from transferlab.model_catalog import timing as c; "
          "job = json.load(sys.stdin); print(json.dumps(getattr(c, job.pop('function'))(**job)))")


def _in_child(function: str, **job):
    """timing.<function>(**job) in a fresh Python process (own peak memory; no multiprocessing re-import of
    __main__); {"error": ...} when it fails (out of memory, killed, ...), so that the other models carry on."""
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(dict(function=function, **job)),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        return {"error": lines[-1][:200]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_measurement(name: str, size: int, *, isolate: bool, **settings) -> dict:
    return _in_child("_measure", name=name, size=size, **settings) if isolate else _measure(name, size, **settings)


def latency_groups(entries: list[CatalogEntry]) -> list[list[CatalogEntry]]:
    """Consecutive models whose parameters together stay under LATENCY_GROUP_PARAMS (they share a process)."""
    groups, total = [], math.inf
    for entry in entries:
        if total + entry.params_total > LATENCY_GROUP_PARAMS:
            groups.append([])
            total = 0
        groups[-1].append(entry)
        total += entry.params_total
    return groups


def run_latencies(group: list[CatalogEntry], *, isolate: bool, **settings) -> list[dict]:
    job = dict(items=[(e.name, e.resolution) for e in group], **settings)
    result = _in_child("_latencies", **job) if isolate else _latencies(**job)
    return [result] * len(group) if "error" in result else [result[e.name] for e in group]


def apply_measurement(entry: CatalogEntry, result: dict) -> None:
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
