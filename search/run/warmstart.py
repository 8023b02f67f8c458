"""Warm start: a new search that begins where an earlier one (recorded in the same MLflow store) left off.

The earlier search's trials are read back from MLflow (:mod:`search.records.leaderboard`). Those whose parameters still
fit the current space (every sampled parameter exists in it and lies within its distribution, with ``if:`` and
``per_layer`` structure followed as the define-by-run function would; constants equal) are

- told to the new study as finished Optuna trials (COMPLETE with their values, PRUNED with their per-epoch values
  when they were stopped early, FAIL when they failed), so the sampler learns from all of them, and
- ranked as in the earlier leaderboard: the best ``top_k`` of them are asked first (Tune's ``points_to_evaluate``).

Trials that do not fit are dropped and counted. The parent run of the new search records where it started from.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import optuna
from mlflow.entities import Run, RunTag
from mlflow.tracking import MlflowClient
from optuna.trial import TrialState

from search.config.pareto import objective_value
from search.config.schema import Distribution, HpsConfig, sample_order
from search.config.space import condition_holds, distribution_for
from search.records.leaderboard import find_search_run, leaderboard, parse_number, trial_runs
from trainables.params import DEFAULT_N_LAYERS

WARM_START_TAG = "hps.warm_start"
ENDED = ("completed", "stopped_early", "stopped_no_improvement", "failed")


@dataclass
class WarmStart:
    """What a search takes from an earlier one: configurations to try first and past trials to tell the sampler."""

    name: str
    parent_run_id: str
    points: list[dict] = field(default_factory=list)  # sampled parameters of the top-k fitting trials, best first
    trials: list[optuna.trial.FrozenTrial] = field(default_factory=list)
    dropped: int = 0  # ended earlier trials that do not fit the current space (or lack a value of its objectives)

    @property
    def kept(self) -> int:
        return len(self.trials)

    def describe(self) -> str:
        """The one line `hps run` prints."""
        dropped = f", {self.dropped} dropped (outside the current space)" if self.dropped else ", none dropped"
        return (f"warm start from search {self.name}: {self.kept} earlier trials told to the sampler{dropped}; "
                f"its top {len(self.points)} tried first")

    def tags(self) -> dict[str, str]:
        """Tags of the new search's parent run."""
        return {WARM_START_TAG: f"{self.name} (parent run {self.parent_run_id})",
                "hps.warm_start_parent_run_id": self.parent_run_id, "hps.warm_start_kept": str(self.kept),
                "hps.warm_start_dropped": str(self.dropped), "hps.warm_start_first": str(len(self.points))}


def load_warm_start(client: MlflowClient, cfg: HpsConfig, name: str | None = None) -> WarmStart:
    """The warm start of ``cfg`` from search ``name`` (default ``search.warm_start``); raises SearchNotFound when
    no such search is recorded at this tracking URI."""
    name = name or cfg.search.warm_start
    parent = find_search_run(client, name)
    runs = {r.info.run_id: r for r in trial_runs(client, parent)}
    board = leaderboard(client, parent)
    warm = WarmStart(name, parent.info.run_id)
    ranked = [runs[run_id] for run_id in board["run_id"]] if not board.empty else []
    for run in sorted(ranked, key=lambda r: r.info.start_time or 0):
        if run.data.tags.get("hps.outcome") not in ENDED:
            continue  # interrupted or still running: nothing to learn from
        trial = past_trial(client, run, cfg)
        if trial is None:
            warm.dropped += 1
        else:
            warm.trials.append(trial)
    warm.points = top_points(ranked, cfg, cfg.search.warm_start_top_k)
    return warm


def record(client: MlflowClient, parent_run_id: str, warm: WarmStart | None) -> None:
    """Tag the new search's parent run with where it started from."""
    if warm is not None:
        client.log_batch(parent_run_id, tags=[RunTag(k, v) for k, v in warm.tags().items()])


def top_points(ranked: list[Run], cfg: HpsConfig, k: int) -> list[dict]:
    """The sampled parameters of the ``k`` best (``ranked`` best first) trials that fit and did not fail."""
    points = []
    for run in ranked:
        if len(points) >= k:
            break
        if run.data.tags.get("hps.outcome") == "failed":
            continue
        params = fitting_params(_params(run), cfg.space)
        if params is not None and params not in points:
            points.append(params)
    return points


