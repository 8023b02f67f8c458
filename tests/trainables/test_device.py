"""Where a trial trains and how: the device comes from the scheduler's assignment, devices compare however they are
spelled, fractional GPUs cap memory, validation is fp32, resume continues the random stream, compile survives reuse.

No test here needs a GPU: the CUDA side is reached through stand-ins (a tensor-like object on ``cuda:0``, torch.cuda
functions replaced by recorders); what only a real GPU can show is in benchmarks/gpu_check.py.
"""

from __future__ import annotations

import logging
import tempfile
from types import SimpleNamespace

import pytest
import torch

from trainables import device as D
from trainables import train
from trainables.checkpoint import load_checkpoint, save_checkpoint
from trainables.names import gpu_request_error
from trainables.splitting import split_dataset
from trainables.train import TrainSettings, train_trial

PARAMS = {"n_layers": 2, "units": 16, "lr": 3e-3, "optimizer": "adam", "batch_size": 32, "norm": "batch", "dropout": 0.3}


@pytest.fixture(scope="module")
def wine():
    return split_dataset("sklearn:wine", "auto", 0.15, 0.15, 0).trial_data()


class CudaTensorStandIn:
    """What a batch already on ``cuda:0`` looks like to ``train._to``; copying or pinning it is the crash."""

    device = torch.device("cuda", 0)

    def pin_memory(self):
        raise RuntimeError("cannot pin 'torch.cuda.FloatTensor': only dense CPU tensors can be pinned")

    def to(self, *args, **kwargs):
        raise AssertionError("a tensor already on the device was moved again")


def test_a_tensor_on_cuda0_is_already_on_a_device_spelled_cuda():
    # The reviewed crash: data on cuda:0, the loop's device spelled "cuda"; cuda:0 != cuda, so it was pinned.
    batch = CudaTensorStandIn()
    assert train._to(batch, torch.device("cuda")) is batch
    assert train._to(batch, torch.device("cuda:0")) is batch


def test_devices_compare_however_they_are_spelled():
    assert D.same_device(torch.device("cpu"), torch.device("cpu:0"))
    assert D.same_device(torch.device("cuda:0"), torch.device("cuda"))  # no GPU here: "cuda" means cuda:0
    assert not D.same_device(torch.device("cuda:1"), torch.device("cuda"))
    assert not D.same_device(torch.device("cpu"), torch.device("cuda:0"))
    assert D.canonical("cuda") == torch.device("cuda", 0)


def test_a_trial_given_no_gpu_trains_on_the_cpu_even_where_gpus_are_visible(monkeypatch):
    # Ray 2.60 leaves CUDA_VISIBLE_DEVICES alone for num_gpus=0: the process sees the node's GPUs.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert D.trial_device([], visible="0,1,2,3") == torch.device("cpu")
    assert D.trial_device([], visible=None) == torch.device("cpu")


def test_a_trial_given_a_gpu_trains_on_that_gpu_by_its_visible_index():
    assert D.trial_device(["3"], visible="3") == torch.device("cuda", 0)  # Ray exposes only the assigned GPU
    assert D.trial_device(["1"], visible="0,1") == torch.device("cuda", 1)
    assert D.trial_device([2], visible="") == torch.device("cuda", 2)  # Ray told not to set the variable


def test_a_gpu_trial_without_usable_cuda_fails_with_a_reason_instead_of_using_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(D.DeviceError, match="cannot use CUDA"):
        D.prepare_device(torch.device("cuda", 0))
    assert D.prepare_device("cpu") == torch.device("cpu")


GIB = 2**30


class FakeCuda:
    """torch.cuda as a 16 GiB GPU with 4 GiB free, recording what a trial asks of it."""

    def __init__(self, monkeypatch) -> None:
        self.calls: list[tuple] = []
        for name, fn in {
            "is_available": lambda: True,
            "device_count": lambda: 1,
            "set_device": lambda device: self.calls.append(("set_device", device)),
            "set_per_process_memory_fraction": lambda fraction, device: self.calls.append(("fraction", fraction, device)),
            "mem_get_info": lambda device=None: (4 * GIB, 16 * GIB),
            "memory_reserved": lambda device=None: 0,
            "get_device_properties": lambda device=None: SimpleNamespace(total_memory=16 * GIB),
        }.items():
            monkeypatch.setattr(torch.cuda, name, fn)


def test_a_fractional_gpu_caps_the_process_memory_and_sizes_resident_data_by_the_share(monkeypatch):
    # The cap is the share less what a CUDA process holds outside torch's allocator (its context and workspaces,
    # D.OUTSIDE_ALLOCATOR_BYTES: 0.5 GiB), so that 4 trials of 0.25 fit one GPU with all they hold.
    cuda = FakeCuda(monkeypatch)
    gpu = torch.device("cuda", 0)
    assert D.prepare_device(gpu, gpu_share=0.25) == gpu
    assert ("fraction", 0.25 - 0.5 / 16, gpu) in cuda.calls
    assert D.memory_budget(gpu, 0.25) == int(3.5 * GIB)  # 4 GiB of share, 0.5 GiB of it outside the allocator
    assert D.memory_budget(gpu, 0.5) == 4 * GIB  # 7.5 GiB allowed, but only 4 GiB free
    budget = D.memory_budget(gpu, 0.1)  # 1.6 GiB of share: 1.1 GiB for the allocator
    assert budget == int((0.1 - 0.5 / 16) * 16 * GIB)
    assert train._fits_on_device(int(budget * train.DEVICE_DATA_FRACTION) - 1, gpu, 0.1)
    assert not train._fits_on_device(int(4 * GIB * train.DEVICE_DATA_FRACTION), gpu, 0.1)
    assert train._fits_on_device(int(4 * GIB * train.DEVICE_DATA_FRACTION), gpu, 1.0)
    with pytest.raises(D.DeviceError, match=r"cannot hold a CUDA process's own 0.50 GiB"):
        D.prepare_device(gpu, gpu_share=0.02)  # 0.32 GiB


