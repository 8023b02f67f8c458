"""Ray Tune's own OptunaSearch test scenarios, run against stock ``OptunaSearch`` and against our subclass.

Source: ray-project/ray, ``python/ray/tune/tests/test_searchers.py`` at commit
03db491174021d48834b88a6f75a6260e7936fe5 (the OptunaSearch cases of ``InvalidValuesTest``,
``AddEvaluatedPointTest``, ``SaveRestoreCheckpointTest`` and ``MultiObjectiveTest``, and
``testOptunaReportTooOften``). The scenarios, objectives, seeds, sample counts and assertions are Ray's; the code is
written here (not copied) for Ray 2.60's ``tune.Tuner``/``tune.report`` API and this project's session-wide Ray
(``ray_session``) instead of Ray's deprecated ``tune.run``/``train.report`` and a Ray per test class. Every case
runs against both classes: whatever Ray promises of ``OptunaSearch``, ``PruningAwareOptunaSearch`` must keep.
"""

from __future__ import annotations

import copy
import logging
import math
import sys

import numpy as np
import pytest
from optuna.samplers import RandomSampler
from optuna.trial import TrialState
from ray import cloudpickle, tune
from ray.tune.search.optuna import OptunaSearch

from search.run.searcher import PruningAwareOptunaSearch

# pytest imports this file under a name Ray's workers cannot import: ship the objectives by value.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

CLASSES = [pytest.param(OptunaSearch, id="ray"), pytest.param(PruningAwareOptunaSearch, id="hps")]


def _invalid_objective(config):
    """Reports inf, -inf or NaN for large ``report`` values, a finite value otherwise (Ray's objective)."""
    x = config["report"]
    value = math.inf if x > 4 else -math.inf if x > 3 else math.nan if x > 2 else (float(x) or 0.1)
    tune.report({"_metric": value})


def _multi_objective(config):
    tune.report({"a": config["a"] * 100, "b": config["b"] * -100, "c": config["c"]})


def _dummy_objective(config):
    tune.report({"metric": config["report"]})


def _fit(tmp_path, fn, searcher, param_space, num_samples, metric=None, mode=None) -> tune.ResultGrid:
    return tune.Tuner(
        fn,
        param_space=param_space,
        # One trial at a time, in one reused actor: one worker process to start per fit, not two.
        tune_config=tune.TuneConfig(search_alg=searcher, metric=metric, mode=mode, num_samples=num_samples,
                                    reuse_actors=True, max_concurrent_trials=1),
        run_config=tune.RunConfig(storage_path=str(tmp_path), verbose=0),
    ).fit()


@pytest.mark.parametrize("cls", CLASSES)
def test_invalid_values(cls, ray_session, tmp_path, caplog):
    """InvalidValuesTest.testOptuna: NaN, inf and -inf results; constants of the space survive; the searcher
    pickles with the experiment state."""
    config = {"report": tune.uniform(0.0, 5.0), "list": [1, 2, 3], "num": 4}
    np.random.seed(1000)
    with caplog.at_level(logging.WARNING):
        results = _fit(tmp_path, _invalid_objective, cls(sampler=RandomSampler(seed=1234)), config, 8,
                       metric="_metric", mode="max")
    best = results.get_best_result().config
    assert best["report"] <= 2.0
    assert best["list"] in ([1, 2, 3], (1, 2, 3))
    assert best["num"] == 4
    assert "Can't pickle local object" not in caplog.text


@pytest.mark.parametrize("cls", CLASSES)
def test_report_after_complete_does_not_fail(cls):
    """testOptunaReportTooOften."""
    space = OptunaSearch.convert_search_space({"report": tune.uniform(0.0, 5.0), "list": [1, 2, 3], "num": 4})
    searcher = cls(sampler=RandomSampler(seed=1234), space=space, metric="metric", mode="max")
    searcher.suggest("trial_1")
    searcher.on_trial_result("trial_1", {"training_iteration": 1, "metric": 1})
    searcher.on_trial_complete("trial_1", {"training_iteration": 2, "metric": 1})
    searcher.on_trial_result("trial_1", {"training_iteration": 3, "metric": 1})
    searcher.on_trial_complete("trial_1", {"training_iteration": 4, "metric": 1})
    # Not Ray's assertion, but what its rule implies for a trainable without a `finished` key: COMPLETE.
    assert searcher._ot_study.trials[0].state == TrialState.COMPLETE


