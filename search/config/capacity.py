"""Will the trials fit in memory? A size estimate of the largest network a space allows, and of the data, against
this host's memory, made before Ray starts (and, without the data, by `hps validate`).

A search whose largest network cannot fit used to be found out by the kernel's OOM killer, taking whatever shares
the host with it. The estimate is deliberately simple and on the generous side; it names the biggest contributor
so the user knows what to lower. ``limits.memory_fraction`` sets the share of the host's memory the trials running
at once may take together.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.config.schema import CategoricalParam, ConfigError, FloatParam, HpsConfig, IntParam
from trainables.params import DEFAULT_BATCH_SIZE, DEFAULT_N_LAYERS, DEFAULT_UNITS

FLOAT_BYTES = 4  # float32 weights, activations and data
EVAL_BATCH = 8192  # rows a trial validates at once (trainables.train.EVAL_BATCH; kept here so validate needs no torch)
# Per parameter, per fold: weights, gradients, Adam's two moments, plus the copies a trial keeps of its best epoch and
# writes into a checkpoint (weights and optimizer state again, while it is being saved).
COPIES_ADAM, COPIES_SGD = 8, 7
# Inputs of a file source before it is read (`hps validate` does not read data): at least one column.
UNKNOWN_INPUTS = 1
# Feature columns of the bundled sources, so `hps validate` sizes their first layer right.
BUNDLED_INPUTS = {"digits": 64, "wine": 13, "iris": 4, "breast_cancer": 30, "diabetes": 10, "idx": 784}
GIB = 2**30


@dataclass(frozen=True)
class DataShape:
    """What the memory estimate needs to know about the data: rows a trial trains and validates on (per fold),
    encoded network inputs and outputs, and the number of folds each trial trains."""

    rows: int
    inputs: int
    outputs: int
    folds: int = 1


def host_memory() -> int:
    """Bytes of memory this process may use: the machine's physical memory, or a container's (cgroup) limit when
    that is lower."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if text.isdigit():  # "max" (no limit) is not
            total = min(total, int(text))
    return total


def _largest(spec: Any, default: Any) -> Any:
    """The largest value a space entry can produce (its default when the space leaves it out)."""
    if spec is None:
        return default
    if isinstance(spec, (IntParam, FloatParam)):
        return spec.high
    if isinstance(spec, CategoricalParam):
        return max(spec.choices)
    return spec


def _optimizer_copies(spec: Any) -> int:
    """Copies of each parameter the optimizers a space allows keep (Adam the most); the trainable's default is Adam."""
    values = spec.choices if isinstance(spec, CategoricalParam) else [spec if spec is not None else "adam"]
    return COPIES_SGD if all(v == "sgd" for v in values) else COPIES_ADAM


def host_cpus() -> int:
    """CPUs this process may run on (a container's or taskset's share, not the whole machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def concurrent_trials(cfg: HpsConfig) -> int:
    """Trials that run at once on this host: the searcher's limit, the trial count and the CPUs they need."""
    # Packed trials share a worker's CPUs, `pack` trials to a worker.
    by_cpu = max(1, math.floor(host_cpus() / cfg.resources.cpus_per_trial)) * cfg.resources.pack
    return max(1, min(cfg.search.max_concurrent, cfg.search.num_samples, by_cpu))


def trial_bytes(cfg: HpsConfig, shape: DataShape) -> tuple[int, int, dict]:
    """Bytes one trial needs for its largest network (model state and a batch of activations) and for its own copy
    of the data, plus a description of that network for messages."""
    space = cfg.space
    layers = int(_largest(space.get("n_layers"), DEFAULT_N_LAYERS))
    units = int(_largest(space.get("units"), DEFAULT_UNITS))
    batch = int(_largest(space.get("batch_size"), DEFAULT_BATCH_SIZE))
    if shape.rows:
        batch = min(batch, shape.rows)  # a batch never holds more rows than the data
    widths = [shape.inputs] + [units] * layers + [shape.outputs]
    params = sum(a * b + b for a, b in zip(widths, widths[1:])) + 2 * units * layers  # + norm scale and shift
    model = params * _optimizer_copies(space.get("optimizer")) * shape.folds * FLOAT_BYTES
    # Each hidden layer keeps ~4 tensors per row for the backward pass (linear, norm, activation, dropout mask), and
    # their gradients; validation (no gradients) holds two layers' outputs of a large batch at a time.
    train_activations = batch * (shape.inputs + 8 * units * layers + shape.outputs) * FLOAT_BYTES
    eval_rows = min(EVAL_BATCH, shape.rows) if shape.rows else EVAL_BATCH
    eval_activations = eval_rows * (shape.inputs + 2 * units) * FLOAT_BYTES
    data = shape.folds * shape.rows * (shape.inputs + 1) * FLOAT_BYTES  # a trial copies its arrays into tensors
    network = {"layers": layers, "units": units, "batch": batch, "params": params}
    return model + max(train_activations, eval_activations), data, network


