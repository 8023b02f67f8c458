"""The MLP every trial trains, built from a trial's hyperparameters.

Each hidden layer is ``Linear → norm → activation → dropout``, the layer order the course notes use.
The architecture is described by a small JSON-ready dict, so a saved model is rebuilt from that description
plus a weights file, never from a pickle.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from trainables.names import ACTIVATIONS, NORMS
from trainables.network import BuilderSignature, CustomArchitecture, NetworkCode, builder_arguments
from trainables.params import default


@dataclass(frozen=True)
class Architecture:
    """Everything needed to rebuild the network (weights aside)."""

    n_features: int
    n_outputs: int
    hidden: tuple[int, ...]
    activation: str = "relu"
    norm: str = "none"
    dropout: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {**asdict(self), "hidden": list(self.hidden)}

    @classmethod
    def from_dict(cls, data: dict) -> Architecture:
        """Inverse of :meth:`to_dict`."""
        return cls(**{**data, "hidden": tuple(data["hidden"])})

    def build(self) -> nn.Sequential:
        """The network (see :func:`build_mlp`)."""
        return build_mlp(self)


def architecture_from_dict(data: dict) -> Architecture | CustomArchitecture:
    """The architecture a model's description holds: the built-in MLP, or a user's network (with its code)."""
    return CustomArchitecture.from_dict(data) if "network" in data else Architecture.from_dict(data)


def hidden_sizes(params: dict) -> tuple[int, ...]:
    """Hidden layer widths from trial params: ``units_0..units_{n-1}`` if present, else ``units`` repeated."""
    n_layers = int(params.get("n_layers", default("n_layers")))
    return tuple(int(params.get(f"units_{i}", params.get("units", default("units")))) for i in range(n_layers))


def architecture_from_params(params: dict, n_features: int, n_outputs: int, network: NetworkCode | None = None,
                             n_classes: int | None = None) -> Architecture | CustomArchitecture:
    """The architecture a trial's hyperparameters describe: the built-in MLP, or with ``network`` the user's
    builder called with the data's shape (``n_classes``: the task's classes, 1 for a regression) and the
    hyperparameters it takes."""
    if network is not None:
        arguments = builder_arguments(BuilderSignature.of(network.load()), params)
        classes = n_outputs if n_classes is None else n_classes
        return CustomArchitecture(network, n_features, n_outputs, classes, arguments)
    return Architecture(
        n_features=n_features,
        n_outputs=n_outputs,
        hidden=hidden_sizes(params),
        activation=str(params.get("activation", default("activation"))),
        norm=str(params.get("norm", default("norm"))),
        dropout=float(params.get("dropout", default("dropout"))),
    )


def build_mlp(arch: Architecture) -> nn.Sequential:
    """Build the network: hidden blocks of Linear → norm → activation → dropout, then a Linear output layer."""
    if arch.activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {arch.activation!r}; choose from {sorted(ACTIVATIONS)}")
    if arch.norm not in NORMS:
        raise ValueError(f"unknown norm {arch.norm!r}; choose from {list(NORMS)}")
    layers: list[nn.Module] = []
    width = arch.n_features
    for units in arch.hidden:
        layers.append(nn.Linear(width, units))
        if arch.norm == "batch":
            layers.append(nn.BatchNorm1d(units))
        elif arch.norm == "layer":
            layers.append(nn.LayerNorm(units))
        layers.append(getattr(nn, ACTIVATIONS[arch.activation])())
        if arch.dropout > 0:
            layers.append(nn.Dropout(arch.dropout))
        width = units
    layers.append(nn.Linear(width, arch.n_outputs))
    return nn.Sequential(*layers)


def parameter_count(model: nn.Module) -> int:
    """The number of trainable values in a network (``n_params``, a possible second objective of a search)."""
    return sum(p.numel() for p in model.parameters())


class Ensemble(nn.Module):
    """The average prediction of several trained networks (the top trials of a search).

    Its output has the same meaning as one member's, so everything downstream (probabilities, decoding) is
    unchanged: the mean for a regression; for classifiers, logits whose softmax/sigmoid is the *mean of the members'
    probabilities* (averaging probabilities, not logits, keeps one over-confident member from dominating).
    """

    def __init__(self, members: list[nn.Module], task: str) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.task = task

    def forward(self, x):  # noqa: D102 - see the class docstring
        outputs = torch.stack([member(x) for member in self.members])
        log_k = math.log(len(self.members))
        if self.task == "regression":
            return outputs.mean(dim=0)
        if self.task == "binary":
            # logit(mean σ(z)) = log mean σ(z) − log mean σ(−z), in log space so saturated members stay finite
            log_p = torch.logsumexp(F.logsigmoid(outputs), dim=0) - log_k
            log_q = torch.logsumexp(F.logsigmoid(-outputs), dim=0) - log_k
            return log_p - log_q
        # log of the mean probability: its softmax is that mean probability
        return torch.logsumexp(F.log_softmax(outputs, dim=-1), dim=0) - log_k
