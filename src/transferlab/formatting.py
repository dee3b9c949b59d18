"""Numbers as people read them (report, findings, terminal tables): one mark for a value that is missing.

At the bottom of the package: it imports nothing from it, so every layer can use it."""
from __future__ import annotations

import math
import numbers

MISSING = "–"   # None, NaN, or a value that does not apply (an en dash, in every table and sentence)


def fmt(value, spec: str = ".3f") -> str:
    """`value` formatted with `spec` ("0.842"), or MISSING when it is None or not a finite number."""
    if value is None or (isinstance(value, numbers.Real) and not math.isfinite(value)):
        return MISSING
    return format(value, spec)
