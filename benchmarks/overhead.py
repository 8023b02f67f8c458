"""Figure 2: wall time of ``hps run`` (FIFO) vs the plain Optuna script on the same budget, each a fresh process."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def hps_command() -> list[str]:
    """The ``hps`` console script of this environment (what a user runs), else the module."""
    script = Path(sys.executable).with_name("hps")
    return [str(script)] if script.exists() else [sys.executable, "-m", "search.cli"]


def _run(cmd: list[str], log: Path) -> tuple[float, str]:
    start = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=out, text=True)
    wall = time.perf_counter() - start
    log.write_text(log.read_text() + proc.stdout)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... exited with {proc.returncode}; see {log}")
    return wall, proc.stdout


def measure(config: str, overrides: list[str], reps: int, workdir: Path) -> dict:
    """``reps`` pairs of runs, alternating which goes first; the ratio is hps wall time / Optuna wall time."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    runs = []
    for rep in range(reps):
        name = f"bench-overhead-{rep}"
        hps = [*hps_command(), "run", config, "--name", name, *sets,
               "--tracking-uri", f"sqlite:///{workdir}/overhead-{rep}.db", "--storage", str(workdir / "storage"), "--overwrite"]
        optuna = [sys.executable, "-m", "benchmarks.optuna_baseline", config, *sets]
        jobs = [("hps", hps), ("optuna", optuna)]
        walls = {}
        for label, cmd in jobs if rep % 2 == 0 else jobs[::-1]:
            walls[label], stdout = _run(cmd, workdir / f"overhead-{rep}-{label}.log")
            if label == "optuna":
                optuna_best = json.loads(stdout.strip().splitlines()[-1])["best_value"]
        runs.append({"hps_wall_s": walls["hps"], "optuna_wall_s": walls["optuna"], "optuna_best": optuna_best,
                     "ratio": walls["hps"] / walls["optuna"]})
    return {
        "overrides": overrides,
        "hps_wall_s": statistics.median(r["hps_wall_s"] for r in runs),
        "optuna_wall_s": statistics.median(r["optuna_wall_s"] for r in runs),
        "ratio": statistics.median(r["ratio"] for r in runs),
        "runs": runs,
    }
