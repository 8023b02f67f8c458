"""The benchmark script itself runs (tiny budget, numbers not checked): `python -m benchmarks --quick`."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from tests.conftest import ROOT


def test_quick_benchmark_writes_all_three_figures(ray_session, tmp_path):
    out = tmp_path / "bench.json"
    # Its searches join the session's Ray (RAY_ADDRESS, as `ray.init()` reads it) instead of starting their own:
    # the quick budget checks that every part runs, not what Ray's start-up costs.
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())
    assert results["machine"]["cpu"] and results["machine"]["gpu"] and results["machine"]["cpus"] >= 1
    ratios = [results["throughput"]["ratio"], results["overhead"]["ratio"], results["asha"]["epochs_ratio"]]
    assert all(isinstance(r, float) and math.isfinite(r) and r > 0 for r in ratios)
    assert math.isfinite(results["asha"]["accuracy_gap_pp"])
    assert "| figure |" in proc.stdout and results["machine"]["cpu"] in proc.stdout
