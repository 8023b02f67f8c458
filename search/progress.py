"""One terminal line per finished trial (done/running/stopped counts and the best so far), not a wall of logs."""

from __future__ import annotations

import math
import sys
import time

from ray import tune

from search.config import HpsConfig


class ProgressPrinter(tune.Callback):
    """Tune callback that prints a short line whenever a trial ends."""

    def __init__(self, cfg: HpsConfig, stream=None) -> None:
        self.metric = cfg.search.metric
        self.sign = 1.0 if cfg.search.mode == "min" else -1.0
        self.total = cfg.search.num_samples
        self.stream = stream
        self.best = math.inf
        self.counts = {"completed": 0, "stopped": 0, "failed": 0}
        self.start = time.monotonic()

    def _print(self, trials, trial, outcome: str) -> None:
        result = trial.last_result or {}
        value = result.get(f"best_{self.metric}")
        if outcome not in ("failed", "diverged") and value is not None and math.isfinite(value):
            self.best = min(self.best, self.sign * value)
        running = sum(1 for t in trials if t.status == "RUNNING" and t is not trial)
        done = sum(self.counts.values())
        shown = f"{self.metric}={value:.4g}" if value is not None else "no result"
        best = f"{self.sign * self.best:.4g}" if math.isfinite(self.best) else "-"
        print(
            f"[{done}/{self.total} done, {running} running, {time.monotonic() - self.start:5.0f}s] "
            f"trial {trial.trial_id} {outcome} at epoch {result.get('epoch', 0)}: {shown} | best {best}",
            file=self.stream or sys.stdout,
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        if (trial.last_result or {}).get("diverged"):
            self.counts["failed"] += 1
            self._print(trials, trial, "diverged")
            return
        finished = (trial.last_result or {}).get("finished", False)
        self.counts["completed" if finished else "stopped"] += 1
        patience = (trial.last_result or {}).get("stopped_no_improvement")
        stopped = "stopped (no improvement)" if patience else "stopped early"
        self._print(trials, trial, "completed" if finished else stopped)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self.counts["failed"] += 1
        self._print(trials, trial, "failed")
