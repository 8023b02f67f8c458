"""Packed trials on Ray: every trial stays a Tune trial, while compatible trials train together as one stacked
computation in a long-lived pack server.

Each trial runs :func:`packed_trial`, a thin function with a small logical CPU request: it hands its configuration
(and its checkpoint, when Tune restarts it) to one of the search's :class:`PackServer` actors, then asks for its
next epoch again and again and reports each epoch's metrics (and checkpoint) with ``tune.report`` as an unpacked
trial does. So Tune's scheduler (ASHA decides for each member at its rungs), the Optuna searcher, retries,
checkpoints, ``hps resume`` and the MLflow callback all see ordinary trials.

A server holds the CPU threads (and GPU) of one slot and trains the members it holds one epoch at a time: members
whose configurations share a :func:`trainables.packed.pack_key` form a pack trained as one batched computation;
a pack steps when every member in it has asked for its next epoch. Members join at epoch boundaries. A member
leaves when its trial ends (finished, diverged) or when Tune ends it (an ASHA stop, an error): the driver's
:class:`PackRelease` callback tells the server at once. A member that stops asking without its trial ending (a
lost worker) is evicted after ``EVICT_AFTER_S`` so it cannot hold its pack back for ever; if its trial is still
alive its next request fails and Tune retries it from its last checkpoint.
"""

from __future__ import annotations

import logging
import math
import socket
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field

import ray
import torch
from ray import tune

from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.device import trial_device
from trainables.packed import Pack, pack_key
from trainables.reporting import EpochBatcher
from trainables.splitting import TrialData
from trainables.train import Progress, Snapshot, Solo, TrainSettings

log = logging.getLogger(__name__)

# How long a pack waits for a member that stopped asking for epochs (its trial ended without the driver's
# callback reaching the server, or its worker was lost) before training the others without it.
EVICT_AFTER_S = 60.0
# A server answers many blocked `next_epoch` calls at once (one per member): Ray's threaded actor concurrency.
MAX_CALLS = 1000


@dataclass
class _Member:
    key: tuple
    slot: _Slot
    waiting_since: float | None = None
    result: tuple | None = None
    evicted: str | None = None


@dataclass
class _Slot:
    """One pack and the ids of its members."""

    key: tuple
    pack: Pack | Solo
    ids: set[str] = field(default_factory=set)


