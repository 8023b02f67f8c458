"""Ray wiring without Ray running: ASHA's rungs and scheduler from the config, ASHA's bookkeeping carried across a
restore by ``SchedulerState``, driven with recorded trial results (no training, no actors), and Ray's shutdown
with no cycle collection running meanwhile."""

from __future__ import annotations

import gc
import logging
import math
import os
import pickle
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, TrialScheduler

from search.config.schema import MIN_REDUCTION_FACTOR, parse_config
from search.run import ray_setup
from search.run.ray_setup import SchedulerState, asha_rungs, init_ray, scheduler, shutdown_ray
from tests.conftest import load_yaml, shrink

# Recorded best_val_loss of three trials at epochs 1 and 2 (ASHA with grace period 1 and reduction factor 2 decides
# at epochs 1, 2 and 4).
RECORDED = {"a": [0.30, 0.20], "b": [0.90, 0.85], "c": [0.50, 0.40]}


def config(**scheduler_options):
    raw = shrink(load_yaml("digits.yaml"), "ray-setup", "sqlite:///unused.db", max_epochs=8)
    raw["scheduler"].update({"grace_period": 1, "reduction_factor": 2, **scheduler_options})
    return parse_config(raw)


def fresh_asha():
    """The scheduler as Tune builds it (and as a restore unpickles it: from the search's start)."""
    asha = scheduler(config())
    asha.set_search_properties("best_val_loss", "min")
    return asha


def replay(asha, results: dict[str, list[float]]) -> dict[tuple[str, int], str]:
    """Feed recorded results to the scheduler as Tune would; returns its decision on each result it saw."""
    decisions = {}
    for trial_id, values in results.items():
        trial = SimpleNamespace(trial_id=trial_id)  # ASHA reads nothing else of a trial
        if trial_id not in asha._trial_info:  # noqa: SLF001
            asha.on_trial_add(None, trial)
        for epoch, value in enumerate(values, start=1):
            decisions[trial_id, epoch] = asha.on_trial_result(None, trial, {"epoch": epoch, "best_val_loss": value})
            if decisions[trial_id, epoch] == TrialScheduler.STOP:
                break  # a stopped trial reports nothing more
    return decisions


def test_asha_decides_at_grace_period_times_powers_of_the_reduction_factor():
    assert asha_rungs(config()) == {1, 2, 4}
    assert asha_rungs(config(grace_period=3, reduction_factor=3)) == {3}
    asha = scheduler(config())
    assert isinstance(asha, ASHAScheduler) and asha._time_attr == "epoch" and asha._max_t == 8  # noqa: SLF001
    assert isinstance(scheduler(config(type="fifo")), FIFOScheduler)


@pytest.mark.parametrize("grace,factor,max_epochs", [(25, 1.6, 100), (25, 2.6, 200), (25, 3.2, 300), (4, 3, 40),
                                                     (1, 1.1, 500), (3, 2.5, 97), (2, 2, 8)])
def test_the_rungs_are_the_epochs_at_which_rays_own_asha_decides(grace, factor, max_epochs):
    # Checkpoints and pack holds happen at asha_rungs; Ray decides at the first report >= each of its milestones.
    ours = asha_rungs(config(grace_period=grace, reduction_factor=factor, max_epochs=max_epochs))
    asha = ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace, reduction_factor=factor)
    milestones = [milestone for milestone, _ in asha._brackets[0]._rungs]  # noqa: SLF001 - Ray's own numbers
    assert ours == {math.ceil(m) for m in milestones if m < max_epochs}
    if (grace, factor) == (25, 1.6):
        assert 65 in ours and 64 not in ours  # 25 * 1.6**2 = 64.00000000000001


