"""The pack server: a Ray actor that trains the members it holds, pack by pack, one epoch per step (how packed
trials fit into a search: :mod:`search.packing`). It runs in its own worker; the driver never imports it."""

from __future__ import annotations

import logging
import os
import socket
import tempfile
import threading
import time
from dataclasses import dataclass, field

import ray
import torch

from search.packed_trial import read_files, write_files
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.device import trial_device
from trainables.packed import Pack, pack_key
from trainables.reporting import is_last_report
from trainables.settings import TrainSettings
from trainables.trial_data import TrialData
from trainables.train import Snapshot, Solo

log = logging.getLogger(__name__)

# How long a pack waits for a member that stopped asking for epochs (its trial ended without the driver's
# callback reaching the server, or its worker was lost) before training the others without it.
EVICT_AFTER_S = 60.0
# Epochs a member may be trained ahead of what its trial has collected: bounds the memory its queue holds.
MAX_AHEAD = 64
# How long trained epochs may wait to be collected together (the trial's report interval is longer anyway).
COLLECT_S = 0.5
@dataclass
class _Slot:
    """One pack (or one trial training alone) and the ids of its members."""

    key: tuple
    pack: Pack | Solo
    ids: set[str] = field(default_factory=set)


@dataclass
class _Member:
    slot: _Slot
    decision_epochs: frozenset[int]
    queue: list[tuple[dict, dict | None]] = field(default_factory=list)  # trained, not yet collected
    held: bool = False  # trained up to a decision epoch (or MAX_AHEAD): waits until its trial asks again
    held_since: float = 0.0
    queued_at: float = 0.0  # when the oldest epoch in the queue was trained
    gone: str | None = None  # why it left while its trial may still ask

    def add(self, metrics: dict, files: dict | None) -> None:
        if not self.queue:
            self.queued_at = time.monotonic()
        self.queue.append((metrics, files))
        if metrics.get("epoch") in self.decision_epochs or len(self.queue) >= MAX_AHEAD:
            self.held, self.held_since = True, time.monotonic()


