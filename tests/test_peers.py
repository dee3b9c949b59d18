"""benchmarks/peers.py without fastai (a benchmark-only extra, `transferlab[peers]`): its command line, a run of
the contenders that need no fastai, and that the package itself never imports fastai."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PEERS = ROOT / "benchmarks" / "peers.py"
PACKAGE = ROOT / "src" / "transferlab"


def test_peers_help_needs_no_fastai_and_no_torch():
    # --help is parsed before anything heavy is imported: it answers without fastai (and without torch)
    code = ("import runpy, sys; sys.modules['fastai'] = None; sys.modules['torch'] = None; "
            f"sys.argv = ['peers.py', '--help']; runpy.run_path({str(PEERS)!r}, run_name='__main__')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    for option in ("--data", "--max-images", "--image-size", "--epochs", "--test", "--contenders", "--json"):
        assert option in proc.stdout
    bad = subprocess.run([sys.executable, str(PEERS), "--contenders", "fastai,nope"], capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2 and "unknown nope" in bad.stderr


def test_fastai_is_a_benchmark_extra_never_imported_by_the_package():
    assert 'peers = ["fastai>=2.8,<2.9"]' in (ROOT / "pyproject.toml").read_text().splitlines()
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("fastai"):
                names = [node.value]   # import_module("fastai...") and the like
            offenders += [f"{path.relative_to(ROOT)}:{node.lineno}" for n in names if n.split(".")[0] == "fastai"]
    assert offenders == []
    # and at run time: the API, training and the command line leave fastai out of sys.modules
    code = ("import sys, transferlab, transferlab.training, transferlab.cli, "
            "transferlab.model_catalog.build, transferlab.model_catalog.output; "
            "transferlab.train; sys.exit('fastai' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], timeout=300).returncode == 0


@pytest.mark.slow
def test_peers_runs_the_contenders_that_need_no_fastai(xray_dir, tmp_path):
    """transferlab features and the tutorial loop on one split, an external test folder scored by both, the
    tables and the SUMMARY line (nan: no fastai row to compare with)."""
    out = tmp_path / "peers.json"
    proc = subprocess.run([sys.executable, str(PEERS), "--data", str(xray_dir), "--test", str(xray_dir / "test"),
                           "--contenders", "tl_features,tutorial", "--max-images", "16", "--image-size", "32",
                           "--epochs", "2", "--features-epochs", "3", "--baseline-workers", "0",
                           "--work-dir", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    assert "| transferlab features | 3 head |" in text and "| torchvision tutorial loop | 2 |" in text
    assert text.strip().splitlines()[-1] == ("SUMMARY finetune_time_ratio_vs_fastai=nan features_time_ratio_vs_fastai=nan "
                                             "auc_delta_vs_fastai=nan features_auc_delta_vs_fastai=nan "
                                             "finetune_rss_ratio_vs_fastai=nan")
    import json

    doc = json.loads(out.read_text())
    for name in ("tl_features", "tutorial"):
        res, scores = doc["results"][name], doc["scores"][name]
        assert len(res["history"]) == (3 if name == "tl_features" else 2)
        assert all(h["t"] > 0 and 0 <= h["val_auc"] <= 1 for h in res["history"])
        assert [h["t"] for h in res["history"]] == sorted(h["t"] for h in res["history"])
        # the same images for both: validation and test sizes, and the external folder
        assert scores["val"]["n"] == doc["split_sizes"]["val"] and scores["test"]["n"] == doc["split_sizes"]["test"]
        assert scores["external"]["n"] == len(list((xray_dir / "test").rglob("*.jpeg")))
        assert res["peak_rss_gb"] > 0 and len(res["load_before"]) == 3 and len(res["load_after"]) == 3
