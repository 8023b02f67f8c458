"""The pack server under faults, on the session's real Ray: every fault is injected at the exact point it names (a
subclass of the real server), and every test checks that nothing waits for ever: the trials concerned fail with a
reason (Tune would retry them), the others train to their end, and the server takes new trials afterwards."""

from __future__ import annotations

import dataclasses
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import ray
import torch

from search.errors import ClusterTooSmall
from search.run.packing.server import PackServer
from search.run.packing.servers import PackRelease, check_servers_fit
from search.run.packing.trial import _answer, _servers_by_fit
from trainables.reporting import is_last_report
from trainables.settings import TrainSettings
from trainables.splitting import split_dataset

pytestmark = pytest.mark.slow
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the subclass below travels to Ray's workers by value

ROWS = 240
EVICT_AFTER_S = 3.0
# Members that pack together (adam, layer norm: compared closely with their unfaulted selves, see test_packed).
MEMBER = {"n_layers": 2, "units_0": 32, "units_1": 32, "batch_size": 32, "activation": "relu", "dropout": 0.0,
          "optimizer": "adam", "norm": "layer", "lr": 3e-3}
OTHER_KIND = {**MEMBER, "norm": "none"}  # another pack key: trains in a slot of its own


class FaultyServer(PackServer):
    """The real server with faults armed by the test, each at one exact point, each firing once."""

    def __init__(self, *args, **kwargs) -> None:
        self.faults: dict[str, str] = {}
        super().__init__(*args, **kwargs)

    def arm(self, fault: str, member_id: str | None = None) -> None:
        with self.cond:
            self.faults[fault] = member_id

    def _checkpoint_files(self, member_id, snapshot):
        if snapshot is not None and self.faults.get("checkpoint") == member_id:
            del self.faults["checkpoint"]
            raise OSError(28, "No space left on device (injected)")
        return super()._checkpoint_files(member_id, snapshot)

    def _evict_stragglers(self) -> None:
        if self.faults.pop("loop", False) is not False:
            raise RuntimeError("bookkeeping broke (injected)")
        super()._evict_stragglers()

    def _place(self, member_id, params, files) -> bool:
        placed = super()._place(member_id, params, files)
        pack = self.members[member_id].slot.pack if placed else None
        if pack is not None and self.faults.get("leave") == member_id:
            remove = pack.remove

            def failing_remove(which):
                if which == member_id:
                    raise MemoryError("no memory to copy the stacks (injected)")
                return remove(which)

            pack.remove = failing_remove
        if pack is not None and self.faults.get("device") == member_id:
            def poisoned_step():
                raise RuntimeError("CUDA error: an illegal memory access was encountered (injected)")

            pack.step = poisoned_step
        if pack is not None and self.faults.get("oom") == member_id:
            del self.faults["oom"]
            optimizer_step, calls = pack._optimizer_step, []  # noqa: SLF001 - the fault point: mid-epoch

            def failing_step():
                if len(pack) == 4:
                    calls.append(1)
                    if len(calls) == 3:  # some batches into an epoch of all four: the rollback matters
                        del pack._optimizer_step  # noqa: SLF001 - fires once; the halves step as usual
                        raise torch.OutOfMemoryError("CUDA out of memory (injected)")
                optimizer_step()

            pack._optimizer_step = failing_step  # noqa: SLF001
        return placed


