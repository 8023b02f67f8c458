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
    """Optuna's sampler class for a name of ``search.config.schema.SAMPLERS``: the class name lower-cased, without its
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
    """``OptunaSearch`` that reports per-epoch values and tells early-stopped trials as PRUNED.

    ``in_order=c`` (``search.tell_in_order``, with ``c`` the number of trials running at once) makes what the
    sampler sees independent of the order in which trials finish: trial ``i`` (in the order trials were asked) is
    asked only once trials ``0 .. i-c`` are told, and trial ``j`` is told (its per-epoch values, then its end) only
    once every earlier trial is told and trial ``j+c-1`` has been asked (or the last of ``num_samples`` has). So
    every ask sees exactly trials ``0 .. i-c`` finished and ``i-c+1 .. i-1`` running, whatever the timing; with a
    seeded sampler the same results give the same suggestions. The price: a slow trial holds back new ones (a
    suggestion of None makes Tune wait), so fewer than ``c`` trials may run at times. What the trials *report*
    must itself not depend on timing: true under FIFO; ASHA's stop decisions depend on arrival order (see
    docs/config.md, ``search.tell_in_order``).
    """

    # Class defaults: a searcher pickled before these options existed (an older search resumed) runs without them.
    in_order: int | None = None
    num_samples: int | None = None

    def __init__(self, *args: Any, in_order: int | None = None, num_samples: int | None = None,
                 prior_trials: list[optuna.trial.FrozenTrial] | None = None, **kwargs: Any) -> None:
        # Finished trials of an earlier search (search.run.warmstart): added to the study when it is created, once. A
        # resumed search restores the study with them from the saved searcher state; they are not added again.
        self._prior_trials = list(prior_trials or [])
        super().__init__(*args, **kwargs)
        self.in_order, self.num_samples = in_order, num_samples
        self._asked: list[str] = []  # trial ids in the order they were asked (in_order only)
        self._held: dict[str, list[dict]] = {}  # results of trials not told yet
        self._ended: dict[str, tuple[dict | None, bool]] = {}  # trials that ended but are not told yet
        self._n_told = 0  # trials 0 .. _n_told-1 of _asked are told

    def _setup_study(self, mode: str | list[str]) -> None:
        super()._setup_study(mode)
        for trial in self._prior_trials:
            self._ot_study.add_trial(trial)
        self._prior_trials = []

    def suggest(self, trial_id: str) -> dict | None:
        if not self.in_order or trial_id in self._ot_trials:
            return super().suggest(trial_id)
        if len(self._asked) - self.in_order >= self._n_told:
            return None  # trial i waits until trials 0 .. i-c are told
        config = super().suggest(trial_id)
        self._asked.append(trial_id)
        self._tell_ready()
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if self.in_order and trial_id in self._held:
            self._held[trial_id].append(result)
        elif self.in_order and trial_id in self._asked and trial_id not in self._completed_trials:
            self._held[trial_id] = [result]
        else:
            self._report(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if self.in_order and trial_id in self._asked and trial_id not in self._completed_trials:
            self._ended.setdefault(trial_id, (result, error))
            self._tell_ready()
        else:
            self._tell(trial_id, result, error)

    def _tell_ready(self) -> None:
        """Tell, in asking order, every ended trial whose turn has come (see the class docstring)."""
        while self._n_told < len(self._asked):
            trial_id = self._asked[self._n_told]
            all_asked = self.num_samples is not None and len(self._asked) >= self.num_samples
            if trial_id not in self._ended or (self._n_told + self.in_order > len(self._asked) and not all_asked):
                return
            for result in self._held.pop(trial_id, []):
                self._report(trial_id, result)
            self._tell(trial_id, *self._ended.pop(trial_id))
            self._n_told += 1

    def _report(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self._completed_trials or isinstance(self.metric, (list, tuple)):
            return  # Optuna keeps intermediate values for single-objective studies only
        for epoch in expand_epochs(result):  # one report may carry several short epochs
            value = epoch.get(self.metric)
            if _is_finite(value):
                self._ot_trials[trial_id].report(float(value), epoch_number(epoch))

    def _tell(self, trial_id: str, result: dict | None, error: bool) -> None:
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        state, value = trial_outcome(result, error, self.metric)
        self._ot_study.tell(self._ot_trials[trial_id], value, state=state)
        self._completed_trials.add(trial_id)
