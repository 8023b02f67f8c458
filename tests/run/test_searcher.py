"""The searcher tells Optuna the truth: early-stopped → PRUNED with intermediate values, errors/NaN → FAIL."""

from __future__ import annotations

import math

import optuna
import pytest
from optuna.trial import TrialState

from search.config.schema import SAMPLERS, ConfigError, parse_config
from search.config.space import define_by_run
from search.run.searcher import PruningAwareOptunaSearch, make_sampler, sampler_class
from tests.conftest import load_yaml


def searcher() -> PruningAwareOptunaSearch:
    cfg = parse_config(load_yaml("digits.yaml"))
    return PruningAwareOptunaSearch(space=define_by_run(cfg.space), metric="val_loss", mode="min",
                                    sampler=make_sampler("tpe", 0))


def feed(s: PruningAwareOptunaSearch, trial_id: str, losses: list[float], finished: bool, error: bool = False) -> dict:
    config = s.suggest(trial_id)
    best = math.inf
    result = {}
    for epoch, loss in enumerate(losses, start=1):
        best = min(best, loss) if math.isfinite(loss) else best
        result = {"epoch": epoch, "val_loss": loss, "best_val_loss": best,
                  "finished": finished and epoch == len(losses), "training_iteration": epoch}
        s.on_trial_result(trial_id, result)
    s.on_trial_complete(trial_id, result=None if error else result, error=error)
    return config


def test_states_and_values_told_to_optuna():
    s = searcher()
    feed(s, "complete", [0.9, 0.5, 0.6], finished=True)
    feed(s, "stopped", [1.2, 1.1], finished=False)
    feed(s, "errored", [0.8], finished=False, error=True)
    feed(s, "nan", [0.7, float("nan")], finished=True)
    s.suggest("diverged")
    s.on_trial_result("diverged", {"epoch": 1, "val_loss": 2.0})
    s.on_trial_complete("diverged", {"epoch": 2, "val_loss": float("inf"), "best_val_loss": 2.0, "diverged": "nan"})
    trials = {t.number: t for t in s._ot_study.get_trials(deepcopy=False)}
    complete, stopped, errored, nan, diverged = (trials[i] for i in range(5))
    assert diverged.state == TrialState.FAIL
    assert complete.state == TrialState.COMPLETE and complete.value == 0.5  # best epoch, not the last
    assert complete.intermediate_values == {1: 0.9, 2: 0.5, 3: 0.6}
    assert stopped.state == TrialState.PRUNED and stopped.intermediate_values == {1: 1.2, 2: 1.1}
    assert errored.state == TrialState.FAIL
    # a NaN at the end: the best finite value is kept, the NaN itself is never reported
    assert nan.state == TrialState.COMPLETE and nan.value == 0.7 and nan.intermediate_values == {1: 0.7}


def test_stock_behaviour_would_have_been_complete():
    """Guard the premise: Ray's own OptunaSearch tells an early-stopped trial as COMPLETE."""
    from ray.tune.search.optuna import OptunaSearch

    cfg = parse_config(load_yaml("digits.yaml"))
    stock = OptunaSearch(space=define_by_run(cfg.space), metric="val_loss", mode="min",
                         sampler=optuna.samplers.RandomSampler(seed=0))
    stock.suggest("t")
    stock.on_trial_result("t", {"val_loss": 1.0, "training_iteration": 1})
    stock.on_trial_complete("t", {"val_loss": 1.0, "training_iteration": 1})
    assert stock._ot_study.trials[0].state == TrialState.COMPLETE


def test_all_samplers_construct_and_suggest():
    cfg = parse_config(load_yaml("digits.yaml"))
    assert set(SAMPLERS) == {"tpe", "random", "cmaes", "gp", "qmc", "nsgaii"}
    for name in SAMPLERS:
        s = PruningAwareOptunaSearch(space=define_by_run(cfg.space), metric="val_loss", mode="min",
                                     sampler=make_sampler(name, 0))
        assert "lr" in s.suggest("a")


def test_a_config_names_exactly_the_samplers_the_searcher_builds():
    raw = load_yaml("digits.yaml")
    for name in SAMPLERS:
        raw["search"]["sampler"] = name
        assert parse_config(raw).search.sampler == name
        assert sampler_class(name).__name__.lower() == f"{name}sampler"
    raw["search"]["sampler"] = "nsgaiii"  # an Optuna sampler, but not one a config may name
    with pytest.raises(ConfigError, match="sampler"):
        parse_config(raw)
    with pytest.raises(ValueError, match="no sampler 'annealing'"):
        sampler_class("annealing")


def test_without_a_finished_key_a_clean_end_is_complete():
    """A trainable that never says whether it ran its budget (plain Tune functions) gets COMPLETE, not PRUNED;
    hps's trainable, which always says, keeps its rule."""
    s = searcher()
    s.suggest("plain")
    s.on_trial_result("plain", {"val_loss": 0.4, "training_iteration": 1})
    s.on_trial_complete("plain", {"val_loss": 0.3, "training_iteration": 2})
    s.suggest("errored")
    s.on_trial_complete("errored", {"val_loss": 0.3, "training_iteration": 1}, error=True)
    plain, errored = s._ot_study.get_trials(deepcopy=False)
    assert plain.state == TrialState.COMPLETE and plain.value == 0.3 and plain.intermediate_values == {1: 0.4}
    assert errored.state == TrialState.FAIL