def check_fits(cfg: HpsConfig, shape: DataShape | None = None, memory: int | None = None) -> None:
    """Refuse (ConfigError, one line) a search whose trials running at once cannot fit in the memory they will have.

    ``shape`` is the loaded data's; without it (`hps validate`) only the network is sized, with the input width of
    a bundled dataset or a single input. ``memory`` defaults to :func:`host_memory`.
    """
    if shape is None:
        kind, _, name = cfg.data.source.partition(":")
        inputs = BUNDLED_INPUTS.get(name if kind == "sklearn" else kind, UNKNOWN_INPUTS)
        shape = DataShape(rows=0, inputs=inputs, outputs=1, folds=cfg.data.split.folds or 1)
    memory = host_memory() if memory is None else memory
    usable = cfg.limits.memory_fraction * memory
    at_once = concurrent_trials(cfg)
    per_trial, data, net = trial_bytes(cfg, shape)
    # The driver holds the trials' arrays once and Ray's object store once more; each trial copies them again.
    needed = at_once * (per_trial + data) + 2 * data
    if needed <= usable:
        return
    network = (f"the largest network the space allows ({net['layers']} hidden layer(s) of {net['units']} units, "
               f"batch {net['batch']}: {net['params']:.3g} parameters) needs ~{per_trial / GIB:.3g} GiB per trial")
    data_part = f", its data ~{data / GIB:.3g} GiB per trial" if data else ""
    budget = (f"{at_once} trial(s) at once get {usable / GIB:.3g} GiB together ({cfg.limits.memory_fraction:g} of "
              f"this host's {memory / GIB:.3g} GiB, limits.memory_fraction)")
    if per_trial >= data:
        key, advice = "space", "lower space.units / space.n_layers / space.batch_size or search.max_concurrent"
    else:
        key, advice = "data", "use fewer rows or columns (data.features / data.drop) or lower search.max_concurrent"
    raise ConfigError(key, f"does not fit in memory: {network}{data_part}; {budget}; {advice}")


def shape_of(split) -> DataShape:
    """The :class:`DataShape` of a loaded :class:`trainables.data.SplitDataset` (before its arrays are made)."""
    prep = split.preprocessor
    return DataShape(rows=len(split.train_idx) + len(split.val_idx), inputs=len(prep.encoded_names),
                     outputs=prep.n_outputs, folds=len(split.folds) if split.folds is not None else 1)


def host_gpus() -> int:
    """GPUs this process can use (what a Ray started here will offer its trials)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_this_host(cfg: HpsConfig, split, cpus: int | None = None, memory: int | None = None,
                    gpus: int | None = None) -> None:
    """What `hps run` checks before it starts a Ray of its own on this host: a trial's CPUs and GPU exist here (Tune
    would otherwise wait for ever for a node that can take it), and the trials and their data fit in memory."""
    cpus = host_cpus() if cpus is None else cpus
    if cfg.resources.cpus_per_trial > cpus:
        raise ConfigError("resources.cpus_per_trial", f"{cfg.resources.cpus_per_trial:g} CPUs per trial, but this host "
                          f"has {cpus}: no trial could ever start (use --address to run on a larger Ray cluster)")
    if cfg.resources.gpus_per_trial > 0 and (host_gpus() if gpus is None else gpus) == 0:
        raise ConfigError("resources.gpus_per_trial", f"{cfg.resources.gpus_per_trial:g} GPU per trial, but this host "
                          "has no GPU torch can use: no trial could ever start (set 0, or use --address to run on a "
                          "Ray cluster with GPUs)")
    share = cfg.resources.gpus_per_trial
    if 0 < share < 1 and gpus is None and host_gpus():  # the GPUs here are known: each must hold a trial's share
        from trainables.device import DeviceError, allocator_fraction, smallest_gpu_bytes

        try:
            allocator_fraction(share, smallest_gpu_bytes())
        except DeviceError as exc:
            raise ConfigError("resources.gpus_per_trial", str(exc)) from None
    check_fits(cfg, shape_of(split), memory=memory)