class PackServer:
    """A Ray actor (threaded) that trains the members it holds, pack by pack, one epoch per request."""

    def __init__(self, data: TrialData, settings: TrainSettings, pack_size: int) -> None:
        torch.set_num_threads(max(1, settings.num_threads))
        self.device = trial_device(ray.get_gpu_ids())
        self.data, self.pack_size = data, pack_size
        self.settings = TrainSettings(**{**settings.__dict__, "device": self.device})
        self.members: dict[str, _Member] = {}
        self.slots: list[_Slot] = []
        self.changes: list[tuple] = []  # joins and leaves, applied by the training thread between steps
        self.cond = threading.Condition()
        self.placement = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
                          "device": str(self.device)}
        threading.Thread(target=self._train_forever, name="pack-trainer", daemon=True).start()

    # ---- called by trials and the driver ----
    def load(self, params: dict) -> tuple[int, int]:
        """How well a configuration fits here: (0 if a pack of its kind has room else 1, members held)."""
        key = pack_key(params, self.data, self.device)
        with self.cond:
            room = key is not None and any(s.key == key and len(s.ids) < self.pack_size for s in self.slots)
            return (0 if room else 1, len(self.members) + len(self.changes))

    def join(self, member_id: str, params: dict, resume: dict | None) -> dict | None:
        """Add a member (a retried trial replaces its earlier self); returns where it trains, or None when it has no
        epoch left to train. A configuration the server cannot hold raises here, failing its trial."""
        outcome: dict = {}
        done = threading.Event()
        with self.cond:
            self.changes.append(("join", member_id, params, resume, (done, outcome)))
            self.cond.notify_all()
        done.wait()
        if "error" in outcome:
            raise outcome["error"]
        return self.placement if outcome["trains"] else None

    def leave(self, member_id: str) -> None:
        """Drop a member whose trial ended; unknown ids are ignored (the trial was held by another server)."""
        with self.cond:
            self.changes.append(("leave", member_id))
            self.cond.notify_all()

    def next_epoch(self, member_id: str) -> tuple[dict, Snapshot | None]:
        """Block until ``member_id``'s next epoch is trained; its metrics and, when a checkpoint is due, snapshot."""
        with self.cond:
            member = self.members.get(member_id)
            if member is None:
                raise RuntimeError(f"trial {member_id} holds no place in this pack server")
            member.waiting_since = time.monotonic()
            self.cond.notify_all()
            while member.result is None and member.evicted is None:
                self.cond.wait()
            if member.result is None:
                raise RuntimeError(member.evicted)
            result, member.result = member.result, None
            return result

    # ---- the training thread ----
    def _train_forever(self) -> None:
        while True:
            with self.cond:
                self._apply_changes()
                ready = [s for s in self.slots if s.ids and all(self.members[i].waiting_since for i in s.ids)]
                if not ready:
                    self._evict_stragglers()
                    self.cond.wait(timeout=1.0)
                    continue
            for slot in ready:
                self._step(slot)

    def _step(self, slot: _Slot) -> None:
        try:
            results = slot.pack.step()
        except Exception as exc:  # noqa: BLE001 - the pack's trials fail with the reason; Tune retries them
            log.exception("pack step failed")
            with self.cond:
                for member_id in list(slot.ids):
                    self._remove(member_id, f"its pack failed: {type(exc).__name__}: {exc}")
                self.cond.notify_all()
            return
        with self.cond:
            for member_id, (metrics, snapshot) in results.items():
                metrics["pack_members"] = len(results)  # recorded per epoch: how many trials trained together
                member = self.members[member_id]
                member.result, member.waiting_since = (metrics, snapshot), None
                if Progress.ends(metrics):  # the pack has let it go already
                    self._remove(member_id, None)
            self.cond.notify_all()

    def _apply_changes(self) -> None:
        changes, self.changes = self.changes, []
        for change in changes:
            if change[0] == "leave":
                self._remove(change[1], None)
                continue
            _, member_id, params, resume, (done, outcome) = change
            try:
                self._remove(member_id, None)
                outcome["trains"] = self._place(member_id, params, resume)
            except Exception as exc:  # noqa: BLE001 - handed to the joining trial, which fails with it
                outcome["error"] = exc
            finally:
                done.set()

    def _place(self, member_id: str, params: dict, resume: dict | None) -> bool:
        key = pack_key(params, self.data, self.device)
        slot = None
        if key is not None:
            slot = next((s for s in self.slots if s.key == key and len(s.ids) < self.pack_size), None)
        if slot is None:  # a new pack; a configuration that does not pack trains alone beside the packs
            s = self.settings
            slot = _Slot(key or ("alone", member_id),
                         Pack(self.device, s.amp, s.gpu_share, s.stream) if key is not None else Solo())
        if not slot.pack.add(member_id, params, self.data, self.settings, resume):
            return False
        if slot not in self.slots:
            self.slots.append(slot)
        slot.ids.add(member_id)
        self.members[member_id] = _Member(slot.key, slot)
        return True

    def _remove(self, member_id: str, reason: str | None) -> None:
        member = self.members.pop(member_id, None)
        if member is None:
            return
        member.evicted = reason or "left its pack"  # wakes a request still waiting (a replaced, retried trial)
        member.slot.ids.discard(member_id)
        member.slot.pack.remove(member_id)
        if not member.slot.ids:
            self.slots.remove(member.slot)

    def _evict_stragglers(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots):
            waits = [self.members[i].waiting_since for i in slot.ids if self.members[i].waiting_since]
            if waits and now - min(waits) > EVICT_AFTER_S:
                for member_id in [i for i in slot.ids if not self.members[i].waiting_since]:
                    log.warning("trial %s stopped asking for epochs; its pack goes on without it", member_id)
                    self._remove(member_id, "evicted from its pack after not asking for an epoch")
        self.cond.notify_all()


