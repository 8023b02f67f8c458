"""The Tune function a packed trial runs: thin on purpose (Ray, the standard library and
:mod:`trainables.reporting`; no torch), so that the many trial processes of a packed search start fast and
hold almost no memory. The training happens in the search's pack servers (:mod:`search.run.packing.servers`).
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import ray
from ray import tune

from trainables.reporting import EpochBatcher, is_last_report

# Bounds on a trial's calls to its pack servers. The server answers `next_epochs` within POLL_S (an empty answer:
# still training) and `join` within JOIN_WAIT_S; CALL_SLACK_S more covers a busy process.
POLL_S = 20.0
JOIN_WAIT_S = 300.0
CALL_SLACK_S = 30.0
LOAD_TIMEOUT_S = 60.0  # for every server's `load` answer when a trial chooses one
HEARTBEAT_S = 10.0  # well under the server's eviction delay (search.run.packing.server.EVICT_AFTER_S)
FULL = "full"  # a server's answer to a join it has no room for
# A packed trial's process runs at this niceness (Ray starts workers at 15, the pack servers stay there): when the CPU
# is short, the servers train first, and the many trial processes relay their results and start up in what is left.
NICENESS = 19


def read_files(directory: str | Path) -> dict[str, bytes]:
    """Every file under ``directory`` by its relative path: a checkpoint as it travels to or from a pack server."""
    root = Path(directory)
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def write_files(directory: str | Path, files: dict[str, bytes]) -> None:
    """Inverse of :func:`read_files`."""
    for name, content in files.items():
        path = Path(directory) / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)


def packed_trial(config: dict, report_interval_s: float, decision_epochs: frozenset[int],
                 servers: tuple[str, ...]) -> None:
    """Ray Tune entry point of a packed trial: join the pack server that fits it best, then report every epoch it
    trains there (and its checkpoints) to Tune, exactly as an unpacked trial would. Every call to a server is
    bounded: one that does not answer fails the trial, and Tune retries it from its last checkpoint."""
    trial_id = tune.get_context().get_trial_id()
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = read_files(directory)
    # Below the pack servers for the CPU: a trial process only relays what its server trains (see NICENESS).
    os.nice(max(0, NICENESS - os.nice(0)))
    ranked = _servers_by_fit([ray.get_actor(name) for name in servers], config, trial_id)
    for index, server in enumerate(ranked):
        # A server holding a pack's worth of trials already says so, and the next one is asked; the last takes it.
        placement = _answer(server.join.remote(trial_id, config, resume, only_if_room=index < len(ranked) - 1),
                            JOIN_WAIT_S + CALL_SLACK_S, "take it in")
        if placement != FULL:
            break
    if placement is None:
        return  # restored after its last epoch: nothing left to train

    def send(metrics: dict, files: dict[str, bytes] | None) -> None:
        if files is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            write_files(directory, files)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    report = EpochBatcher(send, report_interval_s, decision_epochs)
    alive = threading.Event()
    heartbeat = threading.Thread(target=_heartbeat, args=(server, trial_id, alive), daemon=True)
    heartbeat.start()
    try:
        while True:
            for metrics, files in _answer(server.next_epochs.remote(trial_id), POLL_S + CALL_SLACK_S,
                                          "hand over its epochs"):
                report({**metrics, **placement}, files)
                if is_last_report(metrics):
                    return
    finally:
        alive.set()


def _servers_by_fit(handles: list, config: dict, trial_id: str) -> list:
    """The servers that answer within LOAD_TIMEOUT_S, best fit for ``config`` first: a pack of its kind with room,
    then the fewest members; ties broken by the trial's own hash, so trials that start together spread over empty
    servers instead of all choosing the first."""
    asked = {handle.load.remote(config): handle for handle in handles}
    answered, _ = ray.wait(list(asked), num_returns=len(asked), timeout=LOAD_TIMEOUT_S)
    loads = []
    for ref in answered:
        try:
            loads.append((ray.get(ref), handles.index(asked[ref])))
        except ray.exceptions.RayError:  # a server on its way out or restarting: choose among the others
            continue
    if not loads:
        raise RuntimeError(f"none of the search's {len(handles)} pack servers answered within {LOAD_TIMEOUT_S:.0f} s")
    spread = hash(trial_id)
    return [handles[index] for _, index in sorted(loads, key=lambda pair: (pair[0], (spread + pair[1]) % len(handles)))]


def _answer(ref, timeout_s: float, what: str):
    """The server's answer to a call, or an error (which Tune retries) when it gives none within ``timeout_s``."""
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref)
        raise TimeoutError(f"the pack server did not {what} within {timeout_s:.0f} s") from None


def _heartbeat(server, trial_id: str, stop: threading.Event) -> None:
    """Tell the server every HEARTBEAT_S that this trial is alive, while it reports (uploading a checkpoint may take
    longer than the server's eviction delay)."""
    while not stop.wait(HEARTBEAT_S):
        server.heartbeat.remote(trial_id)