def test_multi_objective_tells_a_list_and_reports_nothing_intermediate():
    cfg = parse_config(load_yaml("digits.yaml"))
    s = PruningAwareOptunaSearch(space=define_by_run(cfg.space), metric=["val_loss", "val_accuracy"],
                                 mode=["min", "max"], sampler=make_sampler("random", 0))
    for trial_id, result in [("a", {"val_loss": 0.5, "val_accuracy": 0.9}),
                             ("b", {"val_loss": 0.4, "val_accuracy": 0.8, "finished": False}),
                             ("c", {"val_loss": float("nan"), "val_accuracy": 0.7})]:
        s.suggest(trial_id)
        s.on_trial_result(trial_id, {**result, "training_iteration": 1})
        s.on_trial_complete(trial_id, {**result, "training_iteration": 1})
    a, b, c = s._ot_study.get_trials(deepcopy=False)
    assert a.state == TrialState.COMPLETE and a.values == [0.5, 0.9] and a.intermediate_values == {}
    assert b.state == TrialState.PRUNED
    assert c.state == TrialState.FAIL


def test_a_trial_patience_stopped_is_told_as_pruned():
    s = searcher()
    s.suggest("patience")
    for epoch, loss in enumerate([0.9, 0.5, 0.6, 0.7], start=1):
        s.on_trial_result("patience", {"epoch": epoch, "val_loss": loss, "best_val_loss": 0.9 if epoch == 1 else 0.5,
                                       "finished": False, "training_iteration": epoch})
    s.on_trial_complete("patience", {
        "epoch": 4, "val_loss": 0.7, "best_val_loss": 0.5, "best_epoch": 2, "finished": False,
        "stopped_no_improvement": "no improvement of val_loss in 2 epochs (best at epoch 2)"})
    (trial,) = s._ot_study.get_trials(deepcopy=False)
    assert trial.state == TrialState.PRUNED  # like an ASHA stop: its intermediate values are what TPE learns from
    assert trial.intermediate_values == {1: 0.9, 2: 0.5, 3: 0.6, 4: 0.7}


def simulate(in_order: int | None, pick, n: int = 12, c: int = 2) -> list[dict]:
    """A search of ``n`` trials, ``c`` at a time, whose running trial ``pick(running)`` finishes next; each trial's
    loss is a fixed function of its parameters. Returns the configurations in the order they were asked."""
    cfg = parse_config(load_yaml("digits.yaml"))
    s = PruningAwareOptunaSearch(space=define_by_run(cfg.space), metric="val_loss", mode="min",
                                 sampler=optuna.samplers.TPESampler(seed=0, n_startup_trials=2),
                                 in_order=in_order, num_samples=n)
    configs, running = [], []
    while len(configs) < n or running:
        while len(configs) < n and len(running) < c:
            trial_id = f"t{len(configs)}"
            config = s.suggest(trial_id)
            if config is None:
                break
            configs.append(config)
            running.append((trial_id, config))
        trial_id, config = running.pop(pick(running))
        loss = abs(math.log10(config["lr"]) + 2.5) + config["dropout"]
        first = {"epoch": 1, "val_loss": loss + 0.5, "best_val_loss": loss + 0.5, "finished": False}
        s.on_trial_result(trial_id, first)
        s.on_trial_complete(trial_id, {"epoch": 2, "val_loss": loss, "best_val_loss": loss, "finished": True})
    states = [t.state for t in s._ot_study.get_trials(deepcopy=False)]
    assert states == [TrialState.COMPLETE] * n  # every trial told, the last ones included
    return configs


def test_told_in_order_the_sampler_sees_the_same_history_whatever_finishes_first():
    oldest_first, newest_first = (lambda running: 0), (lambda running: len(running) - 1)
    assert simulate(2, oldest_first) == simulate(2, newest_first)
    # The premise: told as they arrive, the same seed gives different trials when the finishing order differs.
    assert simulate(None, oldest_first) != simulate(None, newest_first)


def test_ordered_state_survives_save_and_restore(tmp_path):
    """Tune saves the searcher with the experiment state: held-back results and the asking order come back."""
    cfg = parse_config(load_yaml("digits.yaml"))
    s = PruningAwareOptunaSearch(space=define_by_run(cfg.space), metric="val_loss", mode="min",
                                 sampler=make_sampler("tpe", 0), in_order=2, num_samples=3)
    s.suggest("a"), s.suggest("b")
    assert s.suggest("c") is None  # a is not told yet
    s.on_trial_result("b", {"epoch": 1, "val_loss": 0.7, "finished": False})
    s.on_trial_complete("b", {"epoch": 1, "val_loss": 0.7, "best_val_loss": 0.7, "finished": True})
    s.save(str(tmp_path / "searcher.pkl"))
    restored = PruningAwareOptunaSearch()
    restored.restore(str(tmp_path / "searcher.pkl"))
    restored.on_trial_complete("a", {"epoch": 1, "val_loss": 0.9, "best_val_loss": 0.9, "finished": True})
    assert restored.suggest("c") is not None  # a is told; b waits for c to be asked, then is told
    a, b, c = restored._ot_study.get_trials(deepcopy=False)
    assert (a.state, b.state, c.state) == (TrialState.COMPLETE, TrialState.COMPLETE, TrialState.RUNNING)
    assert b.intermediate_values == {1: 0.7}
