"""The study report: one self-contained report.html (plots embedded as base64 PNG, no external files, no
JavaScript) and report.md with the same tables and findings.

The report is a list of sections, each a list of blocks (heading, paragraph, table, findings, image); the
Jinja2 template renders them as HTML and `to_markdown` renders the same blocks as Markdown.
"""
from __future__ import annotations

import json
from pathlib import Path

from jinja2 import Environment, FileSystemLoader

from ..analysis import analyze_study
from ..errors import TransferlabError
from ..rundir import write_json
from .blocks import Section, Table
from .sections.catalog_data import catalog_section, data_section
from .sections.comparison import comparison_section
from .sections.methods import methods_section
from .sections.strategies import ALWAYS_SHOWN, STRATEGY_SECTIONS, strategy_section
from .sections.test_analysis import test_analysis_section

TEMPLATES = Path(__file__).parent / "templates"


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
JSON_KEYS = ("chosen_run", "per_run", "run_findings", "balance", "leakage", "shift", "same_splits", "data_findings",
             "comparison", "mcnemar", "comparison_findings", "gradcam_failures", "external_results", "ensemble", "tta")


def _subtitle(a: dict, info: dict) -> str:
    c = info["config"]
    run = a["runs"][0]
    return (f"{len(a['runs'])} runs: {len(c['models'])} model(s) × {len(c['strategies'])} strateg"
            f"{'y' if len(c['strategies']) == 1 else 'ies'} × seeds {', '.join(map(str, c['seeds']))}; data "
            f"{run.config['data']['root']}; " + (f"positive class {run.positive}; test metrics at each run's "
                                                  f"validation-chosen threshold unless marked." if run.positive else
                                                  f"{len(run.classes)} classes, decided by the most probable class."))


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
