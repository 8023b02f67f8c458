"""Warm start without training: which earlier trials fit a (changed) space, and how they seed the new study."""

from __future__ import annotations

import copy

import optuna
import pytest
from optuna.trial import TrialState

from search.config.schema import parse_config
from search.config.space import define_by_run
from search.errors import SearchNotFound
from search.run.searcher import PruningAwareOptunaSearch, make_sampler
from search.run.warmstart import fitting_params, load_warm_start
from tests.conftest import load_yaml
from tests.fabricate import Trial, record_search, sqlite_uri

SPACE_RAW = {
    "n_layers": {"type": "int", "low": 1, "high": 3},
    "units": {"type": "int", "low": 8, "high": 64, "step": 8, "per_layer": True},
    "lr": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
    "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
    "momentum": {"type": "float", "low": 0.0, "high": 0.99, "if": {"optimizer": "sgd"}},
    "batch_size": 64,
}
GOOD = {"n_layers": 2, "units_0": 16, "units_1": 32, "lr": 0.01, "optimizer": "adam", "batch_size": 64}


def config(space: dict | None = None, **search) -> object:
    raw = load_yaml("wine.yaml")
    raw["space"] = copy.deepcopy(space or SPACE_RAW)
    raw["search"].update(search)
    if "objectives" in search:
        raw["search"].pop("metric")  # the first objective is the metric
    return parse_config(raw)


def test_a_configuration_of_the_same_space_fits_with_its_sampled_parameters():
    assert fitting_params(GOOD, config().space) == {k: v for k, v in GOOD.items() if k != "batch_size"}
    sgd = {**GOOD, "optimizer": "sgd", "momentum": 0.9}
    assert fitting_params(sgd, config().space)["momentum"] == 0.9


@pytest.mark.parametrize("change,why", [
    ({"lr": 0.5}, "outside the float range"),
    ({"units_1": 20}, "off the int step grid"),
    ({"units_1": 128}, "above the int range"),
    ({"optimizer": "rmsprop"}, "not one of the choices"),
    ({"batch_size": 128}, "a constant of the space differs"),
    ({"momentum": 0.9}, "conditional parameter whose condition does not hold"),
    ({"optimizer": "sgd"}, "conditional parameter missing"),
    ({"units_2": 16}, "a layer beyond n_layers"),
    ({"dropout": 0.1}, "a parameter the space does not have"),
])
def test_configurations_outside_the_space_are_dropped(change, why):
    assert fitting_params({**GOOD, **change}, config().space) is None, why


def test_missing_sampled_parameter_is_dropped():
    assert fitting_params({k: v for k, v in GOOD.items() if k != "lr"}, config().space) is None


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """An earlier search: three completed trials (b best), one stopped early, one failed, one interrupted. Recorded
    once for the module (about a second): loading a warm start only reads it."""
    trials = [
        Trial("a", [0.9, 0.6], {**GOOD, "lr": 0.001}, "completed"),
        Trial("b", [0.8, 0.3], {**GOOD, "lr": 0.05}, "completed"),
        Trial("c", [0.7, 0.5], {**GOOD, "lr": 0.002}, "completed"),
        Trial("d", [1.5], {**GOOD, "lr": 0.09}, "stopped_early"),
        Trial("e", [2.0], {**GOOD, "lr": 0.0001}, "failed"),
        Trial("f", [2.0], {**GOOD, "lr": 0.0002}, "interrupted"),
    ]
    return record_search(sqlite_uri(tmp_path_factory.mktemp("earlier")), "earlier", trials)


def test_load_keeps_every_ended_fitting_trial_and_ranks_the_top_k(recorded):
    warm = load_warm_start(recorded.client, config(warm_start="earlier", warm_start_top_k=2))
    assert warm.parent_run_id == recorded.parent
    assert (warm.kept, warm.dropped) == (5, 0)  # the interrupted trial is neither
    assert [p["lr"] for p in warm.points] == [0.05, 0.002]  # best first, failed ones never
    states = sorted(t.state.name for t in warm.trials)
    assert states == ["COMPLETE", "COMPLETE", "COMPLETE", "FAIL", "PRUNED"]
    pruned = next(t for t in warm.trials if t.state == TrialState.PRUNED)
    assert pruned.intermediate_values == {1: 1.5}
    assert "5 earlier trials told to the sampler, none dropped" in warm.describe()


