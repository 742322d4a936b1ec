"""Every benchmark script still starts: its imports resolve and `--help` exits 0.

The benchmarks are not run by CI (they are heavy), so a moved module would otherwise go unnoticed
until someone needs the figure (benchmarks/sweep_cost.py imported ehrfm.demo after it had moved).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted((ROOT / "benchmarks").glob("*.py"))


def test_there_are_benchmarks():
    assert len(SCRIPTS) >= 5


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_benchmark_help(script):
    # timeout: a hang guard only (imports of torch/matplotlib take 14 s at most on 2 busy cores), never a verdict
    p = subprocess.run([sys.executable, str(script), "--help"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "usage:" in p.stdout
