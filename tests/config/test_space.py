"""The space becomes real Optuna distributions: fixed values, per-layer and conditional parameters."""

from __future__ import annotations

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from search.config.schema import parse_config
from search.config.space import define_by_run
from tests.conftest import load_yaml

optuna.logging.set_verbosity(optuna.logging.WARNING)


def sample(space_cfg: dict, n: int = 30, seed: int = 0) -> list[optuna.trial.FrozenTrial]:
    raw = load_yaml("digits.yaml")
    raw["space"] = space_cfg
    fn = define_by_run(parse_config(raw).space)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    for _ in range(n):
        trial = study.ask()
        trial.set_user_attr("constants", fn(trial))
        study.tell(trial, 0.0)
    return study.trials


def test_distributions_match_the_config():
    trials = sample(load_yaml("digits.yaml")["space"], n=1)
    dists = trials[0].distributions
    assert dists["lr"] == FloatDistribution(1e-4, 1e-1, log=True)
    assert dists["n_layers"] == IntDistribution(1, 3)
    assert dists["units_0"] == IntDistribution(32, 512, log=True)
    assert dists["activation"] == CategoricalDistribution(["relu", "leaky_relu", "elu", "gelu", "tanh"])
    assert "units" not in dists


def test_per_layer_units_follow_n_layers():
    for trial in sample({"n_layers": {"type": "int", "low": 1, "high": 4},
                         "units": {"type": "int", "low": 8, "high": 64, "per_layer": True}}):
        n = trial.params["n_layers"]
        assert sorted(k for k in trial.params if k.startswith("units_")) == [f"units_{i}" for i in range(n)]


def test_conditional_parameter_only_when_condition_holds():
    trials = sample({"optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
                     "momentum": {"type": "float", "low": 0.0, "high": 0.9, "if": {"optimizer": "sgd"}}})
    assert {t.params["optimizer"] for t in trials} == {"adam", "sgd"}
    for trial in trials:
        assert ("momentum" in trial.params) == (trial.params["optimizer"] == "sgd")


def test_condition_with_a_list_of_values():
    trials = sample({"optimizer": {"type": "categorical", "choices": ["adam", "adamw", "sgd"]},
                     "weight_decay": {"type": "float", "low": 1e-5, "high": 1e-2, "if": {"optimizer": ["adamw", "sgd"]}}})
    for trial in trials:
        assert ("weight_decay" in trial.params) == (trial.params["optimizer"] != "adam")


def test_fixed_values_are_constants_not_distributions():
    trials = sample({"optimizer": "sgd", "lr": 0.01, "n_layers": 2,
                     "units": {"type": "int", "low": 8, "high": 16, "per_layer": True},
                     "momentum": {"type": "float", "low": 0.1, "high": 0.9, "if": {"optimizer": "sgd"}}}, n=3)
    for trial in trials:
        assert trial.user_attrs["constants"] == {"optimizer": "sgd", "lr": 0.01, "n_layers": 2}
        assert set(trial.params) == {"units_0", "units_1", "momentum"}


def test_int_step_and_float_step():
    trials = sample({"batch_size": {"type": "int", "low": 16, "high": 128, "step": 16},
                     "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1}})
    for trial in trials:
        assert trial.params["batch_size"] % 16 == 0
        assert abs(trial.params["dropout"] * 10 - round(trial.params["dropout"] * 10)) < 1e-9
