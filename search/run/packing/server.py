"""The pack server: a Ray actor that trains the members it holds, pack by pack, one epoch per step (how packed
trials fit into a search: :mod:`search.run.packing.servers`). It runs in its own worker; the driver never imports it.

Nothing here waits for ever. Each call a trial makes returns within a bound (:data:`POLL_S` for epochs, an empty
answer meaning "still training"; :data:`JOIN_WAIT_S` for a join), and fails when the training thread is gone. The
training thread catches every error: one in a pack's step fails that pack's members (a pack out of memory splits
in two instead), one in a member's checkpoint fails that member, one anywhere else fails every member; an error
that leaves the device unusable (a CUDA error other than out-of-memory) ends the process, so Ray starts a fresh
server and Tune retries its trials from their checkpoints.
"""

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

from search.run.packing.trial import FULL, JOIN_WAIT_S, POLL_S, write_files
from trainables.checkpoint import checkpoint_files, load_checkpoint
from trainables.device import trial_device
from trainables.packed import Pack, pack_key
from trainables.reporting import is_last_report
from trainables.settings import TrainSettings
from trainables.train import Snapshot, Solo
from trainables.trial_data import TrialData

log = logging.getLogger(__name__)

# How long a member may go without its trial collecting epochs or sending a heartbeat (search.run.packing.trial sends
# one every HEARTBEAT_S while it reports) before it is evicted, so that a lost trial cannot hold its pack back.
# The bounds on a trial's calls (POLL_S, JOIN_WAIT_S) are the thin trial's, imported from there.
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
    slot: _Slot | None  # None once it has left
    decision_epochs: frozenset[int]
    queue: list[tuple[dict, dict | None]] = field(default_factory=list)  # trained, not yet collected
    held: bool = False  # trained up to a decision epoch (or MAX_AHEAD): waits until its trial asks again
    queued_at: float = 0.0  # when the oldest epoch in the queue was trained
    seen: float = field(default_factory=time.monotonic)  # the trial's last call (collect or heartbeat)
    gone: str | None = None  # why it left while its trial may still ask

    def add(self, metrics: dict, files: dict | None) -> None:
        if not self.queue:
            self.queued_at = time.monotonic()
        self.queue.append((metrics, files))
        if metrics.get("epoch") in self.decision_epochs or len(self.queue) >= MAX_AHEAD:
            self.held = True


