"""What a run prints while it works: progress bars in a terminal; outside one (a log file, a pipe, CI) no bars,
which would write every redraw into the log, and one line per epoch instead (engine.EpochLines)."""
from __future__ import annotations

import sys

from tqdm import tqdm


def show_bars(progress: bool) -> bool:
    """Progress bars only when asked for and both stdout and stderr are terminals."""
    return bool(progress) and _tty(sys.stdout) and _tty(sys.stderr)


def progress_bar(iterable=None, *, progress: bool, **options) -> tqdm:
    """A tqdm bar over `iterable` (options: tqdm's) that is drawn only where show_bars(progress) says."""
    return tqdm(iterable, disable=not show_bars(progress), **options)


def _tty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):   # replaced or closed streams
        return False