def server_names(search_root: str, slots: int) -> tuple[str, ...]:
    """Actor names of a search's pack servers: unique to its experiment folder and stable across `hps resume` (the
    release callback is restored with the Tuner and finds the new servers by name)."""
    token = uuid.uuid5(uuid.NAMESPACE_URL, search_root).hex[:12]
    return tuple(f"hps-pack-{token}-{i}" for i in range(slots))


def pack_slots(max_concurrent: int, pack: int) -> int:
    """Pack servers a search starts: enough to hold ``max_concurrent`` trials ``pack`` at a time."""
    return math.ceil(max_concurrent / pack)


class PackServers:
    """The pack servers of one search, started before Tune and killed after it (a context manager). Each holds
    the GPU share a trial would (Ray's logical CPUs stay with the trials, ``cpus_per_trial / pack`` each, so the
    slot's CPUs are accounted once); it trains with ``settings.num_threads`` threads."""

    def __init__(self, names: tuple[str, ...], data, settings: TrainSettings, pack_size: int, gpus: float) -> None:
        self.names, self.handles = names, []
        if isinstance(data, list | tuple):  # one validation split (packing refuses folds)
            (data,) = data
        actor = ray.remote(PackServer)
        data_ref = ray.put(data)
        for name in names:
            self.handles.append(actor.options(name=name, num_cpus=0, num_gpus=gpus, max_concurrency=MAX_CALLS,
                                              scheduling_strategy="SPREAD").remote(data_ref, settings, pack_size))

    def __enter__(self) -> tuple[str, ...]:
        return self.names

    def __exit__(self, *exc) -> None:
        for handle in self.handles:
            ray.kill(handle)


def packed_trainable(settings: TrainSettings, servers: tuple[str, ...], cpus_per_trial: float, pack: int):
    """The Tune trainable of a packed search: :func:`packed_trial` with its settings and its share of a slot's CPUs."""
    return tune.with_resources(tune.with_parameters(packed_trial, settings=settings, servers=servers),
                               {"cpu": cpus_per_trial / pack, "gpu": 0})


def packed_trial(config: dict, settings: TrainSettings, servers: tuple[str, ...]) -> None:
    """Ray Tune entry point of a packed trial: join the best-fitting pack server, then report its epochs."""
    trial_id = tune.get_context().get_trial_id()
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(directory)
    handles = [ray.get_actor(name) for name in servers]
    loads = ray.get([h.load.remote(config) for h in handles])
    server = handles[min(range(len(handles)), key=loads.__getitem__)]
    placement = ray.get(server.join.remote(trial_id, config, resume))
    if placement is None:
        return  # restored after its last epoch: nothing left to train

    def send(metrics: dict, snapshot: Snapshot | None) -> None:
        if snapshot is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(directory, snapshot.state, snapshot.description)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    report = EpochBatcher(send, settings.report_interval_s, settings.decision_epochs)
    while True:
        metrics, snapshot = ray.get(server.next_epoch.remote(trial_id))
        report({**metrics, **placement}, snapshot)
        if Progress.ends(metrics):
            return


class PackRelease(tune.Callback):
    """Tells the pack servers that a trial ended (ASHA stopped it, it failed), so its pack stops waiting for it."""

    def __init__(self, servers: tuple[str, ...]) -> None:
        self.servers = servers

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._release(trial.trial_id)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._release(trial.trial_id)

    def _release(self, trial_id: str) -> None:
        for name in self.servers:
            try:
                ray.get_actor(name).leave.remote(trial_id)
            except ValueError:  # no such actor (the search is ending): nothing holds the trial
                pass
