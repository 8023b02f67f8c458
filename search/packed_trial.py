"""The Tune function a packed trial runs: thin on purpose (Ray, the standard library and
:mod:`trainables.reporting`; no torch), so that the many trial processes of a packed search start fast and
hold almost no memory. The training happens in the search's pack servers (:mod:`search.packing`).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
from ray import tune

from trainables.reporting import EpochBatcher, is_last_report


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
    trains there (and its checkpoints) to Tune, exactly as an unpacked trial would."""
    trial_id = tune.get_context().get_trial_id()
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = read_files(directory)
    handles = [ray.get_actor(name) for name in servers]
    loads = ray.get([h.load.remote(config) for h in handles])
    # Best fit first (a pack of its kind with room, then the fewest members); ties broken by the trial's own hash,
    # so trials that start together spread over empty servers instead of all choosing the first.
    spread = hash(trial_id)
    server = handles[min(range(len(handles)), key=lambda i: (loads[i], (spread + i) % len(handles)))]
    placement = ray.get(server.join.remote(trial_id, config, resume))
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
    while True:
        for metrics, files in ray.get(server.next_epochs.remote(trial_id)):
            report({**metrics, **placement}, files)
            if is_last_report(metrics):
                return
