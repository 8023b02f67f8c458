"""Figure 2: wall time of ``hps run`` (FIFO) vs the plain Optuna script on the same budget, each a fresh process."""

from __future__ import annotations

import json
import re
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


def trained_configurations(storage: Path, name: str) -> list[dict]:
    """The parameters of every trial a search trained, in start order, from Tune's record (``params.json``)."""
    trial_dirs = [p for p in (storage / name).iterdir() if (p / "params.json").exists()]
    # Tune names trial folders <trainable>_<trial id>_<index>_<params>_<time>: the index is the start order.
    trial_dirs.sort(key=lambda p: int(re.search(r"_[0-9a-f]{8}_(\d+)_", p.name).group(1)))
    return [json.loads((p / "params.json").read_text()) for p in trial_dirs]


def measure(config: str, overrides: list[str], reps: int, workdir: Path, warmups: int = 1,
            hps_only: list[str] = ()) -> dict:
    """``reps`` pairs of runs: ``hps run``, then the Optuna script training exactly the configurations that run
    trained (so the ratio measures the service, not which networks each sampler happened to try). ``warmups``
    untimed pairs first (one by default), so neither pays for a cold file cache. The ratio is hps wall time /
    Optuna wall time. ``hps_only`` overrides apply to `hps run` alone (packing: its trials at once, while the script
    keeps its ``max_concurrent`` threads)."""
    sets = [arg for item in overrides for arg in ("--set", item)]
    hps_sets = [arg for item in hps_only for arg in ("--set", item)]
    runs = []
    for pair in range(reps + warmups):  # the first ``warmups`` pairs: untimed
        name = f"bench-overhead-{pair}"
        hps = [*hps_command(), "run", config, "--name", name, *sets, *hps_sets,
               "--tracking-uri", f"sqlite:///{workdir}/overhead-{pair}.db", "--storage", str(workdir / "storage"),
               "--overwrite"]
        hps_wall, _ = _run(hps, workdir / f"overhead-{pair}-hps.log")
        replay = workdir / f"overhead-{pair}-trials.json"
        replay.write_text(json.dumps(trained_configurations(workdir / "storage", name)))
        optuna = [sys.executable, "-m", "benchmarks.optuna_baseline", config, *sets, "--replay", str(replay)]
        optuna_wall, stdout = _run(optuna, workdir / f"overhead-{pair}-optuna.log")
        if pair < warmups:
            continue
        optuna_best = json.loads(stdout.strip().splitlines()[-1])["best_value"]
        runs.append({"hps_wall_s": hps_wall, "optuna_wall_s": optuna_wall, "optuna_best": optuna_best,
                     "ratio": hps_wall / optuna_wall})
    return {
        "overrides": overrides, "hps_only": list(hps_only),
        "hps_wall_s": statistics.median(r["hps_wall_s"] for r in runs),
        "optuna_wall_s": statistics.median(r["optuna_wall_s"] for r in runs),
        "ratio": statistics.median(r["ratio"] for r in runs),
        "runs": runs,
    }
