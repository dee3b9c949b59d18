"""The catalogue written out: catalog.csv, catalog.json, catalog.png and the table `transferlab models` prints."""
from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, fields
from pathlib import Path

from ..formatting import MISSING, fmt
from .choice import busy_note, default_x, pareto_front, recommend, value_of
from .entries import CatalogEntry


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

    shown = [e for e in entries if value_of(e, x) is not None and e.acc1 is not None]
    front = set(pareto_front(shown, x, "acc1"))
    fig = Figure(figsize=(10, 6.5))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for on_front, color in ((False, "tab:blue"), (True, "tab:red")):
        group = [e for e in shown if (e.name in front) == on_front]
        ax.scatter([value_of(e, x) for e in group], [e.acc1 for e in group], c=color, alpha=0.6,
                   s=[15 + 4 * math.sqrt(e.params_total / 1e5) for e in group],
                   label="Pareto front" if on_front else "dominated", edgecolors="k", linewidths=0.5)
    line = sorted((e for e in shown if e.name in front), key=lambda e: value_of(e, x))
    ax.plot([value_of(e, x) for e in line], [e.acc1 for e in line], color="tab:red", lw=1.2)
    if shown and max(value_of(e, x) for e in shown) / max(min(value_of(e, x) for e in shown), 1e-9) > 20:
        ax.set_xscale("log")
    ax.margins(x=0.06, y=0.08)
    labels = [ax.annotate(e.name, (value_of(e, x), e.acc1), fontsize=7, xytext=(4, 3), textcoords="offset points")
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
    ("GFLOPs", lambda e: fmt(value_of(e, "gflops"), ".2f")),
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
