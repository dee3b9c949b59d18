"""Which models to consider: the Pareto front of ImageNet acc@1 against cost, budgets, sorting, recommendations.

The cost is the measured batch-1 latency, else GFLOPs. On a busy machine the latencies are noise: they are
shown, but the Pareto front and the recommendations use GFLOPs instead, and say why.
"""
from __future__ import annotations

import math
import os

from ..machine import BUSY_SHARE
from .entries import CatalogEntry

HIGHER_IS_BETTER = {"acc1", "acc5", "throughput_ips", "train_ips_finetune", "train_ips_features"}


def value_of(entry: CatalogEntry, key: str):
    """The entry's `key` to compare or plot: None when missing or not finite; GFLOPs fall back to the published."""
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
    points = [(value_of(e, x), value_of(e, y), e.name) for e in entries]
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
    return [e for e in entries if all(value_of(e, k) is not None and value_of(e, k) <= v for k, v in limits.items())]


def sort_entries(entries: list[CatalogEntry], by: str = "acc1", descending: bool | None = None) -> list[CatalogEntry]:
    """Sorted by `by` (best first by default: high accuracy/throughput, low cost); missing values last."""
    descending = by in HIGHER_IS_BETTER if descending is None else descending
    present = [e for e in entries if value_of(e, by) is not None]
    missing = [e for e in entries if value_of(e, by) is None]
    return sorted(present, key=lambda e: value_of(e, by), reverse=descending) + missing


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
        hint = f"; the cheapest is {cheapest[0].name} ({_fmt_x(x, value_of(cheapest[0], x))})" if cheapest else ""
        return [f"No model fits the budget ({budget}){hint}."]
    by_name = {e.name: e for e in pool}
    front = [by_name[n] for n in pareto_front(pool, x, "acc1")]
    if not front:
        return [f"No model has both ImageNet acc@1 and {cost} to compare."]
    label = {e.name: f"{e.name} ({e.acc1:.1f}%, {_fmt_x(x, value_of(e, x))})" for e in pool if e in front}
    where = f" within {budget}" if budget else ""
    device = f" on {pool[0].device}" if x == "latency_ms" and pool[0].device else ""
    note = busy_note(entries)
    out = ([note] if note else []) + [f"Pareto-optimal{where} (ImageNet acc@1 vs {cost}{device}): "
                                      + ", ".join(label[e.name] for e in front) + "."]
    cheap, best = front[0], front[-1]
    if len(front) > 1:
        ratio = value_of(best, x) / max(value_of(cheap, x), 1e-12)
        out.append(f"The most accurate, {best.name}, gains {best.acc1 - cheap.acc1:+.1f} points over the cheapest, "
                   f"{cheap.name}, for {ratio:.1f}x the {cost}.")
        knee = _knee(front, x)
        if knee is not best:
            out.append(f"Past {label[knee.name]} every step along the front gains less than "
                       f"{KNEE_POINTS_PER_DOUBLING:g} point of acc@1 per doubling of {cost}.")
    dominated = [e for e in pool if e not in front and value_of(e, x) is not None and e.acc1 is not None]
    for e in sort_entries(dominated, "acc1")[:max_dominated]:
        beater = next(f for f in front if value_of(f, x) <= value_of(e, x) and f.acc1 >= e.acc1)
        if x == "latency_ms" and not clearly_faster(beater, e):   # no conclusion from noise
            out.append(f"{beater.name} is {'as accurate as' if beater.acc1 == e.acc1 else 'more accurate than'} "
                       f"{e.name} ({beater.acc1:.1f}% vs {e.acc1:.1f}%) at a latency within the measurement noise "
                       f"of it (fastest-p90: {_spread(beater)} vs {_spread(e)}).")
            continue
        out.append(f"{e.name} is dominated by {beater.name} ({_fmt_x(x, value_of(beater, x))} vs "
                   f"{_fmt_x(x, value_of(e, x))}, {beater.acc1:.1f}% vs {e.acc1:.1f}%).")
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
        doublings = math.log2(max(value_of(better, x), 1e-12) / max(value_of(cheap, x), 1e-12))
        if doublings <= 0 or (better.acc1 - cheap.acc1) / doublings >= KNEE_POINTS_PER_DOUBLING:
            knee = better
    return knee