def past_trial(client: MlflowClient, run: Run, cfg: HpsConfig) -> optuna.trial.FrozenTrial | None:
    """An earlier trial as an Optuna trial of the current space and objectives, or None if it does not fit."""
    params = fitting_params(_params(run), cfg.space)
    if params is None:
        return None
    distributions = {p: distribution_for(cfg.space, p) for p in params}
    outcome = run.data.tags.get("hps.outcome")
    if outcome == "failed":
        return optuna.trial.create_trial(params=params, distributions=distributions, state=TrialState.FAIL)
    values = [objective_value(run.data.metrics, metric) for metric, _ in cfg.search.objective_pairs]
    if any(v is None for v in values):
        return None
    if outcome in ("stopped_early", "stopped_no_improvement") and not cfg.search.objectives:
        # As the searcher tells a stopped trial: PRUNED, with its per-epoch values (one history read per trial).
        history = client.get_metric_history(run.info.run_id, cfg.search.metric)
        steps = {m.step: m.value for m in history if math.isfinite(m.value)}
        return optuna.trial.create_trial(params=params, distributions=distributions, state=TrialState.PRUNED,
                                         intermediate_values=steps)
    if outcome in ("stopped_early", "stopped_no_improvement"):
        return optuna.trial.create_trial(params=params, distributions=distributions, state=TrialState.PRUNED)
    if len(values) == 1:
        return optuna.trial.create_trial(params=params, distributions=distributions, value=values[0])
    return optuna.trial.create_trial(params=params, distributions=distributions, values=values)


def _params(run: Run) -> dict[str, Any]:
    return {k: parse_number(v) for k, v in run.data.params.items()}


def fitting_params(params: dict[str, Any], space: dict[str, Any]) -> dict[str, Any] | None:
    """The sampled parameters of a recorded configuration if it is one the current ``space`` can produce: walking
    the space as :class:`search.config.space.SpaceSampler` does, every distribution it would sample is present and inside
    its distribution, every constant is equal, and nothing is left over. None otherwise."""
    values: dict[str, Any] = {}
    sampled: dict[str, Any] = {}
    for name, spec in space.items():
        if not isinstance(spec, Distribution):
            if name in params and not _same(params[name], spec):
                return None
            values[name] = spec
    for name in sample_order(space):
        spec = space[name]
        if not condition_holds(spec.if_, values):
            continue
        layers = int(values.get("n_layers", DEFAULT_N_LAYERS))
        names = [f"{name}_{i}" for i in range(layers)] if spec.per_layer else [name]
        for key in names:
            value = _within(params.get(key), distribution_for(space, key))
            if value is None:
                return None
            values[key] = sampled[key] = value
    if set(params) - set(values):  # a parameter the current space would not produce (removed, or conditional)
        return None
    return sampled


def _within(value: Any, dist: optuna.distributions.BaseDistribution | None) -> Any:
    """``value`` as the distribution holds it, or None when it lies outside (or is missing)."""
    if value is None or dist is None:
        return None
    if isinstance(dist, optuna.distributions.CategoricalDistribution):
        return next((c for c in dist.choices if _same(value, c)), None)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(dist, optuna.distributions.IntDistribution):
        if value != int(value) or (int(value) - dist.low) % dist.step:
            return None
        value = int(value)
    tolerance = 1e-12 * max(1.0, abs(dist.high))
    if not dist.low - tolerance <= value <= dist.high + tolerance:
        return None
    if isinstance(dist, optuna.distributions.FloatDistribution) and dist.step:
        steps = (value - dist.low) / dist.step
        if abs(steps - round(steps)) > 1e-6:
            return None
    return min(max(value, dist.low), dist.high)


def _same(recorded: Any, value: Any) -> bool:
    """A recorded (string-parsed) parameter equals a config value: numbers by value, the rest by their text."""
    numbers = (int, float)
    if isinstance(recorded, numbers) and isinstance(value, numbers) and not isinstance(value, bool):
        return math.isclose(recorded, value, rel_tol=1e-9, abs_tol=0.0)
    return str(recorded) == str(value)
