"""Figure 3: ASHA vs FIFO at the same number of trials: epochs trained in total and best validation accuracy.

Both run through :func:`search.run.tuner.run_search` in this process (Ray starts once: this figure counts epochs and
accuracy, not seconds).
"""

from __future__ import annotations

import contextlib
import statistics
from pathlib import Path

from search.config.schema import load_config
from search.run.tuner import run_search


def _search(config: str, overrides: list[str], name: str, workdir: Path) -> dict:
    cfg = load_config(config, [*overrides, f"name={name}", f"tracking.uri=sqlite:///{workdir}/asha.db"])
    with open(workdir / f"{name}.log", "w") as log, contextlib.redirect_stdout(log):
        outcome = run_search(cfg, storage=str(workdir / "storage"), overwrite=True)
    board = outcome.leaderboard
    return {"epochs": int(board["epochs"].sum()), "best_val_accuracy": float(board["best_val_accuracy"].max()),
            "trials": int(len(board))}


def measure(config: str, overrides: list[str], reps: int, workdir: Path) -> dict:
    """``reps`` pairs (FIFO and ASHA, alternating which goes first); Ray is shut down afterwards."""
    import ray

    runs = []
    try:
        for rep in range(reps):
            kinds = ["fifo", "asha"] if rep % 2 == 0 else ["asha", "fifo"]
            got = {k: _search(config, [*overrides, f"scheduler.type={k}"], f"bench-{k}-{rep}", workdir) for k in kinds}
            runs.append({
                "fifo_epochs": got["fifo"]["epochs"], "asha_epochs": got["asha"]["epochs"],
                "fifo_best_val_accuracy": got["fifo"]["best_val_accuracy"],
                "asha_best_val_accuracy": got["asha"]["best_val_accuracy"],
                "epochs_ratio": got["asha"]["epochs"] / got["fifo"]["epochs"],
                "accuracy_gap_pp": 100 * (got["fifo"]["best_val_accuracy"] - got["asha"]["best_val_accuracy"]),
            })
    finally:
        ray.shutdown()
    return {
        "overrides": overrides,
        **{key: statistics.median(r[key] for r in runs) for key in runs[0]},
        "runs": runs,
    }