def test_a_narrowed_space_drops_what_no_longer_fits_and_says_so(recorded):
    narrowed = copy.deepcopy(SPACE_RAW)
    narrowed["lr"] = {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}
    warm = load_warm_start(recorded.client, config(narrowed, warm_start="earlier"))
    assert (warm.kept, warm.dropped) == (2, 3)  # a (0.001) and c (0.002) fit; b, d, e do not
    assert [p["lr"] for p in warm.points] == [0.002, 0.001]
    assert "3 dropped (outside the current space)" in warm.describe()
    assert warm.tags()["hps.warm_start"] == f"earlier (parent run {recorded.parent})"


def test_a_missing_search_is_refused(recorded):
    with pytest.raises(SearchNotFound, match="no search named 'nowhere'"):
        load_warm_start(recorded.client, config(warm_start="nowhere"))


def test_the_study_is_seeded_and_the_top_k_asked_first(recorded):
    cfg = config(warm_start="earlier", warm_start_top_k=2)
    warm = load_warm_start(recorded.client, cfg)
    searcher = PruningAwareOptunaSearch(space=define_by_run(cfg.space), metric="val_loss", mode="min",
                                        sampler=make_sampler("tpe", 0), points_to_evaluate=warm.points,
                                        prior_trials=warm.trials)
    told = [t for t in searcher._ot_study.get_trials(deepcopy=False) if t.state != TrialState.WAITING]
    assert len(told) == warm.kept
    assert sorted(t.value for t in told if t.state == TrialState.COMPLETE) == [0.3, 0.5, 0.6]
    first, second = searcher.suggest("t1"), searcher.suggest("t2")
    assert first["lr"] == 0.05 and second["lr"] == 0.002
    assert {k: first[k] for k in warm.points[0]} == warm.points[0]


def test_a_two_objective_search_is_told_both_values(tmp_path):
    trials = [Trial("a", [0.9, 0.6], GOOD, "completed")]
    recorded = record_search(sqlite_uri(tmp_path), "earlier2", trials)
    recorded.client.log_metric(recorded.trials["a"], "n_params", 1234)
    recorded.client.log_metric(recorded.trials["a"], "best_epoch_val_accuracy", 0.8)
    cfg = config(warm_start="earlier2", objectives=[{"metric": "val_accuracy"}, {"metric": "n_params"}])
    warm = load_warm_start(recorded.client, cfg)
    assert warm.trials[0].values == [0.8, 1234]
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(warm.trials[0])  # accepted by a two-objective study



def test_a_resumed_search_does_not_add_the_earlier_trials_again(recorded, tmp_path):
    """`hps resume`: Tune unpickles the searcher it started with, then restores its saved state into it."""
    import pickle

    cfg = config(warm_start="earlier", warm_start_top_k=2)
    warm = load_warm_start(recorded.client, cfg)
    started = PruningAwareOptunaSearch(space=define_by_run(cfg.space), metric="val_loss", mode="min",
                                       sampler=make_sampler("tpe", 0), points_to_evaluate=warm.points,
                                       prior_trials=warm.trials)
    pickled = pickle.dumps(started)  # the tuner's pickle, taken when the search started
    started.suggest("t1")
    started.save(str(tmp_path / "searcher.pkl"))  # the experiment state's copy, taken later
    resumed = pickle.loads(pickled)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    trials = resumed._ot_study.get_trials(deepcopy=False)
    assert sum(t.state != TrialState.WAITING for t in trials) == warm.kept + 1  # + the running trial t1
    assert resumed.suggest("t2")["lr"] == 0.002  # the second of the top 2, asked once
