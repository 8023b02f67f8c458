"""A search read back from MLflow: found by name, its config, its trials ranked (failed ones last)."""

from __future__ import annotations

import math

import pytest

from search.config.schema import parse_config
from search.errors import SearchNotFound
from search.records.leaderboard import find_search_run, leaderboard, parse_number, recorded_config
from tests.conftest import load_yaml
from tests.fabricate import Trial, record_search, sqlite_uri

TRIALS = [
    Trial("slow", [0.9, 0.6, 0.5], {"lr": "0.01", "activation": "relu"}),
    Trial("fast", [0.7, 0.3, 0.4], {"lr": "0.001", "activation": "tanh"}),
    Trial("stopped", [0.8], {"lr": "0.1", "activation": "elu"}, outcome="stopped_early"),
    Trial("diverged", [0.1, math.inf], {"lr": "1e-05", "activation": "gelu"}, outcome="failed"),
]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """The recorded search, once for the module: its tests only read it."""
    raw = load_yaml("digits.yaml")
    return record_search(sqlite_uri(tmp_path_factory.mktemp("board")), "board", TRIALS, config=raw)


def test_trials_are_ranked_by_their_best_epoch_and_a_failed_one_last(recorded):
    board = leaderboard(recorded.client, find_search_run(recorded.client, "board"))
    assert board["trial"].tolist() == ["fast", "slow", "stopped", "diverged"]  # diverged's 0.1 ranks it nowhere
    assert board["rank"].tolist() == [1, 2, 3, 4]
    first = board.iloc[0]
    assert first["best_val_loss"] == pytest.approx(0.3) and first["best_epoch"] == 2 and first["epochs"] == 3
    assert first["param.lr"] == 0.001 and first["param.activation"] == "tanh"  # numbers read back as numbers
    assert first["run_id"] == recorded.trials["fast"]
    assert board.iloc[2]["outcome"] == "stopped_early"


def test_a_search_is_found_by_name_and_its_config_read_back(recorded):
    parent = find_search_run(recorded.client, "board")
    assert parent.info.run_id == recorded.parent
    assert recorded_config(recorded.client, parent) == parse_config(load_yaml("digits.yaml"))
    with pytest.raises(SearchNotFound, match="no search named 'other'"):
        find_search_run(recorded.client, "other")
    with pytest.raises(SearchNotFound, match="letters, digits"):
        find_search_run(recorded.client, "it's")


def test_params_are_numbers_where_they_read_as_numbers():
    assert [parse_number(t) for t in ("3", "0.25", "1e-05", "relu", "")] == [3, 0.25, 1e-05, "relu", ""]