@pytest.mark.parametrize("cls", CLASSES)
def test_add_evaluated_point(cls, ray_session, tmp_path):
    """AddEvaluatedPointTest.testOptuna."""
    space = {"report": tune.uniform(0.0, 5.0)}
    point = {"report": 1.0}
    results = _fit(tmp_path, _dummy_objective, None, space, 4, metric="metric", mode="max")
    analysis = results._experiment_analysis  # noqa: SLF001 - what Ray's test passes (tune.run's return value)

    def count(s) -> int:
        return len(s._ot_study.trials)

    assert count(cls(space=space, metric="metric", mode="max", points_to_evaluate=[point],
                     evaluated_rewards=[1.0])) > 0
    searcher = cls(space=space, metric="metric", mode="max")
    assert count(searcher) == 0
    for n, (kwargs, state) in enumerate([({}, TrialState.COMPLETE), ({"error": True}, TrialState.FAIL),
                                         ({"pruned": True}, TrialState.PRUNED)], start=1):
        searcher.add_evaluated_point(point, 1.0, intermediate_values=[0.8, 0.9], **kwargs)
        assert count(searcher) == n and searcher._ot_study.trials[-1].state == state
    searcher.suggest("1")

    fresh = cls(space=space, metric="metric", mode="max")
    for source, expected in [(analysis, 4), (analysis.trials, 4), (analysis.trials[0], 1)]:
        copied = copy.deepcopy(fresh)
        copied.add_evaluated_trials(source, "metric")
        assert count(copied) == expected
        copied.suggest("1")

    def define_by_run(trial):
        return {"report": trial.suggest_float("report", 0.0, 5.0)}

    with pytest.raises(TypeError):
        cls(space=define_by_run, metric="metric", mode="max").add_evaluated_point(point, 1.0)


@pytest.mark.parametrize("cls", CLASSES)
def test_save_restore(cls, tmp_path):
    """SaveRestoreCheckpointTest.testOptuna: a trial suggested before saving is still tracked after restoring."""
    path = str(tmp_path / "checkpoint.pkl")
    config = {"a": tune.uniform(0.0, 5.0)}

    def report(searcher, trial_id):
        result = {"training_iteration": 1, "metric": 1, "config/a": 1.0, "time_total_s": 1}
        searcher.on_trial_result(trial_id, result)
        searcher.on_trial_complete(trial_id, result)

    searcher = cls(space=config, metric="metric", mode="max")
    searcher.set_search_properties(metric="metric", mode="max", config=config)
    for trial_id in ("1", "2", "not_completed"):
        searcher.suggest(trial_id)
    report(searcher, "1")
    searcher.save(path)

    restored = cls()
    restored.restore(path)  # no set_search_properties needed
    report(restored, "2")
    restored.suggest("3")
    report(restored, "3")
    assert "not_completed" in restored._ot_trials


@pytest.mark.parametrize("cls", CLASSES)
def test_multi_objective(cls, ray_session, tmp_path):
    """MultiObjectiveTest.testOptuna: metric and mode are lists; the study gets one value per metric."""
    config = {"a": tune.uniform(0, 1), "b": tune.uniform(0, 1), "c": tune.uniform(0, 1)}
    np.random.seed(1000)
    searcher = cls(sampler=RandomSampler(seed=1234), metric=["a", "b", "c"], mode=["max", "min", "max"])
    results = _fit(tmp_path, _multi_objective, searcher, config, 16)
    assert results.get_best_result("a", "max").config["a"] >= 0.8
    assert results.get_best_result("b", "min").config["b"] >= 0.8
    assert results.get_best_result("c", "max").config["c"] >= 0.8
    # Beyond Ray's test: every Optuna trial was told (none left RUNNING), each with three values.
    study = searcher._ot_study
    assert len(study.trials) == 16
    assert all(t.state == TrialState.COMPLETE and len(t.values) == 3 for t in study.trials)
