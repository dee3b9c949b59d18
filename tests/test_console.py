"""The one rule for progress bars (console.show_bars): drawn only when asked for and both stdout and stderr are
terminals, so that a pipe, a log file or CI never gets every redraw."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

import transferlab
from transferlab import console
from transferlab.models.batchnorm import adapt_batchnorm, batchnorm_statistics


def test_every_bar_goes_through_the_rule():
    package = Path(transferlab.__file__).resolve().parent
    importing = sorted(str(path.relative_to(package)) for path in package.rglob("*.py")
                       if re.search(r"^\s*(from|import) tqdm\b", path.read_text(), re.M))
    assert importing == ["console.py"]   # the others draw bars with console.progress_bar


def test_batchnorm_adaptation_draws_bars_only_in_a_terminal(capsys, monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2))
    rng = np.random.default_rng(0)
    source, target = (rng.integers(0, 256, (12, 1, 16, 16), dtype=np.uint8) for _ in range(2))
    settings = dict(mean=(0.5,) * 3, std=(0.25,) * 3, device=torch.device("cpu"), batch_size=4, progress=True)

    def adapt():
        statistics = batchnorm_statistics(model, source, np.arange(12) % 2, 2, **settings)
        return adapt_batchnorm(model, target, statistics, **settings)

    assert adapt()[1] == 1   # under pytest, stdout and stderr are captured: not terminals
    assert capsys.readouterr().err == ""
    monkeypatch.setattr(console, "_tty", lambda stream: True)
    adapt()
    drawn = capsys.readouterr().err
    assert "BN statistics (validation)" in drawn and "BN statistics (target)" in drawn
