"""Packed trials on Ray: every trial stays a Tune trial, while compatible trials train together as one stacked
computation in a long-lived pack server.

Each trial runs :func:`search.run.packing.trial.packed_trial`, a thin function with a small logical CPU request: it
hands its configuration (and its checkpoint, when Tune restarts it) to one of the search's pack servers
(:class:`search.run.packing.server.PackServer` actors), then collects the epochs trained for it and reports each one's
metrics (and checkpoints) with ``tune.report`` as an unpacked trial does. So Tune's scheduler (ASHA decides for
each member at its rungs), the Optuna searcher, retries, checkpoints, ``hps resume`` and the MLflow callback all see
ordinary trials.

A server holds the CPU threads (and GPU share) of one slot and trains the members it holds, one epoch per step:
members whose configurations share a :func:`trainables.packed.pack_key` form a pack trained as one batched
computation; a configuration that does not pack trains alone beside them (:class:`trainables.train.Solo`).
Members join and leave between steps. The server trains ahead of what the trial has reported, except at the
scheduler's decision epochs (ASHA's rungs): there a member waits until its trial has reported that epoch and asked
for more, since Tune may stop it. A pack steps when none of its members waits. A member leaves when its trial ends
(finished, diverged, out of patience) or when Tune ends it (an ASHA stop, an error: the driver's
:class:`PackRelease` callback tells the server at once). A member whose trial stops asking without ending (a lost
worker) is evicted after ``EVICT_AFTER_S`` so it cannot hold its pack back for ever; if that trial is still alive
its next request fails and Tune retries it from its last checkpoint.
"""

from __future__ import annotations

import math
import uuid

import ray
from ray import tune

from search.errors import ClusterTooSmall, SearchFailed
from search.run.packing.trial import packed_trial
from trainables.settings import TrainSettings

# Restarts of a dead pack server before its trials' retries fail for good (each retry has its own limit too).
SERVER_RESTARTS = 100
# A server answers many blocked `next_epochs` calls at once (one per member): Ray's threaded actor concurrency.
MAX_CALLS = 1000
# How long the servers may take to start (a worker process, PyTorch's import, the data) before the search gives up.
SERVER_START_S = 180.0


def server_names(slots: int) -> tuple[str, ...]:
    """Actor names for one run of a search's pack servers: new for every run (`hps resume` starts its own, while
    the servers of a killed driver may still be on their way out), so they never collide in a shared cluster."""
    token = uuid.uuid4().hex[:12]
    return tuple(f"hps-pack-{token}-{i}" for i in range(slots))


def pack_slots(max_concurrent: int, pack: int) -> int:
    """Pack servers a search starts: enough to hold ``max_concurrent`` trials ``pack`` at a time."""
    return math.ceil(max_concurrent / pack)


class PackServers:
    """The pack servers of one search, started before Tune and killed after it (a context manager giving their
    names). Each holds the GPU share a trial would; Ray's logical CPUs stay with the trials (``cpus_per_trial /
    pack`` each), so a slot's CPUs are accounted once. A server trains with ``settings.num_threads`` threads.

    Servers start only where they fit: the cluster's CPUs and GPUs are counted first (:func:`check_servers_fit`),
    and every server must be up within SERVER_START_S before any trial starts (trials then find their server
    waiting, instead of 16 trial processes and the servers all starting at once on a small machine)."""

    def __init__(self, names: tuple[str, ...], data, settings: TrainSettings, pack_size: int, gpus: float) -> None:
        if isinstance(data, list | tuple):  # one validation split (packing refuses folds)
            (data,) = data
        from search.run.packing.server import PackServer  # PyTorch loads in the servers' workers, not in the driver

        self.names, self.handles = names, []
        # Held until the servers are killed: Ray does not keep a restartable actor's constructor arguments alive
        # (ray-project/ray#53727). Released after the first start, the data was gone when Ray started a killed server
        # again, so the restart failed and every trial it held failed with it.
        self.data_ref = ray.put(data)
        for name in names:
            # A server that dies (its process killed, OOM) is started again by Ray with the same name; the trials it
            # held fail their next request and Tune retries them from their checkpoints, into the new server.
            options = {"name": name, "num_cpus": 0, "num_gpus": gpus, "max_concurrency": MAX_CALLS,
                       "scheduling_strategy": "SPREAD", "max_restarts": SERVER_RESTARTS}
            self.handles.append(ray.remote(PackServer).options(**options).remote(self.data_ref, settings, pack_size))
        self._wait_until_up()

    def _wait_until_up(self) -> None:
        pending = [handle.ready.remote() for handle in self.handles]
        up, late = ray.wait(pending, num_returns=len(pending), timeout=SERVER_START_S)
        try:
            ray.get(up)
        except ray.exceptions.RayError as exc:
            self.__exit__()
            raise SearchFailed(f"a pack server could not start: {_last_line(exc)}") from None
        if late:
            self.__exit__()
            raise SearchFailed(f"{len(late)} of {len(pending)} pack servers did not start within {SERVER_START_S:.0f} "
                               "s (does the cluster have the resources they ask for?)")

    def __enter__(self) -> tuple[str, ...]:
        return self.names

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            ray.kill(handle)
        self.data_ref = None


def check_servers_fit(slots: int, cpus_per_trial: float, gpus_per_trial: float, cluster: dict) -> None:
    """Refuse, in one line, pack servers the cluster cannot hold: ``slots`` servers each train with
    ``cpus_per_trial`` threads and hold ``gpus_per_trial`` GPU. ``cluster`` is Ray's ``cluster_resources()``."""
    fits = []
    for name, need, unit in (("CPU", cpus_per_trial, "cpus_per_trial"), ("GPU", gpus_per_trial, "gpus_per_trial")):
        have = float(cluster.get(name, 0.0))
        if need > 0 and slots * need > have + 1e-9:
            fits.append(f"{slots} x {unit} {need:g} = {slots * need:g} {name}s, the cluster has {have:g}")
    if fits:
        raise ClusterTooSmall(f"resources: {slots} pack servers (search.max_concurrent / resources.pack) need "
                              f"{'; '.join(fits)}: lower search.max_concurrent or raise resources.pack")


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def packed_trainable(settings: TrainSettings, servers: tuple[str, ...], cpus_per_trial: float, pack: int):
    """The Tune trainable of a packed search: the thin :func:`packed_trial`, with its share of a slot's CPUs."""
    trial = tune.with_parameters(packed_trial, report_interval_s=settings.report_interval_s,
                                 decision_epochs=settings.decision_epochs, servers=servers)
    return tune.with_resources(trial, {"cpu": cpus_per_trial / pack, "gpu": 0})


class PackRelease(tune.Callback):
    """Tells the pack servers that a trial ended (ASHA stopped it, it failed), so its pack stops waiting for it.

    Restored with a Tuner (`hps resume`), it still names the servers of the run that pickled it: :meth:`serve`
    hands it the new run's servers."""

    def __init__(self, servers: tuple[str, ...]) -> None:
        self.servers = servers

    def serve(self, servers: tuple[str, ...]) -> None:
        """Release trials from ``servers`` from now on."""
        self.servers = servers

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trial.trial_id)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        # A trial Tune retries fails without on_trial_error: its old place must be freed, or its ghost would train
        # on (and hold its pack at rungs) beside the retry.
        self._release(trial.trial_id)

    def _release(self, trial_id: str) -> None:
        for name in self.servers:
            try:
                ray.get_actor(name).leave.remote(trial_id)
            except ValueError:  # no such actor (the search is ending): nothing holds the trial
                pass
