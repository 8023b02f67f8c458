"""Two-objective searches without training: config validation, the Pareto front, and `--pick` on recorded rows."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from search.config.pareto import FRONT_COLUMN, front_table, mark_front, pareto_mask, pick, searcher_objectives
from search.config.schema import ConfigError, parse_config
from tests.conftest import load_yaml
from trainables.names import DataError

OBJECTIVES = [("val_accuracy", "max"), ("n_params", "min")]


def raw_with(objectives, **search) -> dict:
    raw = load_yaml("digits.yaml")
    raw["search"].pop("metric")
    raw["search"].update(objectives=objectives, **search)
    return raw


def test_two_objectives_make_the_first_the_search_metric():
    cfg = parse_config(raw_with([{"metric": "val_accuracy"}, {"metric": "n_params", "mode": "min"}]))
    assert (cfg.search.metric, cfg.search.mode) == ("val_accuracy", "max")
    assert cfg.search.objective_pairs == OBJECTIVES
    assert searcher_objectives(cfg) == (["best_val_accuracy", "n_params"], ["max", "min"])
    cfg = parse_config(raw_with([{"metric": "val_loss"}, {"metric": "val_f1"}], sampler="nsgaii"))
    assert cfg.search.objective_pairs == [("val_loss", "min"), ("val_f1", "max")]


@pytest.mark.parametrize("objectives,search,message", [
    ([{"metric": "val_accuracy"}], {}, "exactly two are supported"),
    ([{"metric": "val_accuracy"}, {"metric": "n_params"}, {"metric": "val_loss"}], {}, "exactly two are supported"),
    ([{"metric": "n_params"}, {"metric": "val_accuracy"}], {}, "the first objective must be a trained metric"),
    ([{"metric": "val_accuracy"}, {"metric": "n_params", "mode": "max"}], {}, "n_params is minimized"),
    ([{"metric": "val_accuracy"}, {"metric": "latency"}], {}, "unknown metric 'latency'"),
    ([{"metric": "val_accuracy"}, {"metric": "n_params"}], {"sampler": "cmaes"}, "cmaes cannot search two objectives"),
    ([{"metric": "val_accuracy"}, {"metric": "n_params"}], {"metric": "val_loss"}, "must be left out or be the first"),
    ([{"metric": "val_accuracy"}, {"metric": "val_mae"}], {}, "val_mae is not reported for multiclass"),
])
def test_bad_objectives_are_one_line_errors(objectives, search, message):
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(raw_with(objectives, **search))
    assert "\n" not in str(info.value)


def test_pareto_mask_keeps_the_non_dominated_points():
    values = np.array([[0.90, 1000], [0.95, 5000], [0.85, 2000], [0.95, 4000], [0.80, 100], [np.nan, 10]])
    assert pareto_mask(values, ["max", "min"]).tolist() == [True, False, False, True, True, False]
    assert pareto_mask(values[:5], ["min", "min"]).tolist() == [False, False, False, False, True]


def board() -> pd.DataFrame:
    """Recorded trial rows as the leaderboard shows them (best first objective first)."""
    rows = [("a", "completed", 0.960, 50_000), ("b", "completed", 0.957, 9_000), ("c", "stopped_early", 0.955, 2_000),
            ("d", "completed", 0.950, 30_000), ("e", "completed", 0.900, 1_000), ("f", "failed", 0.990, 10)]
    frame = pd.DataFrame(rows, columns=["trial", "outcome", "best_val_accuracy", "n_params"])
    frame["best_epoch"] = 3
    frame["param.lr"] = 0.01
    frame["run_id"] = [f"run-{t}" for t in frame["trial"]]
    return frame


def test_the_front_is_marked_and_tabled_failed_trials_excluded():
    marked = mark_front(board(), OBJECTIVES)
    assert marked.loc[marked[FRONT_COLUMN], "trial"].tolist() == ["a", "b", "c", "e"]
    table = front_table(marked, OBJECTIVES)
    assert table["trial"].tolist() == ["a", "b", "c", "e"]
    assert list(table.columns[:3]) == ["trial", "best_val_accuracy", "n_params"]
    assert mark_front(board(), OBJECTIVES[:1]).columns.tolist() == board().columns.tolist()  # one objective: as is


@pytest.mark.parametrize("rule,trial", [
    ("best", "a"),                    # the best first objective on the front
    ("smallest-within:0.5", "c"),     # within 0.005 of 0.960: a, b, c; c is the smallest
    ("smallest-within:0.4", "b"),     # within 0.004: a, b
    ("smallest-within:0", "a"),
    ("smallest-within:10", "e"),
])
def test_pick_rules(rule, trial):
    assert pick(board(), OBJECTIVES, rule)["trial"] == trial


def test_pick_measures_plain_metrics_in_their_own_units():
    frame = board().rename(columns={"best_val_accuracy": "best_val_loss"})
    frame["best_val_loss"] = [0.10, 0.30, 0.55, 0.40, 0.70, 0.01]
    assert pick(frame, [("val_loss", "min"), ("n_params", "min")], "smallest-within:0.5")["trial"] == "c"


@pytest.mark.parametrize("rule", ["smallest", "smallest-within:-1", "smallest-within:x", "best:1", "largest"])
def test_unknown_pick_rules_are_refused(rule):
    with pytest.raises(DataError, match="rules are best or smallest-within:X"):
        pick(board(), OBJECTIVES, rule)


def test_pick_needs_two_objectives():
    with pytest.raises(DataError, match="two-objective search"):
        pick(board(), OBJECTIVES[:1], "best")
