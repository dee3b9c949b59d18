"""Section A (the model catalogue of the study's models) and the Data section (splits, balance, leakage, shift)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ...analysis import Run
from ...analysis.domain import IMAGE_STATISTICS
from ...analysis.shift import share_classes
from ...formatting import fmt
from .. import plots
from ..blocks import Section, Table


def catalog_section(study_dir: Path, info: dict) -> Section:
    s = Section("section-A", "A — Model catalogue")
    entries = info.get("catalog") or []
    if not entries:
        s.p("No catalogue was made for this study.")
        return s
    measured = any(e.get("latency_ms") is not None for e in entries)
    columns = ["model", "image px (weights' own)", "ImageNet acc@1 %", "GFLOPs"]
    if measured:
        columns += ["latency ms, batch 1 (fastest)", "latency median / p90 ms"]
    columns += ["params (M)", "trainable: finetune (M)", "trainable: features", "acc@5 %", "weights MB"]
    if measured:
        columns += ["inference img/s", "train step ms: finetune", "train step ms: features", "peak MB"]
    rows = []
    for e in entries:
        gflops = e.get("gflops") if e.get("gflops") is not None else e.get("gflops_meta")
        size, own = e.get("resolution") or e.get("input_size"), e.get("input_size")
        row = [e.get("name"), f"{size}" + (f" ({own})" if own != size else ""), fmt(e.get("acc1"), ".1f"),
               fmt(gflops, ".3f")]
        if measured:
            row += [e.get("error") or fmt(e.get("latency_ms"), ".1f"),
                    f"{fmt(e.get('latency_ms_median'), '.1f')} / {fmt(e.get('latency_ms_p90'), '.1f')}"]
        row += [fmt(_div(e.get("params_total"), 1e6), ".2f"), fmt(_div(e.get("params_trainable_finetune"), 1e6), ".2f"),
                fmt(e.get("params_trainable_features"), ",d"), fmt(e.get("acc5"), ".1f"), fmt(e.get("file_size_mb"), ".1f")]
        if measured:
            row += [fmt(e.get("throughput_ips"), ".1f"), fmt(e.get("train_step_ms_finetune"), ".0f"),
                    fmt(e.get("train_step_ms_features"), ".0f"), fmt(e.get("peak_mem_mb"), ".0f")]
        rows.append(row)
    device = next((e.get("device") for e in entries if e.get("device")), None)
    batch = next((e.get("batch_size") for e in entries if e.get("batch_size")), None)
    caption = ("Image px: the size the study's runs use, at which FLOPs were counted and speed measured (the "
               "weights' own size in brackets where different). GFLOPs = multiply-adds per image; ImageNet accuracy "
               "as published for the weights. ")
    caption += "".join(f"{note}. " for note in _blank_accuracy_notes(entries))
    caption += (f"Speed measured on {device}, random weights: latency = the fastest of interleaved batch-1 calls, "
                f"with their median and 90th percentile as the spread; throughput and training steps at batch "
                f"{batch}." if measured else "Speed not measured (--no-catalog).")
    s.table(Table(columns, rows, caption))
    png = study_dir / "catalog" / "catalog.png"
    if png.exists():
        s.image(png.read_bytes(), "ImageNet top-1 accuracy vs cost for the study's models (Pareto front in red).",
                width=720)
    catalog_json = study_dir / "catalog" / "catalog.json"
    if catalog_json.exists():
        s.findings(json.loads(catalog_json.read_text()).get("recommendations", []))
    return s


def _blank_accuracy_notes(entries: list[dict]) -> list[str]:
    from ...model_catalog.entries import CatalogEntry
    from ...model_catalog.output import blank_accuracy_notes

    known = set(CatalogEntry.__dataclass_fields__)
    return blank_accuracy_notes([CatalogEntry(**{k: v for k, v in e.items() if k in known}) for e in entries])


def _div(value, by: float):
    return None if value is None else value / by


def data_section(a: dict, info: dict) -> Section:
    s = Section("section-data", "Data")
    run: Run = a["runs"][0]
    d = run.config["data"]
    method = d.get("splits", {})
    leak = a["leakage"]
    shown = share_classes(run.classes, run.positive)
    rows = []
    for split, b in a["balance"].items():
        rows.append([split, *[fmt(b["counts"][c], ",d") for c in run.classes], fmt(b["n"], ",d"),
                     *[f"{b['shares'][c]:.1%}" for c in shown], fmt(leak["patients"].get(split), ",d")])
    s.table(Table(["split", *run.classes, "total", *[f"{c} share" for c in shown], "patients"], rows,
                  "Images used per split (after --max-images, if set) and distinct patients."))
    s.p(f"How the splits were made (seed {method.get('seed')}): validation — {method.get('val', '?')}; test — "
        f"{method.get('test', '?')}; official val/ folder — {method.get('official_val', '?')}.")
    for note in info.get("notes", []):
        s.p(note)
    s.images([(plots.class_balance(a["balance"], run.classes), "Class balance per split."),
              (sample_grid(run), f"Sample training images, a few per class ({', '.join(run.classes)}).")])
    s.h3("Leakage and distribution shift")
    s.findings(a["data_findings"])
    if a["image_stats"]:
        s.image(plots.shift_histograms(a["image_stats"], IMAGE_STATISTICS),
                "Image statistics per split (up to 600 images a split): mean intensity, contrast and stored size.")
    shift = a["shift"]
    rows = [[pair, *[f"D={t[k]['ks']:.3f}, p={t[k]['p_value']:.2g}" for k in IMAGE_STATISTICS]]
            for pair, t in shift.get("ks", {}).items()]
    if rows:
        s.table(Table(["splits", *IMAGE_STATISTICS.values()], rows, "Two-sample Kolmogorov-Smirnov tests (scipy)."))
    return s


def sample_grid(run: Run, per_class: int = 4) -> bytes:
    from PIL import Image

    from ...analysis.splits import splits_table
    from ...data.images import read_image

    rows = [r for r in splits_table(run) if r["split"] == "train"]
    rng = np.random.default_rng(0)
    root = Path(run.config["data"]["root"])
    items = []
    for c in run.classes:
        chosen = [r for r in rows if r["label"] == c]
        for i in sorted(rng.choice(len(chosen), min(per_class, len(chosen)), replace=False)):
            img = Image.fromarray(read_image(root / chosen[i]["file"]))
            img.thumbnail((160, 160))
            items.append((np.asarray(img), f"{c}\n{Path(chosen[i]['file']).name[:28]}"))
    return plots.image_grid(items, cols=per_class)
