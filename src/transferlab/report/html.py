"""The study report: one self-contained report.html (plots embedded as base64 PNG, no external files, no
JavaScript) and report.md with the same tables and findings.

The report is a list of sections, each a list of blocks (heading, paragraph, table, findings, image); the
Jinja2 template renders them as HTML and `to_markdown` renders the same blocks as Markdown.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from jinja2 import Environment, FileSystemLoader

from ..analysis import Run, analyze_study
from ..analysis.decision import verdict_text
from ..analysis.splits import SHIFT_FEATURES
from ..errors import TransferlabError
from ..formatting import MISSING, fmt
from ..rundir import write_json
from ..settings import SETTINGS
from . import plots

TEMPLATES = Path(__file__).parent / "templates"
STRATEGY_SECTIONS = {"finetune": ("B", "B — Fine-tuning the whole network"),
                     "features": ("C", "C — Frozen backbone as a fixed feature extractor"),
                     "lpft": ("LPFT", "B+C — Linear probe, then fine-tuning (LP-FT)")}
ALWAYS_SHOWN = ("finetune", "features")   # a study without them says so; lpft's section only when it has runs


@dataclass
class Table:
    columns: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Section:
    id: str
    title: str
    blocks: list[tuple[str, object]] = field(default_factory=list)

    def h3(self, text: str):
        self.blocks.append(("h3", text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, table: Table):
        self.blocks.append(("table", table))

    def findings(self, items: list[str]):
        if items:
            self.blocks.append(("findings", items))

    def details(self, summary: str, items: list[str]):
        """Findings folded away under a one-line summary (HTML <details>)."""
        if items:
            self.blocks.append(("details", (summary, items)))

    def image(self, png: bytes, caption: str, width: int | None = None):
        """A figure; `width` caps its displayed width in CSS pixels."""
        self.blocks.append(("images", [{"uri": plots.data_uri(png), "caption": caption, "width": width}]))

    def images(self, figures: list[tuple[bytes, str]]):
        """Several figures side by side (wrapping on narrow screens)."""
        self.blocks.append(("images", [{"uri": plots.data_uri(png), "caption": caption, "width": None}
                                       for png, caption in figures]))


def write_report(study_dir: str | Path, *, gradcam: bool = True) -> tuple[Path, Path]:
    """report.html and report.md in `study_dir` (a folder written by `run_study`)."""
    study_dir = Path(study_dir)
    if not (study_dir / "study.json").is_file():
        raise TransferlabError(f"{study_dir} is not a study folder (no study.json); `transferlab study` writes one")
    info = json.loads((study_dir / "study.json").read_text())
    a = analyze_study(study_dir, info["runs"], gradcam=gradcam, external=info.get("external") or [],
                      ensemble=(info.get("ensemble") or {}).get("run"))
    sections = [
        catalog_section(study_dir, info),
        data_section(a, info),
        *[strategy_section(a, s) for s in STRATEGY_SECTIONS
          if s in ALWAYS_SHOWN or any(strategy == s for _, strategy in a["groups"])],
        comparison_section(a),
        test_analysis_section(a),
        methods_section(a, info),
    ]
    title = f"transferlab study: {', '.join(info['config']['models'])} × {', '.join(info['config']['strategies'])}"
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    html = env.get_template("report.html.j2").render(title=title, sections=sections,
                                                     subtitle=_subtitle(a, info))
    html_path, md_path = study_dir / "report.html", study_dir / "report.md"
    html_path.write_text(html, encoding="utf-8")
    md_path.write_text(to_markdown(title, sections), encoding="utf-8")
    a["external_results"] = {name: e["results"] for name, e in a["external"].items()}
    write_json(study_dir / "analysis.json", {key: a[key] for key in JSON_KEYS})
    return html_path, md_path


# the measured numbers behind every finding, kept as analysis.json beside the report
JSON_KEYS = ("per_run", "run_findings", "balance", "leakage", "shift", "same_splits", "data_findings", "comparison",
             "mcnemar", "comparison_findings", "gradcam_failures", "external_results", "ensemble", "tta")


def _subtitle(a: dict, info: dict) -> str:
    c = info["config"]
    run = a["runs"][0]
    return (f"{len(a['runs'])} runs: {len(c['models'])} model(s) × {len(c['strategies'])} strateg"
            f"{'y' if len(c['strategies']) == 1 else 'ies'} × seeds {', '.join(map(str, c['seeds']))}; data "
            f"{run.config['data']['root']}; " + (f"positive class {run.positive}; test metrics at each run's "
                                                  f"validation-chosen threshold unless marked." if run.positive else
                                                  f"{len(run.classes)} classes, decided by the most probable class."))


# --- formatting -------------------------------------------------------------------------------------------------

NBSP = "\u00a0"   # "0.842 ± 0.012" may wrap before the "±" in a narrow column, never after it

def mean_sd(values, spec: str = ".3f") -> str:
    values = [float(v) for v in values if v is not None]
    if not values:
        return MISSING
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(np.mean(values), spec)} ±{NBSP}{format(np.std(values, ddof=1), spec)}"


def _ms(d: dict | None, spec: str = ".3f") -> str:
    if not d or d.get("mean") is None:
        return MISSING
    return format(d["mean"], spec) + (f" ±{NBSP}{format(d['sd'], spec)}" if d.get("sd") is not None else "")


def _ci(value, ci) -> str:
    """The first seed's value and its bootstrap interval: 0.842 [0.811, 0.870]."""
    return f"{fmt(value)} [{ci[0]:.3f},{NBSP}{ci[1]:.3f}]" if ci and np.isfinite(ci[0]) else MISSING


