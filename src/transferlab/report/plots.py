"""One matplotlib helper per kind of plot in the report; each returns PNG bytes (Agg canvas, no pyplot state)."""
from __future__ import annotations

import base64
import io
import math

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn import metrics as skm

DPI = 90
SPLIT_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green"}


def figure(width: float, height: float, rows: int = 1, cols: int = 1):
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    return fig, axes


def to_png(fig: Figure) -> bytes:
    """The figure as a PNG with a 256-colour palette (a third of the size of RGBA, no visible difference)."""
    from PIL import Image

    fig.tight_layout()
    fig.set_dpi(DPI)
    fig.canvas.draw()
    rgb = Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3])
    buf = io.BytesIO()
    rgb.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _grid(n: int, cols: int) -> tuple[int, int]:
    cols = max(1, min(cols, n))
    return math.ceil(n / cols), cols


def _hide_unused(axes, n: int) -> None:
    for ax in axes.flat[n:]:
        ax.set_visible(False)


def learning_curves(histories: list[list[dict]], title: str, best_epochs: list[int] = ()) -> bytes:
    """Train and validation loss and accuracy per epoch: mean over seeds, band = ±1 sd (where >= 2 seeds);
    grey dotted lines at each seed's best (selected) epoch; a dashed line where a run's phase changes (lpft)."""
    fig, axes = figure(7.5, 3.0, 1, 2)
    epochs = max((len(h) for h in histories), default=0)
    phase_starts = sorted({e + 1 for h in histories for e in range(1, len(h))
                           if h[e].get("phase") and h[e].get("phase") != h[e - 1].get("phase")})
    for ax, (metric, label) in zip(axes[0], (("loss", "loss (class-weighted CE)"), ("acc", "accuracy"))):
        for split, color in (("train", SPLIT_COLORS["train"]), ("val", SPLIT_COLORS["val"])):
            key = f"{split}_{metric}"
            x, mean, sd = [], [], []
            for e in range(epochs):
                values = [h[e][key] for h in histories if len(h) > e and isinstance(h[e].get(key), float)]
                if values:
                    x.append(e + 1)
                    mean.append(np.mean(values))
                    sd.append(np.std(values, ddof=1) if len(values) > 1 else 0.0)
            mean, sd = np.array(mean), np.array(sd)
            ax.plot(x, mean, marker="o", ms=3, color=color, label=split)
            if len(histories) > 1:
                ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.2)
        for i, best in enumerate(sorted(set(best_epochs))):
            ax.axvline(best, color="grey", ls=":", lw=1, label="best epoch" if i == 0 else None)
        for i, start in enumerate(phase_starts):
            ax.axvline(start - 0.5, color="black", ls="--", lw=0.8, label="phase 2 starts" if i == 0 else None)
        ax.set_xlabel("epoch")
        ax.set_xlim(0.5, max(epochs, 1) + 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(nbins=min(max(epochs, 1), 10), integer=True, min_n_ticks=1))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{title} — mean over {len(histories)} seed(s)" + (", band ±1 sd" if len(histories) > 1 else ""),
                 fontsize=10)
    return to_png(fig)


