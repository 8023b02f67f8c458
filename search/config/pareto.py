"""Two-objective searches: what the searcher optimizes, the Pareto front of the recorded trials, and the rules
`hps evaluate --pick` chooses one member of the front by.

A search with ``search.objectives`` records them on its parent run (tag ``hps.objectives``,
``val_accuracy:max,n_params:min``). Each trial is judged at its kept (best-validation) epoch: the first objective
is its ``best_<metric>``, the second that epoch's value (``best_epoch_<metric>``), or the metric itself for
``n_params``, which does not change during training. No heavy imports: the leaderboard uses this module.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from trainables.names import MAXIMIZED, DataError

OBJECTIVES_TAG = "hps.objectives"
FRONT_COLUMN = "pareto_front"
PICK_RULES = ("best", "smallest-within:X")
# --pick smallest-within:X measures X in points of the first objective: percentage points for metrics that are
# fractions (accuracy, F1, R²: 0.5 means 0.005), the metric's own units otherwise (losses, MAE, RMSE).
POINT_SCALE = {metric: 0.01 for metric in MAXIMIZED}


def searcher_objectives(cfg: Any) -> tuple[str | list[str], str | list[str]]:
    """The metric and mode the Optuna searcher is given: the search's metric, or for two objectives the result
    keys ``[best_<first>, <second>]`` and their modes (the first as ASHA and the leaderboard judge it)."""
    pairs = cfg.search.objective_pairs
    if len(pairs) == 1:
        return cfg.search.metric, cfg.search.mode
    (first, first_mode), (second, second_mode) = pairs
    return [f"best_{first}", second], [first_mode, second_mode]


def objectives_tag(objectives: list[dict] | None) -> str | None:
    """``val_accuracy:max,n_params:min`` for the parent run, from the config's (dumped) ``search.objectives``."""
    if not objectives:
        return None
    return ",".join(f"{o['metric']}:{o['mode']}" for o in objectives)


def parse_objectives(tag: str | None) -> list[tuple[str, str]]:
    """The ``(metric, mode)`` pairs of an ``hps.objectives`` tag; empty for a single-objective search."""
    if not tag:
        return []
    return [tuple(part.split(":", 1)) for part in tag.split(",")]  # type: ignore[misc]


def objective_value(metrics: dict[str, float], metric: str) -> float | None:
    """A trial's recorded value of ``metric`` at its kept epoch: ``best_<metric>`` (the search's own metric),
    ``best_epoch_<metric>`` (another validation metric at that epoch) or the metric itself (``n_params``)."""
    for key in (f"best_{metric}", f"best_epoch_{metric}", metric):
        value = metrics.get(key)
        if value is not None and math.isfinite(value):
            return float(value)
    return None


def objective_columns(objectives: list[tuple[str, str]]) -> list[str]:
    """The leaderboard columns holding each objective: ``best_<first>``, then ``<second>``."""
    return [f"best_{metric}" if i == 0 else metric for i, (metric, _) in enumerate(objectives)]


def pareto_mask(values: np.ndarray, modes: list[str]) -> np.ndarray:
    """Which rows of ``values`` (n × objectives) no other row dominates (at least as good in every objective,
    better in one). Rows with a NaN are never on the front."""
    values = np.asarray(values, dtype=float)
    signs = np.array([1.0 if mode == "min" else -1.0 for mode in modes])
    costs = values * signs  # everything minimized
    finite = np.isfinite(costs).all(axis=1)
    front = finite.copy()
    for i in np.flatnonzero(finite):
        others = costs[finite]
        dominated = (others <= costs[i]).all(axis=1) & (others < costs[i]).any(axis=1)
        front[i] = not dominated.any()
    return front


def mark_front(board: pd.DataFrame, objectives: list[tuple[str, str]]) -> pd.DataFrame:
    """The leaderboard with a ``pareto_front`` column (two-objective searches only; failed trials are never on it)."""
    if len(objectives) < 2 or board.empty:
        return board
    columns = objective_columns(objectives)
    values = np.array(board.reindex(columns=columns), dtype=float)  # a copy (pandas may hand out read-only views)
    values[(board["outcome"] == "failed").to_numpy()] = np.nan
    board = board.copy()
    board[FRONT_COLUMN] = pareto_mask(values, [mode for _, mode in objectives])
    return board


def front_table(board: pd.DataFrame, objectives: list[tuple[str, str]]) -> pd.DataFrame:
    """The members of the front, best first objective first: trial, both objectives, epoch, params, run id."""
    columns = objective_columns(objectives)
    front = board[board[FRONT_COLUMN]] if FRONT_COLUMN in board else board.iloc[:0]
    params = [c for c in board.columns if c.startswith("param.")]
    shown = ["trial", *columns, "best_epoch", "outcome", *params, "run_id"]
    first_mode = objectives[0][1]
    return front.sort_values(columns[0], ascending=first_mode == "min", kind="stable")[shown].reset_index(drop=True)


def parse_pick(rule: str) -> tuple[str, float]:
    """``best`` → ("best", 0); ``smallest-within:0.5`` → ("smallest-within", 0.5); anything else a DataError."""
    kind, _, amount = rule.strip().partition(":")
    if kind == "best" and not amount:
        return "best", 0.0
    if kind == "smallest-within":
        try:
            points = float(amount)
        except ValueError:
            points = math.nan
        if math.isfinite(points) and points >= 0:
            return kind, points
    raise DataError(f"--pick {rule!r}: rules are {' or '.join(PICK_RULES)} (X >= 0, in points of the first objective)")


def pick(board: pd.DataFrame, objectives: list[tuple[str, str]], rule: str) -> pd.Series:
    """The member of the Pareto front ``rule`` chooses.

    - ``best``: the best first objective.
    - ``smallest-within:X``: of the members whose first objective is within X points of the front's best (points:
      percentage points for accuracy, F1 and R², so 0.5 is 0.005; the metric's own units otherwise), the one with
      the best second objective (the smallest ``n_params``); ties go to the better first objective.
    """
    kind, points = parse_pick(rule)
    if len(objectives) < 2:
        raise DataError("--pick chooses from the Pareto front of a two-objective search (search.objectives); "
                        "this search has one objective")
    board = mark_front(board, objectives)
    front = board[board[FRONT_COLUMN]]
    if front.empty:
        raise DataError("no trial of this search is on the Pareto front (no trial has both objectives recorded)")
    (first, first_mode), (_, second_mode) = objectives
    col0, col1 = objective_columns(objectives)
    sign0, sign1 = (1.0 if first_mode == "min" else -1.0), (1.0 if second_mode == "min" else -1.0)
    cost0 = sign0 * front[col0].astype(float)
    if kind == "best":
        return front.loc[cost0.idxmin()]
    tolerance = points * POINT_SCALE.get(first, 1.0)
    close = front[cost0 <= cost0.min() + tolerance + 1e-12]
    order = pd.DataFrame({"second": sign1 * close[col1].astype(float), "first": sign0 * close[col0].astype(float)})
    return close.loc[order.sort_values(["second", "first"], kind="stable").index[0]]
