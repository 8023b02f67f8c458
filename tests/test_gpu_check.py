"""benchmarks/gpu_check.py on a machine without a GPU: every CUDA part skips, the CPU parts pass (a smoke test)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
CUDA_SECTIONS = ("versions", "device", "throughput", "breakdown", "resume", "metrics", "determinism",
                 "throughput_compiled", "compile")


def test_gpu_check_smoke_run_without_cuda(tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "OUT": str(tmp_path),
        "GPU_CHECK_BUDGET_S": "45",
        "GPU_CHECK_QUICK": "1",
        "CUDA_VISIBLE_DEVICES": "",  # a CPU-only run even where a GPU exists
    }
    # From another directory, as the script form the GPU machine uses (never `-m`: no benchmarks package import).
    proc = subprocess.run([sys.executable, str(SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]
    for section in CUDA_SECTIONS:
        assert f"SKIP (no CUDA device) [{section}]" in proc.stdout, f"no SKIP line for {section}:\n{log[-6000:]}"
    assert "FAIL" not in proc.stdout, log[-6000:]

    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["cuda"] is False and result["failures"] == []
    cpu = result["summary"]["rows"]["cpu (1 thread)"]
    assert cpu["samples_per_s"] > 0 and cpu["ms_per_epoch"] > 0
    assert result["sections"]["throughput"]["cpu streamed (1 thread) == cpu (1 thread)"] is True
    resume = result["sections"]["resume"]
    assert resume["device"] == "cpu"
    for dropout in ("0.0", "0.2"):
        row = resume[f"dropout_{dropout}"]
        assert row["equal"] is True, row
        assert row["resume_vs_uninterrupted_max_abs_diff"] == 0.0
        assert row["val_loss_resumed"] == row["val_loss_uninterrupted"]
    assert result["sections"]["versions"]["modules_ray_mlflow_optuna_after_import"] == []
    assert result["modules_ray_mlflow_optuna_at_end"] == []
