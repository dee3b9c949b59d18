"""The study report: report.html (self-contained) and report.md, written from a study folder."""
from .html import write_report

__all__ = ["write_report"]
