"""The device decision inside real Ray workers: from Ray's GPU assignment, never from what the process can see.

The session's Ray advertises one logical GPU (none exists here), so Ray really assigns it, sets
``CUDA_VISIBLE_DEVICES`` for the worker, and leaves it alone for workers that asked for no GPU (Ray 2.60).
"""

from __future__ import annotations

import pytest

from search.config.schema import parse_config
from search.review.evaluate import _retrainer


def _decider():
    """What a trial's worker decides (built here so Ray ships the function by value: tests are no package)."""

    def _decide():
        import os

        import ray

        from trainables.device import DeviceError, hide_gpus_from_cpu_trial, prepare_device, trial_device

        device = trial_device(ray.get_gpu_ids())
        hide_gpus_from_cpu_trial(device)
        try:
            prepared = str(prepare_device(device, 0.5))
        except DeviceError as exc:
            prepared = f"DeviceError: {exc}"
        return {"gpu_ids": [str(i) for i in ray.get_gpu_ids()], "device": str(device), "prepared": prepared,
                "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


    return _decide

def test_a_zero_gpu_worker_that_can_see_a_gpu_trains_on_the_cpu(ray_session):
    # A GPU node's worker asking for no GPU: CUDA_VISIBLE_DEVICES lists the node's GPU (Ray 2.60 leaves it alone).
    task = ray_session.remote(num_cpus=1, num_gpus=0, runtime_env={"env_vars": {"CUDA_VISIBLE_DEVICES": "0"}})(_decider())
    seen = ray_session.get(task.remote())
    assert seen["gpu_ids"] == []
    assert seen["device"] == "cpu" and seen["prepared"] == "cpu"
    assert seen["visible"] == ""  # hidden before CUDA could start


def test_a_fractional_gpu_worker_is_given_its_assigned_gpu(ray_session):
    task = ray_session.remote(num_cpus=1, num_gpus=0.5)(_decider())
    seen = ray_session.get(task.remote())
    assert seen["gpu_ids"] == ["0"] and seen["visible"] == "0"
    assert seen["device"] == "cuda:0"
    # This machine's torch cannot use CUDA: the trial says so instead of training on the CPU while holding the GPU.
    assert seen["prepared"].startswith("DeviceError") and "cannot use CUDA" in seen["prepared"]


@pytest.mark.parametrize("gpus, cuda_here, expected", [(0, True, "cpu"), (0.25, True, "cuda:0"), (1, False, "cpu")])
def test_refit_trains_on_the_kind_of_device_the_trials_had(digits_raw, monkeypatch, gpus, cuda_here, expected):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda_here)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    raw = {**digits_raw, "resources": {"cpus_per_trial": 1, "gpus_per_trial": gpus},
           "training": {**digits_raw.get("training", {}), "amp": True}}
    retrain = _retrainer(parse_config(raw))
    assert str(retrain.keywords["device"]) == expected
    assert retrain.keywords["amp"] is True  # as the trials trained; only applied on a GPU
