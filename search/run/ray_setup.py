"""Ray Tune wiring of a validated config: Ray itself, the trainable with its data and resources, the Optuna
searcher, the ASHA/FIFO scheduler (with its state saved alongside the experiment's), and the Tuner, new or
restored."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os

import numpy as np
import ray
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from search.config.network import network_code
from search.config.pareto import searcher_objectives
from search.config.schema import HpsConfig
from search.config.space import define_by_run
from search.records.log_filters import DropPrefix
from search.run.packing.servers import (
    PackRelease,
    PackServers,
    check_servers_fit,
    pack_slots,
    packed_trainable,
    server_names,
)
from search.run.searcher import PruningAwareOptunaSearch, make_sampler
from search.run.warmstart import WarmStart
from trainables.ray_adapter import tune_trainable
from trainables.settings import TrainSettings


def init_ray(address: str | None) -> bool:
    """Start (or join, with ``address``) Ray once per process; an already initialized Ray is reused.
    Returns whether this call initialized it (and so may shut it down)."""
    # Tune warns on every forced experiment snapshot (one per kept-checkpoint rotation); on small trials that is
    # a warning per second which says nothing actionable to a user.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The legacy reporter honours verbose=0 fully; the new one still prints a config box and TensorBoard hints.
    # Progress comes from search.run.progress instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's default loggers add a CSV and a TensorBoard file per trial (and warn on every NaN); only the JSON one
    # is kept (see build_tuner): MLflow is this service's record.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Tune logs the whole traceback of every failed attempt of a trial; search.run.progress says it in one line, and the
    # text stays in the trial's folder and, once the trial has failed for good, on its MLflow run (error.txt).
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    # Tune's own "resume with Tuner.restore(...)" hint after Ctrl-C; hps prints its `hps resume` command instead.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    # Ray 2.60 turns token authentication on for a new local cluster and says so at every start, in the first lines
    # a user reads. Only that notice goes: Ray's warnings that authentication is off or failing stay.
    logging.getLogger(AUTH_ENABLED_LOGGER).addFilter(_AUTH_ENABLED_NOTICE_DROPPED)  # a no-op once added
    if ray.is_initialized():
        return False
    # Workers print nothing to the terminal; results and errors come back through Tune and MLflow.
    ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
    return True


AUTH_ENABLED_LOGGER = "ray._private.authentication.authentication_token_setup"
AUTH_ENABLED_NOTICE = "Token authentication is enabled for this Ray cluster."


_AUTH_ENABLED_NOTICE_DROPPED = DropPrefix(AUTH_ENABLED_NOTICE)


def shutdown_ray() -> None:
    """``ray.shutdown()`` while Python's cycle collector frees no Ray object, in any thread.

    Tune leaves copies of the trainable it unpickled (seen after a restore: their own parameter registry, holding
    ObjectRefs of the data) in reference cycles. Freed by a collection that another thread's allocations start
    while the core worker is being torn down, such an ObjectRef's release reaches the dying core worker and Ray
    ends the whole process ("The core worker has already been shutdown"): `hps resume`, drawing its review plots
    meanwhile, died after its search was done, without printing its result. Freed before the shutdown (collected
    here) or after it, a release is harmless.
    """
    gc.collect()
    collecting = gc.isenabled()
    gc.disable()
    try:
        ray.shutdown()
    finally:
        if collecting:
            gc.enable()


def trainable(cfg: HpsConfig, data, servers: tuple[str, ...] | None = None):
    """The shared trainable with the data in Ray's object store (once) and this search's settings and resources;
    with pack servers (``resources.pack`` > 1), the thin trial that trains in them."""
    settings = train_settings(cfg)
    if servers is not None:
        return packed_trainable(settings, servers, cfg.resources.cpus_per_trial, cfg.resources.pack)
    return tune.with_resources(
        tune.with_parameters(tune_trainable, data=data, settings=settings),
        {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial},
    )


def train_settings(cfg: HpsConfig) -> TrainSettings:
    """How every trial of ``cfg`` trains (as opposed to what: its hyperparameters)."""
    return TrainSettings(
        max_epochs=cfg.scheduler.max_epochs,
        metric=cfg.search.metric,
        seed=cfg.training_seed,
        checkpoint_every=cfg.training.checkpoint_every,
        amp=cfg.training.amp,
        compile=cfg.training.compile,
        report_interval_s=cfg.training.report_interval_s,
        num_threads=max(1, int(cfg.resources.cpus_per_trial)),
        gpu_share=cfg.resources.gpus_per_trial if 0 < cfg.resources.gpus_per_trial < 1 else 1.0,
        decision_epochs=asha_rungs(cfg) if cfg.scheduler.type == "asha" else frozenset(),
        patience=cfg.scheduler.patience,
        network=_network_dict(cfg),
    )


def _network_dict(cfg: HpsConfig) -> dict | None:
    """The user's network code every trial builds from (its text travels with the settings, through Ray's object
    store, to whichever node runs the trial); None for the built-in MLP."""
    code = network_code(cfg)
    return code.to_dict() if code is not None else None


def pack_servers(cfg: HpsConfig, data):
    """A context manager around the search's fit: its pack servers' names while they run (``resources.pack`` >
    1), else None."""
    if cfg.resources.pack == 1:
        return contextlib.nullcontext(None)
    slots = pack_slots(cfg.search.max_concurrent, cfg.resources.pack)
    check_servers_fit(slots, cfg.resources.cpus_per_trial, cfg.resources.gpus_per_trial, ray.cluster_resources())
    return PackServers(server_names(slots), data, train_settings(cfg), cfg.resources.pack,
                       cfg.resources.gpus_per_trial)


def asha_rungs(cfg: HpsConfig) -> frozenset[int]:
    """The epochs at which ASHA decides to stop or continue a trial: the first epoch at or after each of its
    milestones grace_period x reduction_factor^k below max_epochs.

    Computed with Ray's own arithmetic (``ray.tune.schedulers.async_hyperband._Bracket``): a milestone multiplied
    up step by step rounds differently (25 x 1.6 x 1.6 = 64.0, 25 x 1.6**2 = 64.00000000000001), and Ray, deciding at
    the first report >= its milestone, would then decide at epoch 65 while the trial had been held and checkpointed
    at 64."""
    grace, factor, max_t = cfg.scheduler.grace_period, float(cfg.scheduler.reduction_factor), cfg.scheduler.max_epochs
    count = int(np.log(max_t / grace) / np.log(factor) + 1)  # Ray's MAX_RUNGS for its one bracket
    milestones = [grace * factor**k for k in range(count)]
    return frozenset(math.ceil(m) for m in milestones if m < max_t)


class SchedulerState(tune.Callback):
    """Saves the scheduler's bookkeeping (ASHA's rungs) with the experiment state and restores it on resume.

    Tune restores a scheduler from the pickle taken when the search *started*, so ASHA forgets every rung
    decision made before a crash (ray-project/ray#30838). Callbacks' state, however, is saved with each
    experiment snapshot; this one carries the scheduler's. It and the scheduler are unpickled together from
    the same tuner pickle, so after a restore ``self.scheduler`` is the scheduler Tune uses.
    """

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return dict(self.scheduler.__dict__)

    def set_state(self, state: dict) -> None:
        self.scheduler.__dict__.update(state)


def scheduler(cfg: HpsConfig):
    """ASHA stopping trials at :func:`asha_rungs` by epoch, or FIFO (every trial runs to the end)."""
    if cfg.scheduler.type != "asha":
        return FIFOScheduler()
    return ASHAScheduler(
        time_attr="epoch",
        max_t=cfg.scheduler.max_epochs,
        grace_period=cfg.scheduler.grace_period,
        reduction_factor=cfg.scheduler.reduction_factor,
    )


def searcher(cfg: HpsConfig, warm: WarmStart | None = None) -> ConcurrencyLimiter:
    """Optuna's sampler over the config's space, at most ``search.max_concurrent`` trials at a time; a warm start's
    earlier trials told to it and its top-k asked first."""
    metric, mode = searcher_objectives(cfg)  # lists for a two-objective search
    return ConcurrencyLimiter(
        # With a define-by-run space OptunaSearch ignores the metric/mode Tune passes on: give them here too.
        PruningAwareOptunaSearch(
            space=define_by_run(cfg.space),
            metric=metric,
            mode=mode,
            points_to_evaluate=warm.points if warm and warm.points else None,  # asked first, best first
            prior_trials=warm.trials if warm else None,
            sampler=make_sampler(cfg.search.sampler, cfg.search.seed),
            in_order=cfg.search.max_concurrent if cfg.search.tell_in_order else None,
            num_samples=cfg.search.num_samples,
        ),
        max_concurrent=cfg.search.max_concurrent,
    )


def build_tuner(cfg: HpsConfig, data, storage_path: str, callbacks: list, warm: WarmStart | None = None,
                servers: tuple[str, ...] | None = None) -> tune.Tuner:
    """A new Tuner for search ``cfg`` writing its state to ``storage_path``, reporting to ``callbacks``; its trials
    train in ``servers`` when the search packs them."""
    chosen = scheduler(cfg)
    if servers is not None:  # restored with the Tuner on resume: it finds that run's servers by their names
        callbacks = [*callbacks, PackRelease(servers)]
    if isinstance(chosen, ASHAScheduler):
        callbacks = [*callbacks, SchedulerState(chosen)]
    return tune.Tuner(
        trainable(cfg, data, servers),
        tune_config=tune.TuneConfig(
            # What ASHA compares at its rungs (the searcher has its own metric, above): each trial's best value so
            # far, the quantity the leaderboard finally ranks by. The epoch's own value would stop a trial for
            # one noisy epoch that its best epoch outranks.
            metric=f"best_{cfg.search.metric}",
            mode=cfg.search.mode,
            search_alg=searcher(cfg, warm),
            scheduler=chosen,
            num_samples=cfg.search.num_samples,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=storage_path,
            # result.json per trial: the on-disk record the trial logger's reconcile repairs MLflow from after a
            # crash.
            callbacks=[*callbacks, JsonLoggerCallback()],
            # No num_to_keep: with it Tune forces an experiment snapshot at every rotation (~10% of the wall time
            # of small trials here). The tracking callback prunes ended trials' checkpoints instead.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
            verbose=0,
        ),
    )


def restore_tuner(cfg: HpsConfig, data, path: str, servers: tuple[str, ...] | None = None) -> tune.Tuner:
    """The Tuner of the search whose experiment state is at ``path``: errored trials stay errored (retries already
    happened); unfinished ones continue from their checkpoints (in ``servers`` when the search packs them)."""
    tuner = tune.Tuner.restore(path, trainable=trainable(cfg, data, servers), resume_unfinished=True,
                               resume_errored=False)
    for callback in tuner_callbacks(tuner):
        if isinstance(callback, PackRelease) and servers is not None:
            callback.serve(servers)  # it was pickled naming the servers of the run that was stopped
    return tuner


def tuner_callbacks(tuner: tune.Tuner) -> list:
    """The callbacks a Tuner will call, as built or as unpickled by :func:`restore_tuner`.

    A restored Tuner's callbacks (and their state) come from its pickle; Tune has no public getter for them, so
    they are read from the Tuner's internal run config here, and only here.
    """
    return list(tuner._local_tuner.get_run_config().callbacks or [])  # noqa: SLF001
