"""The trainable's hyperparameters: one table of defaults and value rules, used by the config, the model and the
training loop alike."""

from __future__ import annotations

import pytest
import torch

from trainables.model import Architecture, architecture_from_params, build_mlp
from trainables.params import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_N_LAYERS,
    DEFAULT_UNITS,
    HYPERPARAMETERS,
    PER_LAYER,
    default,
    value_error,
)
from trainables.train import make_optimizer


@pytest.mark.parametrize("name", [n for n, spec in HYPERPARAMETERS.items() if spec.default is not None])
def test_every_default_follows_its_own_rule(name):
    assert value_error(name, default(name)) is None


def test_a_space_leaving_everything_out_trains_the_defaults():
    arch = architecture_from_params({}, 3, 2)
    assert arch == Architecture(3, 2, (DEFAULT_UNITS,) * DEFAULT_N_LAYERS, default("activation"), default("norm"),
                                default("dropout"))
    optimizer = make_optimizer({}, build_mlp(arch))
    assert type(optimizer).__name__.lower() == default("optimizer")
    assert optimizer.defaults["lr"] == default("lr") and optimizer.defaults["weight_decay"] == default("weight_decay")
    sgd = make_optimizer({"optimizer": "sgd"}, build_mlp(arch))
    assert sgd.defaults["momentum"] == default("momentum")
    assert DEFAULT_BATCH_SIZE == default("batch_size") and default("loss") is None  # None: the task's own loss


@pytest.mark.parametrize("name,value,wanted", [
    ("dropout", 1.0, "in [0, 1)"), ("momentum", -0.1, "in [0, 1)"), ("lr", 0, "a number > 0"),
    ("lr", float("inf"), "a number > 0"), ("weight_decay", -1e-9, "a number >= 0"), ("units", 2.0, "an integer >= 1"),
    ("n_layers", True, "an integer >= 1"), ("batch_size", 0, "an integer >= 1"),
    ("activation", "swish", "one of relu, leaky_relu, elu, gelu, tanh, selu, silu"), ("norm", "group", "one of none"),
    ("optimizer", "lbfgs", "one of adam, adamw, sgd"), ("loss", "hinge", "one of mse, mae, huber (regression only)"),
])
def test_values_outside_a_rule_are_refused_saying_what_is_wanted(name, value, wanted):
    error = value_error(name, value)
    assert error.startswith(f"{value!r} is not allowed; {name} must be {wanted}")


def test_only_units_take_a_value_per_layer():
    assert PER_LAYER == ("units",)
    arch = architecture_from_params({"n_layers": 2, "units_0": 5, "units_1": 6}, 3, 1)
    assert arch.hidden == (5, 6) and build_mlp(arch)(torch.randn(2, 3)).shape == (2, 1)


def test_the_config_checks_the_same_table():
    from search.config import schema

    assert schema.HYPERPARAMETERS is HYPERPARAMETERS