def confusion(cm, classes: list[str], title: str) -> bytes:
    cm = np.asarray(cm)
    fig, axes = figure(3.4, 3.0)
    ax = axes[0, 0]
    ax.imshow(cm, cmap="Blues")
    for (i, j), v in np.ndenumerate(cm):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes, fontsize=8)
    ax.set_yticks(range(len(classes)), classes, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return to_png(fig)


def roc_pr(curves: list[tuple[str, np.ndarray, np.ndarray]], title: str) -> bytes:
    """ROC and precision-recall curves, one line per (label, y_true, positive probability)."""
    fig, axes = figure(7, 3.2, 1, 2)
    roc, pr = axes[0]
    for label, y, prob in curves:
        fpr, tpr, _ = skm.roc_curve(y, prob)
        roc.plot(fpr, tpr, lw=1.2, label=f"{label} AUC {skm.roc_auc_score(y, prob):.3f}")
        precision, recall, _ = skm.precision_recall_curve(y, prob)
        pr.plot(recall, precision, lw=1.2, label=f"{label} AP {skm.average_precision_score(y, prob):.3f}")
    roc.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc.set(xlabel="1 - specificity", ylabel="sensitivity", title="ROC (test)")
    if curves:
        pr.axhline(np.mean(curves[0][1]), color="k", ls=":", lw=0.8)
    pr.set(xlabel="recall (sensitivity)", ylabel="precision", title="precision-recall (test)")
    for ax in (roc, pr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right" if ax is roc else "lower left")
        ax.title.set_fontsize(9)
    fig.suptitle(title, fontsize=10)
    return to_png(fig)


def accuracy_vs_time(points: list[dict]) -> bytes:
    """points: label, x (seconds), x_sd, y (accuracy), y_sd, strategy."""
    fig, axes = figure(6.5, 4)
    ax = axes[0, 0]
    markers = {"finetune": "o", "features": "s", "lpft": "^"}
    for p in points:
        x_sd = p.get("x_sd") or 0
        ax.errorbar(p["x"], p["y"], xerr=[[min(x_sd, p["x"])], [x_sd]], yerr=p.get("y_sd") or 0,   # no time < 0
                    fmt=markers.get(p["strategy"], "o"), capsize=3, label=p["label"])
        ax.annotate(p["label"], (p["x"], p["y"]), fontsize=7, xytext=(5, 4), textcoords="offset points")
    xs = [p["x"] for p in points if p["x"] > 0]
    if xs and max(xs) / min(xs) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("training time per run (s: feature extraction + epochs; mean ± sd over seeds)")
    ax.set_ylabel("test accuracy at the validation threshold")
    shown = {"finetune": "o fine-tune", "features": "□ frozen features", "lpft": "△ LP-FT"}
    legend = ", ".join(text for s, text in shown.items() if any(p["strategy"] == s for p in points))
    ax.set_title(f"accuracy vs training time ({legend})", fontsize=9)
    ax.grid(alpha=0.3)
    return to_png(fig)


def reliability(panels: list[tuple[str, dict]]) -> bytes:
    """Reliability diagrams: panels of (title, {"val": ece-dict, "test": ece-dict})."""
    rows, cols = _grid(len(panels), 3)
    fig, axes = figure(3.3 * cols, 3.1 * rows, rows, cols)
    for ax, (title, cal) in zip(axes.flat, panels):
        ax.plot([0, 1], [0, 1], "k:", lw=0.8)
        for split in ("val", "test"):
            c = cal[split]
            ax.plot(c["bin_mean_predicted"], c["bin_fraction_positive"], marker="o", ms=3,
                    color=SPLIT_COLORS[split], label=f"{split} ECE {c['ece']:.3f}")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean predicted probability", ylabel="fraction positive")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    _hide_unused(axes, len(panels))
    return to_png(fig)


def threshold_curves(panels: list[tuple[str, dict]]) -> bytes:
    """Sensitivity and specificity vs threshold on val (dashed) and test (solid), the val threshold marked."""
    rows, cols = _grid(len(panels), 3)
    fig, axes = figure(3.3 * cols, 3.1 * rows, rows, cols)
    for ax, (title, c) in zip(axes.flat, panels):
        t = c["thresholds"]
        for split, ls in (("val", "--"), ("test", "-")):
            ax.plot(t, c[split]["sensitivity"], ls, color="tab:red", lw=1.2, label=f"sensitivity {split}")
            ax.plot(t, c[split]["specificity"], ls, color="tab:blue", lw=1.2, label=f"specificity {split}")
        ax.axvline(c["val_threshold"], color="k", lw=1, label=f"val threshold {c['val_threshold']:.2f}")
        if "test_youden_threshold" in c:
            ax.axvline(c["test_youden_threshold"], color="grey", ls=":", lw=1,
                       label=f"test Youden {c['test_youden_threshold']:.2f}")
        ax.set(xlim=(0, 1), ylim=(-0.02, 1.02), xlabel="threshold")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="center left")   # sensitivity is high and specificity low there
    _hide_unused(axes, len(panels))
    return to_png(fig)


def class_balance(balance: dict, classes: list[str]) -> bytes:
    """Images per split, stacked by class, with the positive share written on each bar."""
    fig, axes = figure(5, 3)
    ax = axes[0, 0]
    splits = list(balance)
    bottom = np.zeros(len(splits))
    for c in classes:
        values = np.array([balance[s]["counts"][c] for s in splits])
        ax.bar(splits, values, bottom=bottom, label=c)
        bottom += values
    for i, s in enumerate(splits):
        share = balance[s]["positive_share"]
        ax.text(i, bottom[i], f"{share:.1%} pos." if share is not None else f"n={balance[s]['n']}", ha="center",
                va="bottom", fontsize=8)
    ax.set_ylabel("images")
    ax.set_ylim(0, bottom.max() * 1.15)
    ax.legend(fontsize=8)
    ax.set_title("class balance per split", fontsize=9)
    return to_png(fig)


def image_grid(items: list[tuple[np.ndarray, str]], cols: int, title: str = "", cell: float = 1.55) -> bytes:
    """Images (uint8 gray or RGB) with a caption under each."""
    rows, cols = _grid(len(items), cols)
    fig, axes = figure(cell * cols, (cell + 0.35) * rows + (0.3 if title else 0), rows, cols)
    for ax, (img, caption) in zip(axes.flat, items):
        ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
        ax.set_title(caption, fontsize=7)
        ax.axis("off")
    _hide_unused(axes, len(items))
    if title:
        fig.suptitle(title, fontsize=9)
    return to_png(fig)


def shift_histograms(stats: dict, features: dict[str, str]) -> bytes:
    """Distribution of each image statistic per split (density histograms)."""
    rows, cols = _grid(len(features), 4)
    fig, axes = figure(3 * cols, 2.7 * rows, rows, cols)
    for ax, (key, label) in zip(axes.flat, features.items()):
        values = np.concatenate([v[key] for v in stats.values()])
        bins = np.histogram_bin_edges(values, bins=30)
        for split, v in stats.items():
            ax.hist(v[key], bins=bins, density=True, histtype="step", lw=1.4, color=SPLIT_COLORS.get(split),
                    label=f"{split} (n={len(v[key])})")
        ax.set_xlabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6)
    _hide_unused(axes, len(features))
    return to_png(fig)
