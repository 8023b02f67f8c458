"""Ray Tune's OptunaSearch, telling Optuna the truth about how each trial ended.

Stock ``OptunaSearch`` tells a trial that ASHA stopped early as COMPLETE with its truncated last value, so TPE
learns from scores of half-trained networks as if they were final; a NaN makes its ``study.tell`` raise and the
Optuna trial is never finished. Here:

- a trial that ended before ``max_epochs`` without an error is PRUNED (Optuna keeps its intermediate values,
  reported per epoch);
- a trial that errored, diverged, reported nothing, or whose value is not finite is FAIL;
- a trial that ran its full budget is COMPLETE with its best validation value (the epoch whose weights are kept).

"Ran its full budget" is read from the ``finished`` key hps's trainable puts in every result (``True`` only on
the last epoch; a trial stopped by ``scheduler.patience`` ends with it ``False``). A trainable that never sets it
(any plain Tune function, e.g. Ray's own searcher tests) cannot say whether a scheduler cut it short, so a trial
of it that completed without error is told COMPLETE, as stock ``OptunaSearch`` does.

Multi-objective search (``metric`` and ``mode`` lists) is supported as in stock ``OptunaSearch``: Optuna's
``trial.report`` is single-objective, so no intermediate values are reported, and the trial is told the list of
its last result's values (not per-metric bests, which may come from different epochs).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from trainables.reporting import epoch_number, expand_epochs

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one "study created" line per search says nothing


def sampler_class(name: str) -> type[optuna.samplers.BaseSampler]:
    """Optuna's sampler class for a name of ``search.config.SAMPLERS``: the class name lower-cased, without its
    ``Sampler`` suffix (``cmaes``: ``CmaEsSampler``)."""
    classes = {c.lower().removesuffix("sampler"): c for c in optuna.samplers.__all__ if c.endswith("Sampler")}
    if name not in classes:
        raise ValueError(f"Optuna has no sampler {name!r}")
    return getattr(optuna.samplers, classes[name])


def make_sampler(name: str, seed: int | None) -> optuna.samplers.BaseSampler:
    """Optuna's sampler called ``name``, seeded for reproducible searches."""
    return sampler_class(name)(seed=seed)


def trial_outcome(result: dict | None, error: bool, metric: str | list[str]
                  ) -> tuple[TrialState, float | list[float] | None]:
    """How a finished Tune trial should be told to Optuna: state and value (a list of values for a list of
    metrics). See the module docstring for the rules."""
    if error or not result or result.get("diverged"):
        return TrialState.FAIL, None
    if isinstance(metric, (list, tuple)):
        values = [result.get(m) for m in metric]
    else:
        values = [result.get(f"best_{metric}", result.get(metric))]
    if any(not _is_finite(v) for v in values):
        return TrialState.FAIL, None
    if not result.get("finished", True):  # absent: not hps's trainable, which always says (see module docstring)
        return TrialState.PRUNED, None
    floats = [float(v) for v in values]
    return TrialState.COMPLETE, floats if isinstance(metric, (list, tuple)) else floats[0]


def _is_finite(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


class PruningAwareOptunaSearch(OptunaSearch):
    """``OptunaSearch`` that reports per-epoch values and tells early-stopped trials as PRUNED."""

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._completed_trials or isinstance(self.metric, (list, tuple)):
            return  # Optuna keeps intermediate values for single-objective studies only
        for epoch in expand_epochs(result):  # one report may carry several short epochs
            value = epoch.get(self.metric)
            if _is_finite(value):
                self._ot_trials[trial_id].report(float(value), epoch_number(epoch))

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        state, value = trial_outcome(result, error, self.metric)
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)