def test_a_whole_gpu_sets_no_memory_cap(monkeypatch):
    cuda = FakeCuda(monkeypatch)
    D.prepare_device(torch.device("cuda", 0), gpu_share=1.0)
    assert not [c for c in cuda.calls if c[0] == "fraction"]


def test_more_than_one_gpu_per_trial_is_refused():
    assert gpu_request_error(2) is not None
    assert gpu_request_error(1) is None and gpu_request_error(0.25) is None and gpu_request_error(0) is None
    assert "context" in gpu_request_error(0.5 / 192) and gpu_request_error(0.01) is None


def test_a_share_too_small_for_this_hosts_gpu_is_refused_before_ray_starts(monkeypatch):
    # 0.01 of a 16 GiB GPU is 0.16 GiB: less than a CUDA process holds outside the allocator.
    from search.config import capacity
    from search.config.schema import ConfigError

    monkeypatch.setattr(capacity, "host_gpus", lambda: 1)
    monkeypatch.setattr(D, "smallest_gpu_bytes", lambda: 16 * 2**30)
    cfg = SimpleNamespace(resources=SimpleNamespace(cpus_per_trial=1, gpus_per_trial=0.01))
    with pytest.raises(ConfigError, match="cannot hold a CUDA process's own 0.50 GiB"):
        capacity.check_this_host(cfg, split=None, cpus=2)


def run(data, params=PARAMS, epochs=3, **kw):
    reports = []
    train_trial(params, data, TrainSettings(max_epochs=epochs, **kw), lambda m, s: reports.append(m))
    return reports


def test_a_device_spelled_with_an_index_trains_as_the_plain_one(wine):
    assert run(wine, device="cpu:0") == run(wine, device="cpu")


def test_validation_is_fp32_even_inside_an_autocast_region(wine):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(wine.x_train.shape[1], 64), torch.nn.ReLU(), torch.nn.Linear(64, 3))
    args = (torch.nn.functional.cross_entropy, wine.task, torch.tensor(wine.x_val), torch.tensor(wine.y_val),
            wine.preprocessor, torch.device("cpu"))
    plain = train._evaluate(model, *args)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = train._evaluate(model, *args)
    assert inside == plain


def test_a_resumed_trial_with_dropout_continues_exactly(wine, tmp_path):
    settings = TrainSettings(max_epochs=5, checkpoint_every=1)
    uninterrupted, snapshots = [], []
    train_trial(PARAMS, wine, settings, lambda m, s: uninterrupted.append(m))
    train_trial(PARAMS, wine, TrainSettings(max_epochs=2, checkpoint_every=1), lambda m, s: snapshots.append(s))
    # Through the files a checkpoint really is, as Tune hands it back.
    save_checkpoint(tmp_path, snapshots[-1].state, snapshots[-1].description)
    torch.manual_seed(12345)  # whatever the process did in between
    resumed = []
    train_trial(PARAMS, wine, settings, lambda m, s: resumed.append(m), resume=load_checkpoint(tmp_path))
    assert [m["epoch"] for m in resumed] == [3, 4, 5]
    assert resumed == uninterrupted[2:]


def test_compile_survives_a_reused_worker(wine, monkeypatch, caplog):
    # Ray runs trial after trial in one process; Dynamo's caches are per process. Each trial has its own dropout rate
    # (a recompile each); before every trial started from empty caches, the third hit the recompile limit and fell
    # back to eager without a word. The eager backend traces and guards as inductor does, in a fraction of the time.
    from torch._dynamo.utils import counters

    monkeypatch.setattr(train, "COMPILE_BACKEND", "eager")
    counters.clear()
    with caplog.at_level(logging.WARNING):
        for dropout in (0.0, 0.1, 0.2, 0.3, 0.4):
            params = {**PARAMS, "dropout": dropout}
            # Warm-up graphs leave no trace: same weights, statistics and dropout draws as uncompiled training.
            assert run(wine, params, epochs=2, compile=True) == run(wine, params, epochs=2)
    assert "torch.compile failed" not in caplog.text
    assert "recompile_limit" not in caplog.text and "cache_size_limit" not in caplog.text
    assert counters["stats"]["unique_graphs"] >= 4


def test_a_temporary_checkpoint_holds_the_random_state(wine):
    snapshots = []
    train_trial(PARAMS, wine, TrainSettings(max_epochs=1), lambda m, s: snapshots.append(s))
    with tempfile.TemporaryDirectory() as directory:
        save_checkpoint(directory, snapshots[0].state, snapshots[0].description)
        assert torch.equal(load_checkpoint(directory)["rng"]["cpu"], snapshots[0].state["rng"]["cpu"])
