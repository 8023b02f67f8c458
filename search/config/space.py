"""From the ``space:`` section of a config to an Optuna define-by-run function.

Fixed values are returned as constants; distributions become ``trial.suggest_*`` calls. ``per_layer``
parameters are suggested once per hidden layer (``units_0 .. units_{n-1}``) and ``if:`` parameters only when
their condition holds, so Optuna sees the true, conditional structure of the space.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import optuna

from search.config.schema import CategoricalParam, Distribution, FloatParam, IntParam, sample_order
from trainables.params import DEFAULT_N_LAYERS


class SpaceSampler:
    """The define-by-run function: samples one configuration with ``trial.suggest_*``, returns the fixed values.

    It only calls ``suggest_*`` (Ray's OptunaSearch requires that). A class rather than a closure because the
    searcher, and with it this function, is pickled into the experiment state.
    """

    def __init__(self, space: dict[str, Any]) -> None:
        self.space = space
        self.order = sample_order(space)
        self.constants = {name: spec for name, spec in space.items() if not isinstance(spec, Distribution)}

    def __call__(self, trial: optuna.Trial) -> dict:
        values = dict(self.constants)
        for name in self.order:
            spec = self.space[name]
            if not condition_holds(spec.if_, values):
                continue
            if spec.per_layer:
                for layer in range(int(values.get("n_layers", DEFAULT_N_LAYERS))):
                    values[f"{name}_{layer}"] = suggest(trial, f"{name}_{layer}", spec)
            else:
                values[name] = suggest(trial, name, spec)
        return dict(self.constants)


def define_by_run(space: dict[str, Any]) -> Callable[[optuna.Trial], dict]:
    """The Optuna define-by-run function for a validated ``space:`` mapping."""
    return SpaceSampler(space)


def distribution_for(space: dict[str, Any], param: str) -> optuna.distributions.BaseDistribution | None:
    """The Optuna distribution a sampled parameter came from (``units_3`` → ``units``); None for constants."""
    spec = space.get(param)
    if spec is None and "_" in param:
        base, _, index = param.rpartition("_")
        spec = space.get(base) if index.isdigit() and getattr(space.get(base), "per_layer", False) else None
    if isinstance(spec, IntParam):
        return optuna.distributions.IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, FloatParam):
        return optuna.distributions.FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, CategoricalParam):
        return optuna.distributions.CategoricalDistribution(spec.choices)
    return None


def suggest(trial: optuna.Trial, name: str, spec: Any) -> Any:
    """One ``suggest_*`` call for a distribution spec."""
    if isinstance(spec, IntParam):
        return trial.suggest_int(name, spec.low, spec.high, step=spec.step, log=spec.log)
    if isinstance(spec, FloatParam):
        return trial.suggest_float(name, spec.low, spec.high, step=spec.step, log=spec.log)
    if isinstance(spec, CategoricalParam):
        return trial.suggest_categorical(name, spec.choices)
    raise TypeError(f"not a distribution: {spec!r}")


def condition_holds(condition: dict | None, values: dict) -> bool:
    """``if: {optimizer: sgd}`` holds when every named parameter was sampled with (one of) the given value(s)."""
    for other, wanted in (condition or {}).items():
        allowed = wanted if isinstance(wanted, list) else [wanted]
        if other not in values or values[other] not in allowed:
            return False
    return True
