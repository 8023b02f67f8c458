"""The one place ``trainables`` meets Ray: runs :func:`train_trial` as a Ray Tune function trainable."""

from __future__ import annotations

import dataclasses
import socket
import tempfile
from typing import TYPE_CHECKING

import ray
from ray import tune

from trainables.reporting import EpochBatcher
from trainables.settings import TrainSettings

if TYPE_CHECKING:
    from trainables.train import Snapshot
    from trainables.trial_data import TrialData


def tune_trainable(config: dict, data: TrialData | list[TrialData], settings: TrainSettings) -> None:
    """Ray Tune entry point: resume from Tune's checkpoint if any, train, report every epoch to Tune."""
    # PyTorch loads here, in the trial's worker: the search's driver imports this module only to hand the function
    # to Tune, and starts ~1.5 s sooner without it.
    import torch

    from trainables.checkpoint import load_checkpoint, save_checkpoint
    from trainables.device import hide_gpus_from_cpu_trial, trial_device
    from trainables.train import train_trial

    torch.set_num_threads(max(1, settings.num_threads))
    # The device follows what Ray assigned this trial, not what the process can see: Ray 2.60 leaves every GPU
    # visible to trials that asked for none (see trainables.device). train_trial sets the device up (TF32, the
    # memory cap of a fractional GPU) and refuses a GPU that CUDA cannot use.
    device = trial_device(ray.get_gpu_ids())
    hide_gpus_from_cpu_trial(device)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            resume = load_checkpoint(directory)
    placement = {"node_id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname(),
                 "device": str(device)}

    def send(metrics: dict, snapshot: Snapshot | None) -> None:
        if snapshot is None:
            tune.report(metrics)
            return
        with tempfile.TemporaryDirectory() as directory:
            save_checkpoint(directory, snapshot.state, snapshot.description)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(directory))

    batcher = EpochBatcher(send, settings.report_interval_s, settings.decision_epochs)

    def report(metrics: dict, snapshot: Snapshot | None) -> None:
        batcher({**metrics, **placement}, snapshot)  # placement on every epoch: any may be a run's first

    train_trial(config, data, dataclasses.replace(settings, device=device), report, resume)