@settings(max_examples=200, deadline=None)
@given(grace=st.integers(1, 60), factor=st.floats(MIN_REDUCTION_FACTOR, 6.0), extra=st.integers(0, 2000))
def test_every_epoch_rays_asha_decides_at_is_a_rung(grace, factor, extra):
    # Whatever the config accepts: each epoch at which Ray's ASHA decides (the first report >= a milestone below
    # max_t) is one asha_rungs names, so the trial is held and checkpointed there; and no rung is one it skips.
    max_epochs = grace + extra
    ours = asha_rungs(config(grace_period=grace, reduction_factor=factor, max_epochs=max_epochs))
    asha = ASHAScheduler(time_attr="epoch", max_t=max_epochs, grace_period=grace, reduction_factor=factor)
    decided = {math.ceil(m) for m, _ in asha._brackets[0]._rungs if m < max_epochs}  # noqa: SLF001
    assert ours == decided


def test_recorded_results_stop_the_trials_below_the_rung_cutoff():
    decisions = replay(fresh_asha(), RECORDED)
    assert decisions["a", 1] == decisions["a", 2] == TrialScheduler.CONTINUE  # the first at each rung
    assert decisions["b", 1] == TrialScheduler.STOP  # worse than the median of a rung holding only a
    assert decisions["c", 1] == TrialScheduler.CONTINUE and decisions["c", 2] == TrialScheduler.STOP


def test_a_restored_scheduler_keeps_the_rung_decisions_made_before_the_crash():
    before = fresh_asha()
    replay(before, RECORDED)
    # Tune saves callbacks' state with each experiment snapshot (pickled), and restores the scheduler from the
    # pickle taken when the search started.
    saved = pickle.loads(pickle.dumps(SchedulerState(before).get_state()))
    restored = fresh_asha()
    SchedulerState(restored).set_state(saved)
    late = {"d": [0.95]}  # a new trial, worse than every recorded one at the first rung
    assert replay(restored, late)["d", 1] == TrialScheduler.STOP
    assert replay(fresh_asha(), late)["d", 1] == TrialScheduler.CONTINUE  # without the state: rung decisions lost
    # Trials running at the crash continue in the brackets they were in.
    assert replay(restored, {"a": [0.3, 0.2, 0.1]})["a", 3] == TrialScheduler.CONTINUE


class _Cycle:
    """Garbage only the cycle collector frees; records whether Ray was still up when it was freed."""

    def __init__(self, freed: list) -> None:
        self.me, self.freed = self, freed

    def __del__(self) -> None:
        self.freed.append("while Ray was up")


def test_ray_shuts_down_with_garbage_collected_before_and_no_collection_during_it(monkeypatch):
    # Freeing an ObjectRef from another thread while ray.shutdown() tears the core worker down ends the process.
    freed, seen = [], []
    _Cycle(freed)
    monkeypatch.setattr(ray_setup.ray, "shutdown", lambda: seen.append(gc.isenabled()))
    was_enabled = gc.isenabled()
    shutdown_ray()
    assert freed == ["while Ray was up"]  # collected before the shutdown began
    assert seen == [False]  # nothing collected, in any thread, while it ran
    assert gc.isenabled() == was_enabled


def test_rays_token_auth_notice_is_dropped_and_its_other_auth_warnings_kept(monkeypatch, caplog):
    from ray._private.authentication import authentication_token_setup as ray_auth

    monkeypatch.setattr(os, "environ", dict(os.environ))  # what init_ray sets stays in this test
    monkeypatch.setattr("ray.is_initialized", lambda: True)  # stops before starting Ray: only the settings matter
    init_ray(None)
    init_ray(None)
    assert len(logging.getLogger(ray_setup.AUTH_ENABLED_LOGGER).filters) == 1
    with caplog.at_level(logging.WARNING, logger=ray_setup.AUTH_ENABLED_LOGGER):
        ray_auth._warn_token_auth_enabled()  # Ray's own notice at every new local cluster
        ray_auth._warn_token_auth_disabled()
    said = [record.getMessage() for record in caplog.records]
    assert len(said) == 1 and said[0].startswith("Token authentication is disabled"), said
