"""The trainable's hyperparameters: each one's default and the values it accepts. Importable without torch.

A search space may name exactly these (``search.config.schema`` checks every value a space can produce against them); a
parameter the space leaves out takes its default here, in the model (``trainables.model``) and the training loop
(``trainables.train``) alike.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainables.names import ACTIVATIONS, NORMS, OPTIMIZERS, REGRESSION_LOSSES


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_num(value: Any) -> bool:
    # Finite only: an infinite lr or weight decay makes every trial diverge.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class Hyperparameter:
    """One hyperparameter: its default, and the rule its values follow (in words, and as a check)."""

    default: Any
    wanted: str  # "<name> must be ..."
    accepts: Callable[[Any], bool]
    per_layer: bool = False  # may take one value per hidden layer (``units_0 .. units_{n_layers-1}``)


DEFAULT_N_LAYERS = 2
DEFAULT_UNITS = 128
DEFAULT_BATCH_SIZE = 64
HYPERPARAMETERS: dict[str, Hyperparameter] = {
    "n_layers": Hyperparameter(DEFAULT_N_LAYERS, "an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "units": Hyperparameter(DEFAULT_UNITS, "an integer >= 1", lambda v: _is_int(v) and v >= 1, per_layer=True),
    # 1 trains one row at a time; it cannot go with batch norm (search.config.schema refuses the pair).
    "batch_size": Hyperparameter(DEFAULT_BATCH_SIZE, "an integer >= 1", lambda v: _is_int(v) and v >= 1),
    "lr": Hyperparameter(1e-3, "a number > 0", lambda v: _is_num(v) and v > 0),
    "weight_decay": Hyperparameter(0.0, "a number >= 0", lambda v: _is_num(v) and v >= 0),
    "dropout": Hyperparameter(0.0, "in [0, 1)", lambda v: _is_num(v) and 0 <= v < 1),
    "momentum": Hyperparameter(0.9, "in [0, 1)", lambda v: _is_num(v) and 0 <= v < 1),  # SGD only
    "activation": Hyperparameter("relu", f"one of {', '.join(ACTIVATIONS)}", lambda v: v in ACTIVATIONS),
    "norm": Hyperparameter("none", f"one of {', '.join(NORMS)}", lambda v: v in NORMS),
    "optimizer": Hyperparameter("adam", f"one of {', '.join(OPTIMIZERS)}", lambda v: v in OPTIMIZERS),
    # None: the task's own loss (cross-entropy for classifiers, MSE for a regression; trainables.metrics).
    "loss": Hyperparameter(None, f"one of {', '.join(REGRESSION_LOSSES)} (regression only)",
                           lambda v: v in REGRESSION_LOSSES),
}
PER_LAYER = tuple(name for name, spec in HYPERPARAMETERS.items() if spec.per_layer)


def default(name: str) -> Any:
    """The value a trial uses for hyperparameter ``name`` when its configuration leaves it out."""
    return HYPERPARAMETERS[name].default


def value_error(name: str, value: Any) -> str | None:
    """Why ``value`` is not allowed for hyperparameter ``name``, or None (``name`` must be one of HYPERPARAMETERS)."""
    spec = HYPERPARAMETERS[name]
    return None if spec.accepts(value) else f"{value!r} is not allowed; {name} must be {spec.wanted}"
