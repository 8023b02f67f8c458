"""Which device a trial trains on, and how it behaves there. Plain PyTorch: no Ray.

The decision comes from what the scheduler *assigned* (the GPU ids Ray gave the trial), never from what the process
can see: Ray 2.60 no longer hides GPUs from workers that asked for none (``CUDA_VISIBLE_DEVICES`` is left alone when
``num_gpus=0``), so ``torch.cuda.is_available()`` is true for every trial on a GPU node, and a CPU-only trial that
trusted it would pile onto GPU 0 without the scheduler counting it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import torch

from trainables.names import OUTSIDE_ALLOCATOR_BYTES

log = logging.getLogger(__name__)


class DeviceError(RuntimeError):
    """A trial was assigned a GPU it cannot use (CPU-only torch build, driver missing, ...)."""


def trial_device(gpu_ids: Sequence[str | int], visible: str | None = None) -> torch.device:
    """The device of a trial that was assigned ``gpu_ids`` (Ray's ``ray.get_gpu_ids()``): the CPU for none, else the
    first assigned GPU as an *indexed* ``cuda`` device.

    Ray exposes a trial's GPUs through ``CUDA_VISIBLE_DEVICES`` (``visible``; read from the environment when None), so
    torch numbers them from 0; where that variable does not list the assigned id (Ray told not to set it), the id is
    the torch index itself.
    """
    if not gpu_ids:
        return torch.device("cpu")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES") if visible is None else visible
    first = str(gpu_ids[0]).strip()
    listed = [v.strip() for v in visible.split(",")] if visible else []
    index = listed.index(first) if first in listed else int(first)
    return torch.device("cuda", index)


def local_device(gpus_per_trial: float) -> torch.device:
    """The device for work done outside Ray on this machine for a search (refit, benchmarks): a GPU only when the
    search's trials had one and this machine has one, so it trains the way the trials did."""
    if gpus_per_trial > 0 and torch.cuda.is_available():
        return torch.device("cuda", 0)
    return torch.device("cpu")


def hide_gpus_from_cpu_trial(device: torch.device) -> None:
    """Make a CPU trial's process unable to initialise CUDA by accident (a library, a stray ``.cuda()``).

    Only effective before CUDA is first initialised in the process, which is the case for a fresh Ray worker; a
    reused worker keeps the resources it was started with, so it never switches between CPU and GPU trials.
    """
    if device.type == "cpu" and not torch.cuda.is_initialized():
        os.environ["CUDA_VISIBLE_DEVICES"] = ""


def canonical(device: str | torch.device) -> torch.device:
    """``device`` with an explicit index when it is an accelerator (``"cuda"`` becomes ``cuda:<current device>``).

    Tensors always carry an index on CUDA; a device spelled without one compares unequal to them
    (``torch.device("cuda:0") != torch.device("cuda")``), so every device the training loop uses goes through here.
    """
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device() if torch.cuda.is_available() else 0)
    return device


def same_device(a: torch.device, b: torch.device) -> bool:
    """Whether two devices are the same place, however they were spelled (``cuda`` vs ``cuda:0``, ``cpu`` vs ``cpu:0``)."""
    if a.type != b.type:
        return False
    if a.type == "cpu":
        return True  # one host memory, whatever index was written
    return canonical(a) == canonical(b)


def prepare_device(device: torch.device, gpu_share: float = 1.0) -> torch.device:
    """Check that a GPU device can be used and configure it the way every trial and refit trains: TF32 matmuls, and
    when the trial holds a fraction of the GPU (``0 < gpu_share < 1``), that fraction as the process's memory cap.

    Returns the canonical (indexed) device. Raises :class:`DeviceError` when a GPU was assigned but CUDA is not usable
    here, instead of silently training on the CPU while the scheduler counts a GPU as busy.
    """
    device = canonical(device)
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise DeviceError(f"this trial was given GPU {device.index}, but torch {torch.__version__} cannot use CUDA "
                          "here (CPU-only build or no driver); install a CUDA build of torch on GPU workers")
    if device.index >= torch.cuda.device_count():
        raise DeviceError(f"this trial was given GPU {device.index}, but only {torch.cuda.device_count()} are visible")
    torch.cuda.set_device(device)
    # TF32 keeps fp32 storage and ranges; on Ampere and later it runs matmuls on tensor cores at ~1e-3 relative
    # precision, well inside what SGD noise tolerates. Validation and metrics are unaffected by the choice of
    # storage type: they stay fp32 (see trainables.train._evaluate).
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    if 0 < gpu_share < 1:
        # Ray's fractional GPUs are logical only: without a cap, one trial's caching allocator can take memory its
        # neighbours on the same GPU were promised. Exceeding the share raises an out-of-memory error in this trial.
        total = torch.cuda.get_device_properties(device).total_memory
        torch.cuda.set_per_process_memory_fraction(allocator_fraction(gpu_share, total), device)
    return device


def smallest_gpu_bytes() -> int:
    """The memory of the smallest GPU this process sees (the one a fractional share must fit on any of them)."""
    return min(torch.cuda.get_device_properties(i).total_memory for i in range(torch.cuda.device_count()))


def allocator_fraction(gpu_share: float, total_bytes: int, outside_bytes: int = OUTSIDE_ALLOCATOR_BYTES) -> float:
    """The caching allocator's cap, as a fraction of a GPU of ``total_bytes``, for a process holding ``gpu_share`` of
    it: the share less what the process holds outside the allocator, so that all it holds stays within its share.
    Raises :class:`DeviceError` for a share too small to hold even that."""
    fraction = gpu_share - outside_bytes / total_bytes
    if fraction <= 0:
        raise DeviceError(f"a GPU share of {gpu_share:g} ({gpu_share * total_bytes / 2**30:.2f} GiB) cannot hold a CUDA "
                          f"process's own {outside_bytes / 2**30:.2f} GiB (context, cuBLAS workspace): raise "
                          "resources.gpus_per_trial")
    return fraction


def memory_budget(device: torch.device, gpu_share: float = 1.0) -> int | None:
    """Bytes this process may still allocate on ``device``: the free memory, capped by its share of the whole GPU
    minus what it already holds. None on the CPU (host memory is not budgeted here)."""
    if device.type != "cuda":
        return None
    free, total = torch.cuda.mem_get_info(device)
    share = allocator_fraction(gpu_share, total) if 0 < gpu_share < 1 else 1.0
    held = torch.cuda.memory_reserved(device)
    return int(max(0, min(free, share * total - held)))
