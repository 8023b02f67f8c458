"""benchmarks/gpu_packed.py on a machine without a GPU: the CUDA parts skip, a CPU smoke runs and exits 0."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_packed.py"
CASE_KEYS = {"dataset", "way", "norm", "members", "amp", "device", "epochs_per_trial", "member_epochs", "seconds",
             "member_epochs_per_s", "trials_per_hour", "gpu_util_mean_pct", "gpu_memory_peak_mib"}


def smoke_run(tmp_path: Path, processes: str) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OUT": str(tmp_path), "PACKED_QUICK": "1",
           "PACKED_BUDGET_S": "120", "PACKED_PROCESSES": processes,
           "CUDA_VISIBLE_DEVICES": ""}  # a CPU-only run even where a GPU exists
    # From another directory, in the script form the GPU machine uses.
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    assert "FAIL" not in proc.stdout, log[-6000:]
    assert (tmp_path / "gpu_packed.md").read_text().startswith("Packed trials, cpu (smoke)")
    return json.loads((tmp_path / "gpu_packed.json").read_text()), proc.stdout


def check_common(result: dict, stdout: str) -> None:
    assert {"cuda", "device", "members", "cases", "ratios", "skipped", "failures", "elapsed_s"} <= result.keys()
    assert result["cuda"] is False and result["device"] == "cpu" and result["failures"] == []
    assert result["members"] == [2, 4]
    assert result["heavy_modules_loaded"] == []
    for marker in ("SKIP (no CUDA device) [gpu]", "SKIP (no CUDA device) [packed amp] digits norm=batch",
                   "SKIP (no CUDA device) [packed amp] digits norm=none", "SKIP (smoke) [synthetic]"):
        assert marker in stdout and any(s.startswith(marker) for s in result["skipped"]), marker
    for case in result["cases"]:
        assert CASE_KEYS <= case.keys(), case
        assert case["member_epochs"] > 0 and case["member_epochs_per_s"] > 0
        assert case["gpu_util_mean_pct"] == "n/a" and case["amp"] is False
    packed = [(c["norm"], c["members"]) for c in result["cases"] if c["way"] == "packed"]
    assert packed == [("batch", 2), ("batch", 4), ("none", 2), ("none", 4)]
    assert [(r["norm"], r["members"]) for r in result["ratios"]] == packed
    assert all(r["vs_sequential"] > 0 for r in result["ratios"])


@pytest.mark.slow  # spawns two processes that import torch: tens of seconds on a loaded 2-core machine
def test_cpu_smoke_with_concurrent_processes(tmp_path):
    result, stdout = smoke_run(tmp_path, "2")
    check_common(result, stdout)
    assert "SKIP (no CUDA device) [concurrent] digits norm=batch" in stdout
    concurrent = [c for c in result["cases"] if c["way"] == "concurrent"]
    assert [(c["norm"], c["members"], c["gpu_share"], c["errors"]) for c in concurrent] == [
        ("batch", 2, 0.5, []), ("none", 2, 0.5, [])]
    assert all(r["vs_concurrent"] > 0 for r in result["ratios"])


def test_nvidia_smi_lines_are_parsed():
    sys.path.insert(0, str(ROOT))
    from benchmarks.gpu_packed import GpuSampler

    sampler = GpuSampler()
    sampler.proc = SimpleNamespace(stdout=iter(["35, 1024\n", "[N/A], 1000\n", "\n", "40, 2048\n"]))
    sampler.source = "nvidia-smi"
    sampler._read_smi()
    assert sampler.summary() == {"gpu_util_source": "nvidia-smi", "gpu_util_samples": 2,
                                 "gpu_util_mean_pct": 37.5, "gpu_memory_peak_mib": 2048}
    assert GpuSampler().summary()["gpu_util_mean_pct"] == "n/a"