class PackServer:
    """A Ray actor (threaded) that trains the members it holds, pack by pack, one epoch per step."""

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

    # ---- called by trials and the driver ----------------------------------------------------------------------

    def process_id(self) -> int:
        """The server's process (what an operator, or a test, signals)."""
        return os.getpid()

    def load(self, params: dict) -> tuple[int, int]:
        """How well a configuration fits here: (0 if a pack of its kind has room else 1, members held)."""
        key = pack_key(params, self.data, self.device)
        with self.cond:
            room = key is not None and any(s.key == key and len(s.ids) < self.pack_size for s in self.slots)
            return (0 if room else 1, len(self.members) + len(self.changes))

    def join(self, member_id: str, params: dict, resume: dict[str, bytes] | None) -> dict | None:
        """Add a member (a retried trial replaces its earlier self), from its checkpoint's files if any. Returns
        where it trains, or None when it has no epoch left. A configuration that cannot train here raises."""
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

    def next_epochs(self, member_id: str) -> list[tuple[dict, dict | None]]:
        """The epochs trained for ``member_id`` since it last asked (at least one; blocks until then): each one's
        metrics and, when a checkpoint was due, the checkpoint's files."""
        with self.cond:
            member = self.members.get(member_id)
            if member is None:
                raise RuntimeError(f"trial {member_id} holds no place in this pack server")
            if not member.queue and member.held:
                member.held = False  # its trial has reported the decision epoch and goes on
                self.cond.notify_all()
            # Epochs are collected in batches, not one call each: every call is a round trip through this process
            # (and its GIL) while it trains. A batch is handed over once it is COLLECT_S old, or at once when the
            # member waits at a decision epoch, has ended, or has left.
            while member.gone is None and not (member.queue and (member.held or is_last_report(member.queue[-1][0])
                                                                or time.monotonic() - member.queued_at >= COLLECT_S)):
                self.cond.wait(timeout=COLLECT_S)
            if not member.queue:
                raise RuntimeError(member.gone)
            epochs, member.queue = member.queue, []
            return epochs

    # ---- the training thread ----------------------------------------------------------------------------------

    def _train_forever(self) -> None:
        # Per thread: OpenMP's thread count is a per-thread setting, and a thread started here would otherwise use
        # every core (OMP_NUM_THREADS), spinning against the other servers and trials (measured: 15x slower steps).
        torch.set_num_threads(max(1, self.settings.num_threads))
        while True:
            with self.cond:
                self._apply_changes()
                ready = [s for s in self.slots if s.ids and not any(self.members[i].held for i in s.ids)]
                if not ready:
                    self._evict_stragglers()
                    self.cond.wait(timeout=1.0)
                    continue
            for slot in ready:
                self._step(slot)

    def _step(self, slot: _Slot) -> None:
        started = time.monotonic()
        try:
            results = slot.pack.step()
        except Exception as exc:  # noqa: BLE001 - the pack's trials fail with the reason; Tune retries them
            log.exception("pack step failed")
            with self.cond:
                for member_id in list(slot.ids):
                    self._remove(member_id, f"its pack failed: {type(exc).__name__}: {exc}")
                self.cond.notify_all()
            return
        timing = {"epoch_time_s": time.monotonic() - started, "epoch_end_time": time.time(),
                  "pack_members": len(results)}  # how many trials trained together in this epoch
        packed = [(member_id, {**metrics, **timing}, _files(snapshot))
                  for member_id, (metrics, snapshot) in results.items()]
        with self.cond:
            for member_id, metrics, files in packed:
                member = self.members.get(member_id)
                if member is None:
                    continue
                member.add(metrics, files)
                if is_last_report(metrics):  # the pack has let it go already; the queue is still collected
                    self._remove(member_id, "its trial ended")
            self.cond.notify_all()

    def _apply_changes(self) -> None:
        changes, self.changes = self.changes, []
        for change in changes:
            if change[0] == "leave":
                self._remove(change[1], "its trial ended")
                self.members.pop(change[1], None)
                continue
            _, member_id, params, resume, (done, outcome) = change
            try:
                self._remove(member_id, "replaced by a retry of its trial")
                outcome["trains"] = self._place(member_id, params, resume)
            except Exception as exc:  # noqa: BLE001 - handed to the joining trial, which fails with it
                outcome["error"] = exc
            finally:
                done.set()

    def _place(self, member_id: str, params: dict, files: dict[str, bytes] | None) -> bool:
        key = pack_key(params, self.data, self.device)
        slot = None
        if key is not None:
            slot = next((s for s in self.slots if s.key == key and len(s.ids) < self.pack_size), None)
        if slot is None:  # a new pack; a configuration that does not pack trains alone beside the packs
            s = self.settings
            slot = _Slot(key or ("alone", member_id),
                         Pack(self.device, s.amp, s.gpu_share, s.stream) if key is not None else Solo())
        resume = None
        if files is not None:
            with tempfile.TemporaryDirectory() as directory:
                write_files(directory, files)
                resume = load_checkpoint(directory)
        if not slot.pack.add(member_id, params, self.data, self.settings, resume):
            return False
        if slot not in self.slots:
            self.slots.append(slot)
        slot.ids.add(member_id)
        self.members[member_id] = _Member(slot, self.settings.decision_epochs)
        return True

    def _remove(self, member_id: str, reason: str) -> None:
        """Take a member out of its pack; it stays known (its queue collectable) until it is replaced or released."""
        member = self.members.get(member_id)
        if member is None or member.gone is not None:
            return
        member.gone = reason
        member.slot.ids.discard(member_id)
        member.slot.pack.remove(member_id)
        if not member.slot.ids and member.slot in self.slots:
            self.slots.remove(member.slot)
        if not member.queue:
            self.members.pop(member_id, None)

    def _evict_stragglers(self) -> None:
        now = time.monotonic()
        for slot in list(self.slots):
            stuck = [i for i in slot.ids if self.members[i].held and now - self.members[i].held_since > EVICT_AFTER_S]
            for member_id in stuck if len(stuck) < len(slot.ids) else []:
                log.warning("trial %s stopped asking for epochs; its pack goes on without it", member_id)
                self._remove(member_id, "evicted from its pack after not asking for its next epoch")
        self.cond.notify_all()


def _files(snapshot: Snapshot | None) -> dict[str, bytes] | None:
    """A snapshot as the files of its checkpoint (what the trial reports to Tune)."""
    if snapshot is None:
        return None
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(directory, snapshot.state, snapshot.description)
        return read_files(directory)
