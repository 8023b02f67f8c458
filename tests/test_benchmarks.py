"""The benchmark script itself runs (tiny budget, numbers not checked): `python -m benchmarks --quick`."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_quick_benchmark_writes_all_three_figures(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["machine"]["cpu"] and results["machine"]["gpu"] and results["machine"]["cpus"] >= 1
    ratios = [results["throughput"]["ratio"], results["overhead"]["ratio"], results["asha"]["epochs_ratio"]]
    assert all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in ratios)
    assert math.isfinite(results["asha"]["accuracy_gap_pp"])
    assert "| figure |" in proc.stdout and results["machine"]["cpu"] in proc.stdout