# --- sections ---------------------------------------------------------------------------------------------------

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
    from ..model_catalog.entries import CatalogEntry
    from ..model_catalog.output import blank_accuracy_notes

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
    rows = []
    for split, b in a["balance"].items():
        share = [f"{b['positive_share']:.1%}"] if run.positive else [f"{b['shares'][c]:.1%}" for c in run.classes]
        rows.append([split, *[fmt(b["counts"][c], ",d") for c in run.classes], fmt(b["n"], ",d"), *share,
                     fmt(leak["patients"].get(split), ",d")])
    shares = [f"{run.positive} share"] if run.positive else [f"{c} share" for c in run.classes]
    s.table(Table(["split", *run.classes, "total", *shares, "patients"], rows,
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
        s.image(plots.shift_histograms(a["image_stats"], SHIFT_FEATURES),
                "Image statistics per split (up to 600 images a split): mean intensity, contrast and stored size.")
    shift = a["shift"]
    rows = [[pair, *[f"D={t[k]['statistic']:.3f}, p={t[k]['p_value']:.2g}" for k in SHIFT_FEATURES]]
            for pair, t in shift.get("ks", {}).items()]
    if rows:
        s.table(Table(["splits", *SHIFT_FEATURES.values()], rows, "Two-sample Kolmogorov-Smirnov tests (scipy)."))
    return s


def sample_grid(run: Run, per_class: int = 4) -> bytes:
    from PIL import Image

    from ..analysis.splits import splits_table
    from ..data.images import read_image

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


TEST_COLUMNS = [("balanced_accuracy", "balanced acc."), ("recall", "sensitivity"), ("specificity", "specificity"),
                ("precision", "precision"), ("f1", "F1"), ("pr_auc", "PR-AUC")]   # after the key columns


def strategy_section(a: dict, strategy: str) -> Section:
    sid, title = STRATEGY_SECTIONS[strategy]
    s = Section(f"section-{sid}", title)
    groups = {k: v for k, v in a["groups"].items() if k[1] == strategy}
    if not groups:
        s.p(f"The {strategy} strategy is not part of this study.")
        return s
    rows = []
    for (model, _), runs in groups.items():
        rows.append([model, str(len(runs)), mean_sd([r.at("test").get("roc_auc") for r in runs]),
                     mean_sd([r.at("test").get("accuracy") for r in runs]),
                     mean_sd([r.metrics.get("threshold") for r in runs]),
                     mean_sd([r.metrics.get("best_epoch") for r in runs], ".1f") + " / " +
                     mean_sd([r.metrics.get("epochs_run") for r in runs], ".1f"),
                     mean_sd([r.metrics["val"].get("roc_auc") for r in runs]),
                     *[mean_sd([r.at("test").get(k) for r in runs]) for k, _ in TEST_COLUMNS]])
    s.table(Table(["model", "seeds", "test ROC-AUC", "test accuracy", "threshold (val)", "best epoch / run",
                   "val ROC-AUC", *[f"test {label}" for _, label in TEST_COLUMNS]], rows,
                  "Test metrics at each run's validation-chosen threshold (ROC-AUC and PR-AUC are threshold-free); "
                  "mean ± sd over seeds."))
    for (model, _), runs in groups.items():
        first = runs[0]
        s.h3(f"{model} — {strategy}")
        best = [int(r.metrics["best_epoch"]) for r in runs if r.metrics.get("best_epoch")]
        figures = [(plots.learning_curves([r.history for r in runs], f"{model} {strategy}", best),
                    "Learning curves: training and validation loss and accuracy per epoch; dotted: the best "
                    "epoch (on validation), whose weights each run keeps"
                    + ("; dashed: phase 2 (fine-tuning from the best probe head) starts." if strategy == "lpft"
                       else "."))]
        if first.multiclass and "test" in first.predictions:
            p = first.predictions["test"]
            curves = [(c, (p.true == k).astype(int), p.probs[:, k]) for k, c in enumerate(first.classes)]
            figures += [(plots.confusion(first.at("test")["confusion_matrix"], first.classes,
                                         f"test, seed {first.seed}, most probable class"),
                         f"Confusion matrix on test (seed {first.seed}; rows: true class)."),
                        (plots.roc_pr(curves, f"{model} {strategy}, seed {first.seed}"),
                         "One-vs-rest ROC and precision-recall curves on test, one per class (first seed).")]
        if first.binary:
            cm = first.at("test")["confusion_matrix"]
            curves = [(f"seed {r.seed}", r.predictions["test"].y, r.predictions["test"].prob) for r in runs
                      if "test" in r.predictions]
            figures += [(plots.confusion(cm, [first.negative, first.positive],
                                         f"test, seed {first.seed}, threshold {first.threshold:.3f}"),
                         f"Confusion matrix on test (seed {first.seed}, at its validation threshold)."),
                        (plots.roc_pr(curves, f"{model} {strategy}"), "ROC and precision-recall curves on test, one per seed.")]
        s.images(figures)
    return s


def comparison_section(a: dict) -> Section:
    s = Section("section-D", "D — Comparison of models and strategies")
    rows = [_comparison_cells(r) for r in a["comparison"]]
    seed, n_boot = (a["comparison"][0]["ci_seed"], a["comparison"][0]["n_boot"]) if a["comparison"] else (0, 0)
    s.table(Table(["model", "strategy", "seeds", "test ROC-AUC", f"seed {seed} [95% CI]", "test accuracy",
                   f"seed {seed} [95% CI]", "test F1", f"seed {seed} [95% CI]", "balanced acc.", "train s",
                   "total s", "peak RSS MB", "trainable params"], rows,
                  f"Mean ± sd over seeds; then the first seed's run (seed {seed}) alone, with its 95% CI: percentile "
                  f"bootstrap ({n_boot} resamples of the test images). Accuracy and F1 at each run's validation "
                  f"threshold. Times are wall-clock seconds per run: train = preparing the inputs (for features: the frozen "
                  f"backbone's one pass over the images, cached and reused by later seeds) + the training epochs; "
                  f"total adds decoding and evaluation. Peak RSS is the study process's peak resident memory at the "
                  f"end of the run: the runs share one process, so it only grows along the study; CUDA peak memory "
                  f"is per run, and section A measures each model's memory in isolation."))
    s.findings(a["comparison_findings"])
    tests = a["mcnemar"]
    if tests:
        s.table(Table(["A", "B", "seed", "test images", "acc. A", "acc. B", "only A right", "only B right", "p (exact)"],
                      [[t["a"], t["b"], str(t["seed"]), str(t["n"]), fmt(t["accuracy_a"]), fmt(t["accuracy_b"]),
                        str(t["only_a_correct"]), str(t["only_b_correct"]), fmt(t["p_value"], ".3g")] for t in tests],
                      "Exact McNemar tests on the same test images, runs paired by seed, predictions at each run's "
                      "validation threshold: each pair of strategies per model, and model vs model per strategy."))
    else:
        s.p("No paired McNemar test: the study needs two strategies or two models.")
    points = [{"label": f"{r['model']} {r['strategy']}", "strategy": r["strategy"], "x": r["train_seconds"]["mean"],
               "x_sd": r["train_seconds"]["sd"], "y": r["accuracy"]["mean"], "y_sd": r["accuracy"]["sd"]}
              for r in a["comparison"]]
    s.image(plots.accuracy_vs_time(points), "Test accuracy vs training time (error bars: sd over seeds).")
    if a.get("ensemble"):
        _ensemble_table(s, a["ensemble"])
    if a.get("tta"):
        _tta_table(s, a["tta"])
    return s


def _comparison_cells(r: dict) -> list[str]:
    """A row of the comparison table: a run group (mean ± sd over seeds, then the first seed's CIs) or an ensemble."""
    ci, first, memory = r.get("ci", {}), r.get("first_seed", {}), _ms(r["peak_rss_mb"], ".0f")
    if r.get("cuda_peak_mb"):
        memory += f" (CUDA {_ms(r['cuda_peak_mb'], '.0f')})"
    return [r["model"], r["strategy"], str(len(r["seeds"])),
            _ms(r["roc_auc"]), _ci(first.get("roc_auc"), ci.get("roc_auc")),
            _ms(r["accuracy"]), _ci(first.get("accuracy"), ci.get("accuracy")),
            _ms(r["f1"]), _ci(first.get("f1"), ci.get("f1")),
            _ms(r["balanced_accuracy"]), _ms(r["train_seconds"], ".1f"), _ms(r["total_seconds"], ".1f"),
            memory, fmt(r["trainable_params"], ",d")]


def _ensemble_table(s: Section, e: dict) -> None:
    s.h3(f"Ensemble of the {len(e['members'])} runs best on validation")
    cells = _comparison_cells(e)
    s.table(Table(["ensemble", "members", "test ROC-AUC [95% CI]", "test accuracy [95% CI]", "test F1 [95% CI]",
                   "balanced acc.", "train s (members)", "total s (members)"],
                  [[e["run"], ", ".join(e["members"]), cells[4], cells[6], *cells[8:12]]],
                  f"The mean of the members' probabilities ({e['run']}/), members ranked on validation AUC (then "
                  f"validation loss), its threshold chosen on validation; 95% CIs: percentile bootstrap "
                  f"({e['n_boot']} resamples of the test images). Times: the members' sums."))
    t = e.get("vs_best_run")
    if t:
        better = ("the ensemble" if t["only_a_correct"] > t["only_b_correct"] else
                  t["run"] if t["only_b_correct"] > t["only_a_correct"] else "neither")
        s.findings([f"Against the best single run on validation ({t['run']}): test accuracy "
                    f"{fmt(t['accuracy_ensemble'])} vs {fmt(t['accuracy_run'])}; {t['only_a_correct']} test images "
                    f"only the ensemble got right, "
                    f"{t['only_b_correct']} only the run (exact McNemar p={fmt(t['p_value'], '.3g')}"
                    + (f": {better} is better at p < 0.05)." if t["p_value"] < 0.05 else
                       ", no significant difference).")])


def _tta_table(s: Section, rows: list[dict]) -> None:
    views = rows[0]["views"]
    s.h3(f"Test-time augmentation ({views} views)")
    s.table(Table(["model", "strategy", "seeds", "test ROC-AUC", f"with TTA ×{views}", "test accuracy",
                   f"with TTA ×{views}", "balanced acc.", f"with TTA ×{views}", "threshold (val)", "TTA threshold (val)"],
                  [[r["model"], r["strategy"], str(r["seeds"]),
                    *[_ms(r[f"{kind}_{key}"]) for key in ("roc_auc", "accuracy", "balanced_accuracy")
                      for kind in ("plain", "tta")], _ms(r["plain_threshold"]), _ms(r["tta_threshold"])]
                   for r in rows],
                  f"The same test images ({rows[0]['n']}, the whole test split) scored plain and as the mean "
                  f"probability over {views} views (the image and {views - 1} random views of the training "
                  f"augmentation); mean ± sd over seeds. Accuracy at each decision rule: the plain one at the run's "
                  f"validation threshold, the TTA one at a threshold re-chosen on validation's {views}-view "
                  f"probabilities. Nothing is chosen on test."))


def test_analysis_section(a: dict) -> Section:
    s = Section("section-E", "E — Why the test numbers are what they are")
    analysed = [r for r in a["runs"] if a["per_run"].get(r.name)]
    if not analysed:
        s.p("The test-set analysis needs a two-class problem with a test split.")
        return s
    if analysed[0].multiclass:
        return _multiclass_analysis(s, a, analysed)
    rows = []
    for r in analysed:
        x = a["per_run"][r.name]
        g, pv, cal, fit = x["gap"], x["prevalence"], x["calibration"], x["fitting"]
        rows.append([r.name, fmt(r.threshold), fmt(g["val_accuracy"]), fmt(g["test_accuracy"]), fmt(g["accuracy_gap"], "+.3f"),
                     fmt(pv["expected_test_accuracy"]), fmt(g["val_roc_auc"]), fmt(g["test_roc_auc"]),
                     f"{fmt(pv['val_sensitivity'])} / {fmt(pv['test_sensitivity'])}",
                     f"{fmt(pv['val_specificity'])} / {fmt(pv['test_specificity'])}",
                     fmt(cal["val"]["ece"]), fmt(cal["test"]["ece"]),
                     f"{fmt(fit.get('best_epoch'), '')} / {fmt(fit.get('last_epoch'), '')}",
                     f"{fmt(fit.get('gap_best'), '+.3f')} / {fmt(fit.get('gap_last'), '+.3f')}"])
    s.table(Table(["run", "threshold (val)", "val acc.", "test acc.", "gap", "expected test acc.*", "val AUC", "test AUC",
                   "sensitivity val / test", "specificity val / test", "ECE val", "ECE test", "best / last epoch",
                   "val−train loss: best / last"], rows,
                  "Every run. *Accuracy the validation sensitivity and specificity would give at the test set's "
                  "class balance: prev × sens + (1 − prev) × spec."))
    first_runs, chosen = _key_findings(s, a)
    s.h3("Calibration and threshold")
    s.images([(plots.reliability([(f"{r.model} {r.strategy} s{r.seed}", a["per_run"][r.name]["calibration"])
                               for r in first_runs]),
            "Reliability diagrams (10 equal-width bins) on validation and test; the diagonal is perfect calibration."),
             (plots.threshold_curves([(f"{r.model} {r.strategy} s{r.seed}", a["per_run"][r.name]["threshold_curve"])
                                    for r in first_runs]),
            "Sensitivity and specificity as the threshold moves, validation dashed and test solid; black line: the "
            "threshold chosen on validation (used for every reported number); dotted: the test set's own Youden "
            "threshold, for diagnosis only.")])
    return _errors_and_external(s, a)


GRADCAM_TEXT = ("Grad-CAM (pytorch-grad-cam) for the class the model predicted, on the last convolution of the "
                "backbone; red = regions that raised that class's score. Each pair: the image as the model sees it, "
                "then the overlay. A 'flat' map means no region at that layer raised the predicted class's score: the "
                "overlay is blank and explains nothing.")


def _multiclass_analysis(s: Section, a: dict, analysed: list[Run]) -> Section:
    """Section E for three or more classes: the same questions, per class; no threshold to move."""
    classes = analysed[0].classes
    rows = []
    for r in analysed:
        x = a["per_run"][r.name]
        g, mix, cal, fit = x["gap"], x["class_mix"], x["calibration"], x["fitting"]
        rows.append([r.name, fmt(g["val_accuracy"]), fmt(g["test_accuracy"]), fmt(g["accuracy_gap"], "+.3f"),
                     fmt(mix["expected_test_accuracy"]), fmt(g["val_balanced_accuracy"]), fmt(g["test_balanced_accuracy"]),
                     fmt(g["val_roc_auc"]), fmt(g["test_roc_auc"]),
                     *[f"{fmt(v)} / {fmt(t)}" for v, t in zip(mix["val_recall"], mix["test_recall"])],
                     fmt(cal["val"]["ece"]), fmt(cal["test"]["ece"]),
                     f"{fmt(fit.get('best_epoch'), '')} / {fmt(fit.get('last_epoch'), '')}"])
    s.table(Table(["run", "val acc.", "test acc.", "gap", "expected test acc.*", "val bal. acc.", "test bal. acc.",
                   "val macro AUC", "test macro AUC", *[f"{c} recall val / test" for c in classes], "ECE val",
                   "ECE test", "best / last epoch"], rows,
                  "Every run; decisions by the most probable class (no threshold to choose or move). *Accuracy the "
                  "validation recall of each class would give at the test set's class mix: Σ share_test × recall_val. "
                  "ECE: of the predicted class's probability against how often it is right."))
    first_runs, chosen = _key_findings(s, a)
    confused = a["per_run"][chosen.name]["confused"]
    if confused:
        s.table(Table(["true", "predicted", "test images", "share of the true class"],
                      [[x["true"], x["predicted"], str(x["count"]), f"{x['share_of_true']:.1%}"] for x in confused],
                      f"Confused pairs on test, {chosen.name}."))
    s.h3("Calibration")
    s.image(plots.reliability([(f"{r.model} {r.strategy} s{r.seed}", a["per_run"][r.name]["calibration"])
                               for r in first_runs]),
            "Reliability of the predicted class's probability (10 equal-width bins) on validation and test; the "
            "diagonal is perfect calibration. The threshold plot of two-class studies does not apply: no threshold.")
    return _errors_and_external(s, a)


def _key_findings(s: Section, a: dict) -> tuple[list[Run], Run]:
    """The findings of the run chosen on validation, then every other group's first run folded away."""
    first_runs = [g[0] for g in a["groups"].values() if a["per_run"].get(g[0].name)]
    chosen = _chosen_run(a, first_runs)
    s.h3(f"Key findings: {chosen.model} {chosen.strategy} (seed {chosen.seed}), the run chosen on validation")
    s.findings(a["run_findings"][chosen.name])
    for r in first_runs:
        if r is not chosen:
            s.details(f"{r.model} — {r.strategy} (seed {r.seed}): the same findings", a["run_findings"][r.name])
    return first_runs, chosen


def _errors_and_external(s: Section, a: dict) -> Section:
    """The most confident test errors with Grad-CAM, then each external set."""
    s.findings(a["gradcam_failures"])
    if a["gallery"]:
        s.h3("Most confident test errors, with Grad-CAM")
        s.p(GRADCAM_TEXT)
        for (model, strategy), items in a["gallery"].items():
            seed = a["groups"][(model, strategy)][0].seed
            _error_gallery(s, items, f"{model} {strategy}, seed {seed}", "test", a["runs"][0].positive)
    for name, ext in a["external"].items():
        external_subsection(s, name, ext, a)
    return s


def _chosen_run(a: dict, candidates: list[Run]) -> Run:
    ranked = [r for r in a["comparison"] if r["val_roc_auc"]["mean"] is not None]
    if ranked:
        best = max(ranked, key=lambda r: r["val_roc_auc"]["mean"])
        for r in candidates:
            if (r.model, r.strategy) == (best["model"], best["strategy"]):
                return r
    return candidates[0]


def _error_gallery(s: Section, items: list, title: str, where: str, positive: str | None) -> None:
    if not items:
        s.p(f"{title}: no {where} errors.")
        return
    cells = []
    for err, (img, overlay, flat) in items:
        prob = err.get("prob_positive")
        caption = (f"true {err['label']} → {err['predicted']}\n" + (f"p({positive})={prob:.3f}" if prob is not None
                                                                    else f"p={err['confidence']:.3f}")
                   + (" · flat map" if flat else ""))
        cells += [(img, Path(err["file"]).name[:26]), (overlay, caption)]
    flat = sum(f for _, (_, _, f) in items)
    s.image(plots.image_grid(cells, cols=8, title=title),
            f"{title}: the {len(items)} most confident {where} errors at the validation-chosen decision rule"
            + (f"; {flat} of the {len(items)} Grad-CAM maps are flat (no activation for the predicted class)."
               if flat else "."))


def _headline_cell(h: dict | None) -> str:
    if not h:
        return NOT_APPLICABLE
    if h["kind"] == "estimate":
        return f"{h['accuracy']:.3f}"
    if h["kind"] == "range":
        return f"{h['low']:.2f}–{h['high']:.2f} (label {h['label_budget']})"
    return f"≤ {h['high']:.2f}, not shown to work (label {h['label_budget']})"


def external_subsection(s: Section, name: str, ext: dict, a: dict) -> None:
    """One external set: every run's result with the label-free estimates beside the truth, findings, errors."""
    results = ext["results"]
    first = next(iter(results.values()))
    classes = first["classes"]
    s.h3(f"External set: {name}")
    s.p(f"{first['n']} images from {first['data']} ({first['layout']}); every image scored, no carving"
        + ("; labelled, so each label-free estimate stands beside the truth." if first.get("has_labels", first.get("labelled") is True)
           else "; unlabelled: predictions and label-free estimates only.")
        + (f" {first['n_unreadable']} unreadable files skipped." if first["n_unreadable"] else ""))
    shown = [first["positive_class"]] if len(classes) == 2 else classes
    adapt = list(first.get("adapted", {}))
    columns = ["run", "accuracy [95% CI]", "balanced acc.", "AUC"]
    columns += [f"{c} share: true / EM [CI] / BBSE" for c in shown]
    columns += ["domain AUC (p)", "accuracy without labels", "estimators: ATC / DoC / label-shift / runs' agreement"]
    columns += [f"adapt {m}: acc. / bal. acc." for m in adapt]
    rows = []
    for run_name, r in results.items():
        sh_, truth = r.get("shift"), r.get("truth") or {}
        at = r.get("at_threshold", r)
        row = [run_name, _ci(at.get("accuracy"), r.get("ci", {}).get("accuracy")) if "accuracy" in r else MISSING,
               fmt(at.get("balanced_accuracy")), fmt(r.get("roc_auc"))]
        for c in shown:
            if sh_:
                em = sh_["prevalence"]["em"][c]
                row.append(f"{fmt(truth.get('prevalence', {}).get(c))} / {fmt(em['estimate'])} "
                           f"[{em['ci'][0]:.2f}, {em['ci'][1]:.2f}] / {fmt(sh_['prevalence']['bbse'][c]['estimate'])}")
            else:
                row.append(MISSING)
        d = (sh_ or {}).get("domain") or {}
        row.append(f"{fmt(d.get('auc'), '.2f')} ({fmt(d.get('p_value'), '.2g')})" if d.get("auc") is not None else MISSING)
        acc = (sh_ or {}).get("accuracy", {})
        row.append(_headline_cell((sh_ or {}).get("headline")))
        row.append(" / ".join(fmt(acc.get(m)) for m in ("atc", "doc", "label_shift", "gde")))
        for m in adapt:
            x = r["adapted"].get(m, {})
            xa = x.get("at_threshold", x)
            row.append(f"{fmt(xa.get('accuracy'))} / {fmt(xa.get('balanced_accuracy'))}")
        rows.append(row)
    s.table(Table(columns, rows,
                  "Metrics at each run's validation-chosen decision rule. Shares: the truth (from the labels, when "
                  "there are any) beside two estimates made without them, EM (Saerens et al. 2002) and BBSE (Lipton "
                  "et al. 2018), both assuming pure label shift. Domain AUC: a classifier on backbone features "
                  "telling these images from the validation images (0.5 = indistinguishable). Accuracy without labels: "
                  "a number only where the domain classifier cannot tell the images from validation's (ATC); else "
                  "the range the estimators could mean, or only an upper end where the model has not been shown to "
                  "work. Estimators: ATC (Garg et al. 2022), DoC, EM prior × validation recall, and the runs' "
                  "agreement with each other (GDE, Jiang et al. 2022)."))
    decision = ext.get("next_step")
    if decision:
        s.p(f"What to do ({ext['best_run']}, the run chosen on validation) — {verdict_text(decision, name)}")
    s.findings([f"{ext['best_run']} (chosen on validation): {f}" if i == 0 else f
                for i, f in enumerate(ext["findings"])])
    if ext["gallery"] or first.get("has_labels", first.get("labelled") is True):
        _error_gallery(s, ext["gallery"], f"{ext['best_run']} on {name}", name, first["positive_class"])
SETTINGS_SHOWN = [s.name for s in SETTINGS.values() if s.report]
NOT_APPLICABLE = MISSING


def _setting(strategy: str, key: str, config: dict) -> str:
    """A training setting as the methods table shows it: what the strategy really did."""
    settings = config["settings"]
    if strategy == "features" and key == "augment":
        return "no (frozen features)"
    if strategy == "features" and key == "backbone_lr_factor":
        return f"{MISSING} (backbone frozen)"
    if (key in ("probe_epochs", "probe_lr") and strategy != "lpft") \
            or (key in ("unfreeze", "augment_strength") and strategy == "features") \
            or key not in settings:   # a run older than the setting
        return NOT_APPLICABLE
    value = settings[key]
    if key == "lr" and value == "auto" and config.get("lr_find"):
        return f"auto: {config['lr_find']['suggested_lr']:.3g} (LR finder)"
    return str(value)


def methods_section(a: dict, info: dict) -> Section:
    s = Section("section-methods", "Methods")
    run: Run = a["runs"][0]
    c, d = info["config"], run.config["data"]
    s.p(f"Data: {d['root']} (fingerprint {str(d.get('fingerprint', ''))[:12]}), classes {', '.join(d['classes'])}, "
        + (f"positive class {d['positive_class']}. " if d.get("positive_class") else "decided by the most probable "
           "class. ") + f"{d.get('skipped_at_discovery', 0)} files skipped at discovery, "
        f"{d.get('bad_files_skipped', 0)} unreadable files skipped.")
    method = d.get("splits", {})
    s.p(f"Splits: patient-disjoint and stratified by class (scikit-learn StratifiedGroupKFold; patient id from the file "
        f"name), split seed {c['split_seed']} for every run, so every run saw the same train/validation/test images. "
        f"Validation: {method.get('val', '?')}. Test: {method.get('test', '?')}. "
        + (f"The decision threshold ({run.metrics.get('threshold_method', 'youden')}) and the best epoch were chosen "
           if run.positive else "Decisions: the most probable class (no threshold); the best epoch was chosen ")
        + "on validation only; the test split was only ever scored.")
    sizes = ", ".join(dict.fromkeys(f"{r.model} {r.config['model']['image_size']} px" for r in a["runs"]))
    s.p(f"Preprocessing: each image decoded once (grayscale kept as 1 channel and broadcast to the 3 input channels), "
        f"resized without cropping to the model's input size ({sizes}), normalised with the weights' own mean and std. "
        f"Fine-tuning augments training images (small rotation, translation, scale, brightness/contrast; no flips); "
        f"frozen features are computed once per image from un-augmented images with the backbone in eval mode."
        + (" LP-FT (Kumar et al. 2022) first trains the head on those frozen features for probe_epochs (every epoch "
           "run, the best on validation kept), then fine-tunes the whole network from that head at its own, lower, "
           "learning rate; its best epoch is chosen among the fine-tuning epochs, on validation."
           if any(st == "lpft" for _, st in a["groups"]) else ""))
    s.p(f"Seeds: {', '.join(map(str, c['seeds']))} (initialisation of the new head, data order, augmentation); "
        f"results are reported as mean ± sd over seeds.")
    groups = {f"{m} {st}": {**{k: _setting(st, k, runs[0].config) for k in SETTINGS_SHOWN},
                            "image_size": str(runs[0].config["model"]["image_size"])}
              for (m, st), runs in a["groups"].items()}
    unused = [k for k in SETTINGS_SHOWN if all(g[k] == NOT_APPLICABLE for g in groups.values())]
    groups = {name: {k: v for k, v in g.items() if k not in unused} for name, g in groups.items()}
    keys = list(next(iter(groups.values())))
    same = [k for k in keys if len({g[k] for g in groups.values()}) == 1]
    differ = [k for k in keys if k not in same]
    how = ("AdamW, cosine learning-rate schedule, early stopping on the monitored validation metric; class-weighted "
           "loss unless balance says otherwise")
    if differ:
        s.table(Table(["run group", *differ], [[name, *[g[k] for k in differ]] for name, g in groups.items()],
                      f"Training settings that differ between the run groups ({how})."))
    s.table(Table(["setting", "value"], [[k, next(iter(groups.values()))[k]] for k in same],
                  "Training settings shared by every run" + ("." if differ else f" ({how}).")))
    env = run.config.get("environment", {})
    s.table(Table(["software / hardware", "value"], [[k, str(v)] for k, v in env.items()] +
                  [["training device", str(run.config.get("device"))],
                   ["training time, all runs", f"{sum(r.metrics['seconds']['total'] for r in a['runs']):.0f} s "
                                               f"(sum of the runs' total seconds)"]],
                  "From the runs' config.json."))
    return s


# --- markdown -----------------------------------------------------------------------------------------------------

def to_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for section in sections:
        lines += [f"## {section.title}", ""]
        for kind, value in section.blocks:
            if kind == "h3":
                lines += [f"### {value}", ""]
            elif kind == "p":
                lines += [value, ""]
            elif kind == "findings":
                lines += [f"- {item}" for item in value] + [""]
            elif kind == "table":
                lines += _md_table(value)
            elif kind == "images":
                for f in value:
                    lines += [f"*Figure (in report.html): {f['caption']}*", ""]
    return "\n".join(lines)


def _md_table(t: Table) -> list[str]:
    def cell(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(map(cell, t.columns)) + " |", "|" + "---|" * len(t.columns)]
    out += ["| " + " | ".join(map(cell, row)) + " |" for row in t.rows]
    return out + ([""] + [f"*{t.caption}*"] if t.caption else []) + [""]