@pytest.fixture(scope="module")
def data():
    full = split_dataset("sklearn:digits", "auto", 0.2, 0.2, 0).trial_data()
    return dataclasses.replace(full, x_train=full.x_train[:ROWS], y_train=full.y_train[:ROWS],
                               x_val=full.x_val[: ROWS // 2], y_val=full.y_val[: ROWS // 2])


def start(data, pack_size: int = 4, max_epochs: int = 4, **options):
    settings = TrainSettings(max_epochs=max_epochs, checkpoint_every=1, decision_epochs=frozenset({2}))
    server = ray.remote(FaultyServer).options(num_cpus=0, max_concurrency=100, **options).remote(
        data, settings, pack_size, evict_after_s=EVICT_AFTER_S)
    ray.get(server.ready.remote(), timeout=120)
    return server


@pytest.fixture(scope="module")
def server(ray_session, data):
    """One server for the tests whose faults leave it running (each starts its own members)."""
    handle = start(data)
    yield handle
    ray.kill(handle)


def join(server, member_id: str, params: dict) -> None:
    assert ray.get(server.join.remote(member_id, params, None), timeout=60) is not None


def collect(server, member_id: str, timeout: float = 60) -> tuple[list[dict], str | None]:
    """What a thin trial would report: every epoch's metrics until the last, or the error that ended them."""
    epochs, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            batch = ray.get(server.next_epochs.remote(member_id), timeout=timeout)
        except (ray.exceptions.RayError, RuntimeError) as exc:
            return epochs, str(exc)
        epochs += [metrics for metrics, _ in batch]
        if epochs and is_last_report(epochs[-1]):
            return epochs, None
    raise AssertionError(f"{member_id} neither ended nor failed within {timeout} s")


def wait_until(condition, timeout: float = 30, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_a_checkpoint_that_cannot_be_written_fails_only_its_member(server):
    ray.get(server.arm.remote("checkpoint", "ck-b"))
    join(server, "ck-a", MEMBER)
    join(server, "ck-b", {**MEMBER, "lr": 1e-2})
    a, a_error = collect(server, "ck-a")
    b, b_error = collect(server, "ck-b")
    assert a_error is None and [m["epoch"] for m in a] == [1, 2, 3, 4]
    assert "No space left on device" in b_error and not b  # its first epoch's report was the one lost


def test_an_error_outside_any_step_fails_the_members_and_the_server_goes_on(server):
    join(server, "loop-a", MEMBER)
    ray.get(server.arm.remote("loop"))
    _, error = collect(server, "loop-a")
    assert "its pack server failed" in error and "bookkeeping broke" in error
    join(server, "loop-after", MEMBER)  # the training thread lives on
    epochs, error = collect(server, "loop-after")
    assert error is None and epochs[-1]["finished"]


def test_a_member_that_cannot_leave_fails_its_pack_but_not_the_other_packs(server):
    ray.get(server.arm.remote("leave", "lv-a"))
    join(server, "lv-a", MEMBER)
    join(server, "lv-b", {**MEMBER, "lr": 1e-2})  # in lv-a's pack
    join(server, "lv-c", OTHER_KIND)  # in a pack of its own
    server.leave.remote("lv-a")  # as the driver does when ASHA stops a trial
    _, error = collect(server, "lv-b")
    assert "its pack failed" in error and "no memory to copy" in error
    epochs, error = collect(server, "lv-c")
    assert error is None and epochs[-1]["finished"]


def test_a_silent_member_is_evicted_while_the_other_slots_train_and_a_live_one_is_not(server):
    join(server, "ev-silent", MEMBER)  # held at its decision epoch (2), never collected again
    join(server, "ev-busy", OTHER_KIND)  # collects slowly, sending heartbeats (a checkpoint upload, say)
    started = time.monotonic()
    epochs = []
    while not (epochs and is_last_report(epochs[-1])):
        for _ in range(int(EVICT_AFTER_S * 2)):  # a pause longer than the eviction delay, heartbeats meanwhile
            server.heartbeat.remote("ev-busy")
            time.sleep(0.5)
        epochs += [m for m, _ in ray.get(server.next_epochs.remote("ev-busy"), timeout=60)]
    assert [m["epoch"] for m in epochs] == [1, 2, 3, 4]
    silent = ray.get(server.status.remote())["members"]["ev-silent"]  # what an operator sees
    assert "evicted" in silent["gone"] and silent["silent_s"] >= EVICT_AFTER_S
    _, error = collect(server, "ev-silent")
    assert "evicted" in error and time.monotonic() - started >= EVICT_AFTER_S


def test_a_pack_out_of_memory_splits_and_its_members_train_on_as_before(server, data):
    members = {f"oom-{i}": {**MEMBER, "lr": lr, "units_1": units}
               for i, (lr, units) in enumerate([(3e-3, 32), (1e-2, 24), (1e-3, 32), (3e-2, 20)])}
    reference = start(data)  # the same members, no fault
    try:
        for member_id, params in members.items():
            join(reference, member_id, params)
        expected = collect_all(reference, members)
    finally:
        ray.kill(reference)
    ray.get(server.arm.remote("oom", "oom-0"))  # mid-epoch, once the pack holds all four
    for member_id, params in members.items():
        join(server, member_id, params)
    got = collect_all(server, members)
    for member_id in members:
        epochs, error = got[member_id]
        assert error is None and [m["epoch"] for m in epochs] == [1, 2, 3, 4], (member_id, error)
        for mine, want in zip(epochs, expected[member_id][0]):
            assert mine["val_loss"] == pytest.approx(want["val_loss"], rel=1e-5), member_id
    # The epoch that ran out of memory trained again in halves: no reported epoch trained four together, as some
    # did without the fault.
    sizes = lambda run: [m["pack_members"] for epochs, _ in run.values() for m in epochs]  # noqa: E731
    assert max(sizes(expected)) == 4 and max(sizes(got)) <= 2, (sizes(expected), sizes(got))


def collect_all(server, member_ids) -> dict:
    """Every member collected at once, as their trials do (a pack waits for members held at a decision epoch)."""
    with ThreadPoolExecutor(len(member_ids)) as pool:
        futures = {member_id: pool.submit(collect, server, member_id) for member_id in member_ids}
        return {member_id: future.result() for member_id, future in futures.items()}


def test_an_unusable_device_ends_the_server_and_ray_starts_a_fresh_one(ray_session, data):
    server = start(data, max_restarts=1)
    try:
        first = ray.get(server.process_id.remote())
        ray.get(server.arm.remote("device", "dev-a"))
        # The process ends at the member's first step, maybe before its join is answered: either call fails (Tune
        # retries the trial), none waits.
        with pytest.raises((ray.exceptions.RayError, AssertionError)):
            join(server, "dev-a", MEMBER)
            _, error = collect(server, "dev-a")
            assert error is None, error
        second = wait_until(lambda: _pid_or_none(server), timeout=120, what="the server restarted")
        assert second != first
        wait_until(lambda: _joined(server, "dev-after"), timeout=60, what="a trial taken in")  # a fresh process
        epochs, error = collect(server, "dev-after")
        assert error is None and epochs[-1]["finished"]
    finally:
        ray.kill(server)


def _joined(server, member_id: str) -> bool:
    try:
        join(server, member_id, MEMBER)
    except ray.exceptions.ActorUnavailableError:  # Ray still reconnecting to the restarted actor
        return False
    return True


def _pid_or_none(server) -> int | None:
    try:
        return ray.get(server.process_id.remote(), timeout=10)
    except ray.exceptions.RayError:
        return None


def test_a_recovered_trial_is_released_from_its_old_server(ray_session, data):
    # Tune retries a failed trial with on_trial_recover (not on_trial_error): its old place must be freed.
    old = start(data, name="hps-test-recover")
    try:
        join(old, "rec-ghost", MEMBER)
        PackRelease(("hps-test-recover",)).on_trial_recover(0, [], SimpleNamespace(trial_id="rec-ghost"))
        wait_until(lambda: not ray.get(old.status.remote())["members"], what="the ghost released")
    finally:
        ray.kill(old)


def test_calls_to_a_server_that_does_not_answer_end_in_bounded_time(server):
    @ray.remote(num_cpus=0)
    class Stuck:
        def load(self, params):
            time.sleep(3600)

        def next_epochs(self, member_id):
            time.sleep(3600)

    stuck = Stuck.remote()
    try:
        with pytest.raises(TimeoutError, match="did not hand over its epochs within 1 s"):
            _answer(stuck.next_epochs.remote("x"), 1.0, "hand over its epochs")
        # a trial chooses among the servers that answer; with none answering it fails instead of waiting
        import search.run.packing.trial as thin

        original, thin.LOAD_TIMEOUT_S = thin.LOAD_TIMEOUT_S, 2.0
        try:
            assert _servers_by_fit([stuck, server], MEMBER, "t") == [server]
            with pytest.raises(RuntimeError, match="none of the search's 1 pack servers answered"):
                _servers_by_fit([stuck], MEMBER, "t")
        finally:
            thin.LOAD_TIMEOUT_S = original
    finally:
        ray.kill(stuck)


def test_servers_are_refused_where_the_cluster_cannot_hold_them(ray_session):
    cluster = ray.cluster_resources()  # the session's Ray: 2 CPUs, 1 (logical) GPU
    # one GPU, gpus_per_trial 1, pack 2, max_concurrent 4: two servers of one GPU each
    with pytest.raises(ClusterTooSmall, match=r"2 x gpus_per_trial 1 = 2 GPUs, the cluster has 1"):
        check_servers_fit(2, 1, 1, cluster)
    # 2 CPUs, cpus_per_trial 2, pack 2, max_concurrent 4: two servers of two threads each
    with pytest.raises(ClusterTooSmall, match=r"2 x cpus_per_trial 2 = 4 CPUs, the cluster has 2"):
        check_servers_fit(2, 2, 0, cluster)
    check_servers_fit(2, 1, 0.5, cluster)  # what fits passes


def test_trials_that_choose_a_server_at_once_do_not_crowd_it(ray_session, data):
    # All of a search's first trials choose at the same moment, before any of their joins is applied: a server
    # that holds (or is taking in) a pack's worth says so, and the trial goes to the next one.
    crowded = start(data, pack_size=2)
    try:
        first = [crowded.join.remote(f"crowd-{i}", MEMBER, None, only_if_room=True) for i in range(3)]
        answers = ray.get(first, timeout=60)
        assert sorted(map(str, answers)).count("full") == 1, answers
        assert ray.get(crowded.join.remote("crowd-last", MEMBER, None), timeout=60) is not None  # the last resort
    finally:
        ray.kill(crowded)
