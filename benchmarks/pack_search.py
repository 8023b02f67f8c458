"""Packed vs unpacked searches end to end: the same ``hps run`` twice per repetition, once with
``resources.pack`` and once without, each a fresh process with its own Ray and MLflow store.

Figures "pack_space" (a short search) and "pack_long" (one of several minutes) train the same trials both ways: a
space whose trials pack (2 hidden layers of 128 units, ReLU, no norm, Adam, batch 64; lr, weight decay and dropout
searched), random search from a fixed seed (so both runs draw the same configurations whatever order results arrive
in) and FIFO (every trial runs every epoch). Figure "pack_default" runs the config as it is (``configs/digits.yaml``:
TPE, ASHA), packing on vs off: there the two runs do not train the same trials, so its value column compares best
validation values only as an indication.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml

from benchmarks.overhead import _run, hps_command

# The space of figure "pack_space" (see the module docstring).
PACKING_SPACE = {
    "n_layers": 2,
    "units": 128,  # the widest layer that packs on a CPU
    "lr": {"type": "float", "low": 1.0e-3, "high": 3.0e-2, "log": True},
    "weight_decay": {"type": "float", "low": 1.0e-6, "high": 1.0e-3, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.3},
    "activation": "relu",
    "norm": "none",
    "optimizer": "adam",
    "batch_size": 64,
}


def packing_config(config: str, workdir: Path) -> str:
    """``config`` with :data:`PACKING_SPACE`, random search and FIFO: what figure "pack_space" runs."""
    raw = yaml.safe_load(Path(config).read_text())
    raw["space"] = PACKING_SPACE
    raw["search"] = {**raw.get("search", {}), "sampler": "random", "seed": 0}
    raw["scheduler"] = {"type": "fifo", "max_epochs": raw.get("scheduler", {}).get("max_epochs", 30)}
    path = workdir / "packing-space.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def measure(config: str, overrides: list[str], pack: int, per_server: int, reps: int, workdir: Path,
            label: str) -> dict:
    """``reps`` pairs (packed first, then unpacked) of ``hps run config`` with ``overrides``: packed with ``pack``
    trials per server and ``per_server`` × pack trials at once (the unpacked run: ``per_server`` at once). Ratio:
    unpacked wall time / packed wall time (> 1: packing is faster)."""
    runs = []
    for rep in range(reps):
        walls, bests = {}, {}
        for mode, extra in (("packed", [f"resources.pack={pack}", f"search.max_concurrent={pack * per_server}"]),
                            ("unpacked", ["resources.pack=1", f"search.max_concurrent={per_server}"])):
            name = f"bench-{label}-{mode}-{rep}"
            sets = [arg for item in [*overrides, *extra] for arg in ("--set", item)]
            cmd = [*hps_command(), "run", config, "--name", name, *sets,
                   "--tracking-uri", f"sqlite:///{workdir}/{name}.db", "--storage", str(workdir / "storage"),
                   "--overwrite"]
            walls[mode], stdout = _run(cmd, workdir / f"{name}.log")
            bests[mode] = _best_value(stdout)
        runs.append({"packed_wall_s": walls["packed"], "unpacked_wall_s": walls["unpacked"],
                     "packed_best": bests["packed"], "unpacked_best": bests["unpacked"],
                     "ratio": walls["unpacked"] / walls["packed"]})
    return {
        "overrides": overrides, "pack": pack, "servers": per_server,
        "packed_wall_s": statistics.median(r["packed_wall_s"] for r in runs),
        "unpacked_wall_s": statistics.median(r["unpacked_wall_s"] for r in runs),
        "ratio": statistics.median(r["ratio"] for r in runs),
        "runs": runs,
    }


def _best_value(stdout: str) -> float | None:
    """The best validation value in `hps run`'s last progress line (``... | best 0.0848``)."""
    for line in reversed(stdout.splitlines()):
        if "| best " in line:
            return float(line.rsplit("| best ", 1)[1].split()[0])
    return None