def device_unusable(exc: BaseException) -> bool:
    """Whether an error leaves this process's GPU context unusable (CUDA errors are sticky), out of memory aside."""
    if is_out_of_memory(exc):
        return False
    accelerator_error = getattr(torch, "AcceleratorError", ())
    text = str(exc)
    return isinstance(exc, accelerator_error) or "CUDA error" in text or "CUBLAS_STATUS" in text


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether an error is the device (or the host) running out of memory."""
    return isinstance(exc, torch.OutOfMemoryError | MemoryError) or "can't allocate memory" in str(exc)


class PackServer:
    """A Ray actor (threaded) that trains the members it holds, pack by pack, one epoch per step."""

    def __init__(self, data: TrialData, settings: TrainSettings, pack_size: int,
                 evict_after_s: float = EVICT_AFTER_S) -> None:
        torch.set_num_threads(max(1, settings.num_threads))
        self.device = trial_device(ray.get_gpu_ids())
        self.data, self.pack_size, self.evict_after_s = data, pack_size, evict_after_s
        self.settings = TrainSettings(**{**settings.__dict__, "device": self.device})
        self.members: dict[str, _Member] = {}
        self.slots: list[_Slot] = []
        self.caps: dict[tuple, int] = {}  # smaller pack sizes for keys whose packs ran out of memory
        self.changes: list[tuple] = []  # joins and leaves, applied by the training thread between steps
        self.cond = threading.Condition()
        self.placement = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
                          "device": str(self.device)}
        self.trainer = threading.Thread(target=self._train_forever, name="pack-trainer", daemon=True)
        self.trainer.start()

    # ---- called by trials and the driver ----------------------------------------------------------------------

    def ready(self) -> bool:
        """True once the server runs (the driver waits for every server before Tune starts trials)."""
        return True

    def process_id(self) -> int:
        """The server's process (what an operator, or a test, signals)."""
        return os.getpid()

    def status(self) -> dict:
        """What the server holds now (for operators and benchmarks): its packs' sizes, and per member the epochs
        waiting to be collected, whether it waits at a decision epoch, why it left, seconds since its trial's word."""
        now = time.monotonic()
        with self.cond:
            return {"slots": [len(s.ids) for s in self.slots],
                    "members": {i: {"queued": len(m.queue), "held": m.held, "gone": m.gone,
                                    "silent_s": round(now - m.seen, 1)} for i, m in self.members.items()}}

    def load(self, params: dict) -> tuple[int, int]:
        """How well a configuration fits here: (0 if a pack of its kind has room else 1, members held)."""
        key = pack_key(params, self.data, self.device)
        with self.cond:
            room = key is not None and any(s.key == key and len(s.ids) < self._cap(key) for s in self.slots)
            return (0 if room else 1, len(self.members) + len(self.changes))

    def join(self, member_id: str, params: dict, resume: dict[str, bytes] | None,
             only_if_room: bool = False) -> dict | str | None:
        """Add a member (a retried trial replaces its earlier self), from its checkpoint's files if any. Returns
        where it trains, or None when it has no epoch left; with ``only_if_room``, :data:`FULL` (and nothing added)
        when the server already holds a pack's worth of trials. A configuration that cannot train here raises, and
        so does a join the training thread has not taken up within JOIN_WAIT_S."""
        outcome: dict = {}
        done = threading.Event()
        with self.cond:
            self._check_trainer()
            # Counted here, under the lock, with the joins not yet applied: trials that chose this server at the same
            # moment (all of a search's first trials do) cannot crowd it while another server stays empty.
            others = sum(1 for i, m in self.members.items() if m.gone is None and i != member_id)
            others += sum(1 for change in self.changes if change[0] == "join" and change[1] != member_id)
            if only_if_room and others >= self.pack_size:
                return FULL
            self.changes.append(("join", member_id, params, resume, (done, outcome)))
            self.cond.notify_all()
        deadline = time.monotonic() + JOIN_WAIT_S
        while not done.wait(timeout=1.0):
            self._check_trainer()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pack server did not take trial {member_id} in within {JOIN_WAIT_S:.0f} s")
        if "error" in outcome:
            raise outcome["error"]
        return self.placement if outcome["trains"] else None

    def leave(self, member_id: str) -> None:
        """Drop a member whose trial ended; unknown ids are ignored (the trial was held by another server)."""
        with self.cond:
            self.changes.append(("leave", member_id))
            self.cond.notify_all()

    def heartbeat(self, member_id: str) -> bool:
        """The trial of ``member_id`` is alive (busy reporting): do not evict it. False if it holds no place here."""
        with self.cond:
            member = self.members.get(member_id)
            if member is not None:
                member.seen = time.monotonic()
            return member is not None and member.gone is None

    def next_epochs(self, member_id: str) -> list[tuple[dict, dict | None]]:
        """The epochs trained for ``member_id`` since it last asked: each one's metrics and, when a checkpoint was
        due, the checkpoint's files. Blocks until there is one, for at most POLL_S: an empty list means "still
        training, ask again". Raises when the member has left (its reason) or the training thread is gone."""
        deadline = time.monotonic() + POLL_S
        with self.cond:
            member = self.members.get(member_id)
            if member is None:
                raise RuntimeError(f"trial {member_id} holds no place in this pack server")
            member.seen = time.monotonic()
            if not member.queue and member.held:
                member.held = False  # its trial has reported the decision epoch and goes on
                self.cond.notify_all()
            # Epochs are collected in batches, not one call each: every call is a round trip through this process
            # (and its GIL) while it trains. A batch is handed over once it is COLLECT_S old, or at once when the
            # member waits at a decision epoch, has ended, or has left.
            while member.gone is None and not (member.queue and (member.held or is_last_report(member.queue[-1][0])
                                                                or time.monotonic() - member.queued_at >= COLLECT_S)):
                self._check_trainer()
                member.seen = time.monotonic()  # waiting here is asking: never evicted meanwhile
                if member.seen >= deadline:
                    return []
                self.cond.wait(timeout=COLLECT_S)
            member.seen = time.monotonic()
            if not member.queue:
                self.members.pop(member_id, None)
                raise RuntimeError(member.gone)
            epochs, member.queue = member.queue, []
            return epochs  # a member that has left stays known until its next call, which says why

    def _check_trainer(self) -> None:
        if not self.trainer.is_alive():
            raise RuntimeError("the pack server's training thread has stopped")

    def _cap(self, key: tuple) -> int:
        return self.caps.get(key, self.pack_size)

    # ---- the training thread ----------------------------------------------------------------------------------

    def _train_forever(self) -> None:
        # Per thread: OpenMP's thread count is a per-thread setting, and a thread started here would otherwise use
        # every core (OMP_NUM_THREADS), spinning against the other servers and trials (measured: 15x slower steps).
        torch.set_num_threads(max(1, self.settings.num_threads))
        while True:
            try:
                self._train_round()
            except Exception as exc:  # noqa: BLE001 - never let the thread die with members waiting on it
                self._give_up_device_if_unusable(exc)
                log.exception("the pack server's training loop failed; its trials fail and are retried")
                with self.cond:
                    for member_id in list(self.members):
                        self._remove(member_id, f"its pack server failed: {type(exc).__name__}: {exc}")
                    self.slots = [s for s in self.slots if s.ids]
                    self.cond.notify_all()

    def _train_round(self) -> None:
        with self.cond:
            self._apply_changes()
            self._evict_stragglers()
            ready = [s for s in self.slots if s.ids and not any(self.members[i].held for i in s.ids)]
            if not ready:
                self.cond.wait(timeout=1.0)
                return
        for slot in ready:
            self._step(slot)

    def _step(self, slot: _Slot) -> None:
        started = time.monotonic()
        try:
            results = slot.pack.step()
        except Exception as exc:  # noqa: BLE001 - the pack's trials fail with the reason; Tune retries them
            self._give_up_device_if_unusable(exc)
            with self.cond:
                if is_out_of_memory(exc) and isinstance(slot.pack, Pack) and len(slot.pack) > 1:
                    self._split(slot)  # the step left every member as before it: both halves train it again
                    return
                log.exception("pack step failed")
                for member_id in list(slot.ids):
                    self._remove(member_id, f"its pack failed: {type(exc).__name__}: {exc}")
                self.cond.notify_all()
            return
        timing = {"epoch_time_s": time.monotonic() - started, "epoch_end_time": time.time(),
                  "pack_members": len(results)}  # how many trials trained together in this epoch
        packed, failed = [], {}
        for member_id, (metrics, snapshot) in results.items():
            try:
                packed.append((member_id, {**metrics, **timing}, self._checkpoint_files(member_id, snapshot)))
            except Exception as exc:  # noqa: BLE001 - only this member's report is lost: it fails, the others go on
                self._give_up_device_if_unusable(exc)
                log.exception("trial %s: its checkpoint could not be written", member_id)
                failed[member_id] = f"its checkpoint could not be written: {type(exc).__name__}: {exc}"
        with self.cond:
            for member_id, metrics, files in packed:
                member = self.members.get(member_id)
                if member is None or member.gone is not None:
                    continue
                member.add(metrics, files)
                if is_last_report(metrics):  # the pack has let it go already; the queue is still collected
                    self._remove(member_id, "its trial ended")
            for member_id, reason in failed.items():
                self._remove(member_id, reason)
            self.cond.notify_all()

    def _split(self, slot: _Slot) -> None:
        """A pack that ran out of memory goes on as two halves; packs of its kind stay that small from now on."""
        other = slot.pack.split()
        moved = {m.member_id for m in other.members}
        slot.ids -= moved
        half = _Slot(slot.key, other, moved)
        self.slots.append(half)
        for member_id in moved:
            self.members[member_id].slot = half
        self.caps[slot.key] = len(slot.pack)
        log.warning("a pack of %d trials ran out of memory: it goes on as two packs, and packs of its kind hold at "
                    "most %d trials on this server", len(slot.pack) + len(other), self.caps[slot.key])

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
                self.members.pop(member_id, None)
                outcome["trains"] = self._place(member_id, params, resume)
            except Exception as exc:  # noqa: BLE001 - handed to the joining trial, which fails with it
                self._give_up_device_if_unusable(exc)
                outcome["error"] = exc
            finally:
                done.set()

    def _place(self, member_id: str, params: dict, files: dict[str, bytes] | None) -> bool:
        key = pack_key(params, self.data, self.device)
        slot = None
        if key is not None:
            slot = next((s for s in self.slots if s.key == key and len(s.ids) < self._cap(key)), None)
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
        """Take a member out of its pack; it stays known (its queue collectable, then the reason it left) until its
        trial asks again, a retry replaces it or the driver releases it.
        Should taking it out fail (a leave copies the pack's stacks: out of memory, say), the pack is unusable and
        its other members fail too."""
        member = self.members.get(member_id)
        if member is None or member.gone is not None:
            return
        member.gone = reason
        slot = member.slot
        slot.ids.discard(member_id)
        try:
            slot.pack.remove(member_id)
        except Exception as exc:  # noqa: BLE001 - see the docstring
            self._give_up_device_if_unusable(exc)
            log.exception("a member could not leave its pack; the pack's other trials fail and are retried")
            for other in list(slot.ids):
                if self.members[other].gone is None:
                    self.members[other].gone = f"its pack failed: {type(exc).__name__}: {exc}"
            slot.ids.clear()
        if not slot.ids and slot in self.slots:
            self.slots.remove(slot)
        member.slot = None  # its pack's memory goes with the pack; the member stays until its trial hears why

    def _evict_stragglers(self) -> None:
        """Evict each member whose trial has neither collected epochs nor sent a heartbeat for evict_after_s (a
        lost worker; a live trial's next call then fails and Tune retries it), whatever the other slots do."""
        now = time.monotonic()
        for member_id, member in list(self.members.items()):
            if member.gone is None and now - member.seen > self.evict_after_s:
                log.warning("trial %s has not asked for its epochs in %.0f s; its pack goes on without it",
                            member_id, now - member.seen)
                self._remove(member_id, f"evicted from its pack: no word from its trial in {self.evict_after_s:.0f} s")
                member.queue.clear()  # a trial back after this long resumes from its checkpoint, not from here
        self.cond.notify_all()

    def _give_up_device_if_unusable(self, exc: BaseException) -> None:
        """End the process after an error that poisons its GPU context: Ray starts a fresh server, whose trials'
        retries then train on a usable device (this one, with the fewest members, would attract every retry)."""
        if device_unusable(exc):
            log.critical("the device is unusable after %s: %s; ending this pack server", type(exc).__name__, exc)
            logging.shutdown()
            os._exit(1)

    def _checkpoint_files(self, member_id: str, snapshot: Snapshot | None) -> dict[str, bytes] | None:
        """Member ``member_id``'s snapshot as the files of its checkpoint (what its trial reports to Tune)."""
        return None if snapshot is None else checkpoint_files(snapshot.state, snapshot.description)
