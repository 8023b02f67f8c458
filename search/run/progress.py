"""One terminal line per finished trial (done/running/stopped counts and the best so far) and per retried attempt,
not a wall of logs."""

from __future__ import annotations

import math
import sys
import time

from ray import tune

from search.config.schema import HpsConfig
from search.records.storage import trial_error_text


class ProgressPrinter(tune.Callback):
    """Tune callback that prints a short line whenever a trial ends or an attempt of it fails."""

    def __init__(self, cfg: HpsConfig, stream=None) -> None:
        self.metric = cfg.search.metric
        self.sign = 1.0 if cfg.search.mode == "min" else -1.0
        self.total = cfg.search.num_samples
        self.attempts = cfg.search.max_failures + 1
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
        self._write(f"[{done}/{self.total} done, {running} running, {self._elapsed()}] "
                    f"trial {trial.trial_id} {outcome} at epoch {result.get('epoch', 0)}: {shown} | best {best}")

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
        self._say(f"trial {trial.trial_id} failed for good after {trial.num_failures} attempt(s): {last_error(trial)}")

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        """An attempt failed and Tune retries the trial (from its last checkpoint): one line, where Tune would log
        the whole traceback (turned off in :func:`search.run.ray_setup.init_ray`)."""
        epoch = (trial.last_result or {}).get("epoch", 0)
        self._say(f"trial {trial.trial_id} failed at epoch {epoch}, retrying from its last checkpoint (attempt "
                  f"{trial.num_failures + 1} of {self.attempts}): {last_error(trial)}")

    def _say(self, text: str) -> None:
        self._write(f"[{self._elapsed()}] {text}")

    def _elapsed(self) -> str:
        return f"{time.monotonic() - self.start:5.0f}s"

    def _write(self, line: str) -> None:
        print(line, file=self.stream or sys.stdout, flush=True)


def last_error(trial) -> str:
    """The last line of a trial's latest error (the exception's type and message), shortened for a terminal line;
    the whole text stays in the trial's folder (and, once it has failed for good, on its run as ``error.txt``)."""
    text = trial_error_text(trial)
    line = text.splitlines()[-1] if text else "no error text"
    return line if len(line) <= 200 else line[:199] + "…"
