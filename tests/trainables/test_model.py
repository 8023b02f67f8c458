"""Model building from trial parameters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.model import Architecture, Ensemble, architecture_from_params, build_mlp, hidden_sizes


def test_hidden_block_order_is_linear_norm_activation_dropout():
    net = build_mlp(Architecture(n_features=5, n_outputs=3, hidden=(16, 8), activation="gelu", norm="batch", dropout=0.2))
    kinds = [type(m) for m in net]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout, nn.Linear, nn.BatchNorm1d, nn.GELU, nn.Dropout, nn.Linear]
    assert net[0].in_features == 5 and net[-1].out_features == 3 and net[4].out_features == 8


def test_no_norm_no_dropout_layer_norm():
    net = build_mlp(Architecture(n_features=4, n_outputs=1, hidden=(6,), activation="tanh", norm="layer", dropout=0.0))
    assert [type(m) for m in net] == [nn.Linear, nn.LayerNorm, nn.Tanh, nn.Linear]
    assert net(torch.randn(3, 4)).shape == (3, 1)


def test_per_layer_units_and_defaults_from_params():
    assert hidden_sizes({"n_layers": 3, "units_0": 64, "units_1": 32, "units_2": 16}) == (64, 32, 16)
    assert hidden_sizes({"n_layers": 2, "units": 10}) == (10, 10)
    arch = architecture_from_params({"n_layers": 1, "units_0": 7, "activation": "elu"}, 3, 2)
    assert arch == Architecture(3, 2, (7,), "elu", "none", 0.0)
    assert Architecture.from_dict(arch.to_dict()) == arch


def test_unknown_activation_is_an_error():
    with pytest.raises(ValueError, match="activation"):
        build_mlp(Architecture(2, 1, (3,), activation="swish"))


def _members(n_outputs: int, count: int = 3) -> list[nn.Module]:
    torch.manual_seed(0)
    return [build_mlp(Architecture(n_features=4, n_outputs=n_outputs, hidden=(8,))).eval() for _ in range(count)]


def test_ensemble_regression_is_the_mean_output():
    members, x = _members(1), torch.randn(6, 4)
    expected = torch.stack([m(x) for m in members]).mean(dim=0)
    assert torch.allclose(Ensemble(members, "regression")(x), expected, atol=1e-6)


def test_ensemble_classifiers_average_probabilities_not_logits():
    x = torch.randn(6, 4)
    members = _members(3)
    mean_probs = torch.stack([torch.softmax(m(x), dim=1) for m in members]).mean(dim=0)
    assert torch.allclose(torch.softmax(Ensemble(members, "multiclass")(x), dim=1), mean_probs, atol=1e-6)
    members = _members(1)
    mean_p = torch.stack([torch.sigmoid(m(x)) for m in members]).mean(dim=0)
    assert torch.allclose(torch.sigmoid(Ensemble(members, "binary")(x)), mean_p, atol=1e-6)


def test_ensemble_of_saturated_binary_members_stays_finite():
    sure_yes, sure_no = nn.Linear(4, 1), nn.Linear(4, 1)
    for layer, bias in ((sure_yes, 200.0), (sure_no, -200.0)):
        nn.init.zeros_(layer.weight)
        nn.init.constant_(layer.bias, bias)
    logits = Ensemble([sure_yes, sure_no], "binary")(torch.randn(3, 4))
    assert torch.isfinite(logits).all()
    assert torch.allclose(torch.sigmoid(logits), torch.full((3, 1), 0.5))  # one sure yes + one sure no = a coin


def test_ensemble_needs_members():
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([], "regression")
