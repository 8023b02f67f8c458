"""Per-epoch reports, merged when epochs are short: every epoch is recorded, the scheduler sees fewer messages.

Each report to Ray Tune is a round trip through its controller (callbacks, searcher, scheduler) while the trial
waits; for epochs of a few milliseconds that costs more than the epochs (about a fifth of a 24-trial digits
search). :class:`EpochBatcher` sits between :func:`trainables.train.train_trial` and the real report: it holds
short epochs back and sends them with the next report, under :data:`EARLIER_EPOCHS`. The driver side unpacks them
with :func:`expand_epochs`, so MLflow still gets one entry per epoch.
"""

from __future__ import annotations

import time
from typing import Callable

EARLIER_EPOCHS = "earlier_epochs"
# The key of the last report of a trial that scheduler.patience ended, and the hps.outcome of its run: why it
# stopped ("no improvement of val_loss in 3 epochs (best at epoch 4)"). Like ``diverged``, the trial ends itself.
STOPPED_NO_IMPROVEMENT = "stopped_no_improvement"


class EpochBatcher:
    """A ``report(metrics, snapshot)`` callable that forwards to ``send`` at most every ``interval_s`` seconds.

    Reports are never held back when they carry a checkpoint, end the trial (finished, diverged or out of
    patience) or fall on a decision epoch of the scheduler (ASHA must see exactly its rung epochs).
    ``interval_s=0`` sends every epoch.
    Each epoch gets ``epoch_time_s`` (its own wall time) and ``epoch_end_time`` (Unix seconds), since a merged
    report's own timing spans several epochs.
    """

    def __init__(self, send: Callable, interval_s: float, decision_epochs: frozenset[int] = frozenset(),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.send, self.interval_s, self.decision_epochs, self.clock = send, interval_s, decision_epochs, clock
        self.held: list[dict] = []
        self.last_sent = self.last_epoch_end = clock()

    def __call__(self, metrics: dict, snapshot=None) -> None:
        now = self.clock()
        # An epoch trained elsewhere (a pack server) arrives with its own timing, measured where it trained.
        metrics = {"epoch_time_s": now - self.last_epoch_end, "epoch_end_time": time.time(), **metrics}
        self.last_epoch_end = now
        must_send = (snapshot is not None or is_last_report(metrics) or metrics.get("epoch") in self.decision_epochs
                     or now - self.last_sent >= self.interval_s)
        if not must_send:
            self.held.append(metrics)
            return
        if self.held:
            metrics[EARLIER_EPOCHS], self.held = self.held, []
        self.last_sent = now
        self.send(metrics, snapshot)


def is_last_report(metrics: dict) -> bool:
    """Whether a trial's report is its last: it finished its epochs, diverged, or ran out of patience."""
    return bool(metrics.get("finished") or metrics.get("diverged") or metrics.get(STOPPED_NO_IMPROVEMENT))


def epoch_number(result: dict) -> int:
    """The epoch a report (or one of its held-back epochs) is about; Tune's iteration count if it names none."""
    return int(result.get("epoch", result.get("training_iteration", 0)))


def expand_epochs(result: dict) -> list[dict]:
    """The epochs one report stands for, oldest first: those held back, then the report itself."""
    return [*result.get(EARLIER_EPOCHS, ()), result]
