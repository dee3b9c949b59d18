"""What the report is made of: a Section is a list of blocks (heading, paragraph, table, findings, figures) that
html.py renders as HTML and as Markdown; numbers are formatted here the same way in every section."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..formatting import MISSING, fmt
from . import plots

NOT_APPLICABLE = MISSING


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


# --- formatting -------------------------------------------------------------------------------------------------

NBSP = "\u00a0"   # "0.842 ± 0.012" may wrap before the "±" in a narrow column, never after it


def mean_sd(values, spec: str = ".3f") -> str:
    values = [float(v) for v in values if v is not None]
    if not values:
        return MISSING
    if len(values) == 1:
        return format(values[0], spec)
    return f"{format(np.mean(values), spec)} ±{NBSP}{format(np.std(values, ddof=1), spec)}"


def fmt_mean_sd(d: dict | None, spec: str = ".3f") -> str:
    if not d or d.get("mean") is None:
        return MISSING
    return format(d["mean"], spec) + (f" ±{NBSP}{format(d['sd'], spec)}" if d.get("sd") is not None else "")


def fmt_ci(value, ci) -> str:
    """The first seed's value and its bootstrap interval: 0.842 [0.811, 0.870]."""
    return f"{fmt(value)} [{ci[0]:.3f},{NBSP}{ci[1]:.3f}]" if ci and np.isfinite(ci[0]) else MISSING


def error_gallery(s: Section, items: list, title: str, where: str, positive: str | None) -> None:
    """The most confident errors of a run on a set, each image beside its Grad-CAM overlay."""
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


