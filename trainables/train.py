"""The training loop every trial runs. Plain PyTorch: no Ray, no MLflow.

``train_trial`` trains the MLP a trial's hyperparameters describe and hands each epoch's metrics (and, when a
checkpoint is due, a :class:`Snapshot` of everything needed to resume) to a ``report`` callable. The Ray adapter
turns that into ``tune.report``; tests pass a list's ``append``.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trainables.data import TrialData
from trainables.metrics import loss_function, loss_target, metric_mode, validation_metrics
from trainables.model import Architecture, architecture_from_params, build_mlp

OPTIMIZERS = ("adam", "adamw", "sgd")
EVAL_BATCH = 8192  # validation runs in large batches: no gradients, so memory is not the limit
# Data stays resident on a GPU only while it takes at most this share of the free device memory: trials sharing a
# GPU (fractional gpus_per_trial) each upload their own copy, and activations and optimizer state need room too.
DEVICE_DATA_FRACTION = 0.2
# Cross-validation fold i starts from seed + i * this: its own initialization and batch order, far from the
# per-epoch shuffle seeds (seed + epoch) of the other folds.
FOLD_SEED_STRIDE = 1_000_003

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    """A resumable training state plus the JSON description of the model it holds."""

    state: dict
    description: dict


Report = Callable[[dict, "Snapshot | None"], None]


@dataclass
class TrainSettings:
    """How to train, as opposed to what (the hyperparameters)."""

    max_epochs: int
    metric: str = "val_loss"
    seed: int = 0
    device: str = "cpu"
    checkpoint_every: int = 1  # epochs between checkpoints; the last epoch and decision epochs are always saved
    # Epochs at which a scheduler may stop the trial (ASHA's rungs): checkpointed too, so a stopped trial's best
    # weights (kept in memory between checkpoints) are never lost.
    decision_epochs: frozenset[int] = frozenset()
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    num_threads: int = 1  # intra-op threads; follows the CPUs a trial was given
    compile: bool = False  # torch.compile the model; its compile time (~20 s on CPU) dwarfs short trials
    # Shortest time between two reports to the scheduler; shorter epochs travel together (trainables.reporting).
    report_interval_s: float = 0.0
    stream: bool | None = None  # keep data in host memory and move batches; None: only when it does not fit the device


def trial_seed(params: dict, base_seed: int) -> int:
    """A seed derived from the hyperparameters, so the same configuration trains the same way every time."""
    text = json.dumps(params, sort_keys=True, default=str) + str(base_seed)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def make_optimizer(params: dict, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``params['optimizer']`` with its learning rate, weight decay and momentum."""
    name = params.get("optimizer", "adam")
    lr = float(params.get("lr", 1e-3))
    weight_decay = float(params.get("weight_decay", 0.0))
    # One fused kernel per parameter instead of a handful of small ops: on small MLPs the optimizer step is a
    # large share of each batch's time (CPU and CUDA support it).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        momentum = float(params.get("momentum", 0.9))
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer {name!r}; choose from {list(OPTIMIZERS)}")


def train_trial(
    params: dict,
    data: TrialData | Sequence[TrialData],
    settings: TrainSettings,
    report: Report,
    resume: dict | None = None,
) -> None:
    """Train one configuration for up to ``settings.max_epochs`` epochs, reporting once per epoch.

    ``data`` is one train/validation split, or one per cross-validation fold: then a model is trained on each fold
    in lockstep, and each epoch's metrics are their means over the folds (weighted by the folds' sizes), plus the
    standard deviation of ``settings.metric`` over the folds (ddof 0, as ``cross_val_score(...).std()`` gives) under
    :func:`fold_std_name`. The model a snapshot carries is the first fold's. ``resume`` is a state previously handed out in a :class:`Snapshot`;
    training continues at the epoch after it. If the training loss stops being finite the trial ends with a last
    report carrying ``diverged`` (the reason).
    """
    device = torch.device(settings.device)
    folds = [_Fold.build(params, d, settings, device, i) for i, d in enumerate([data] if isinstance(data, TrialData) else data)]
    first = folds[0]
    description = {"architecture": first.arch.to_dict(), "preprocessor": first.data.preprocessor, "params": params}
    if len(folds) > 1:  # the logged model was trained on part of the development rows: say which part
        description["cross_validation"] = {"fold": 1, "folds": len(folds)}
    batch_size = int(params.get("batch_size", 64))
    use_amp = settings.amp and device.type == "cuda"

    sign = 1.0 if metric_mode(settings.metric) == "min" else -1.0
    start_epoch, best = 1, {"best_epoch": 0, "best_value": math.inf, "best_model": None}
    if resume is not None:
        for fold, model_state, optimizer_state in zip(folds, _per_fold(resume["model"]), _per_fold(resume["optimizer"])):
            fold.model.load_state_dict(model_state)
            fold.optimizer.load_state_dict(optimizer_state)
        start_epoch = int(resume["epoch"]) + 1
        best = {k: resume[k] for k in best}

    for epoch in range(start_epoch, settings.max_epochs + 1):
        results = []
        for fold in folds:
            train_loss, evaluation = fold.epoch(epoch, batch_size, use_amp, device)
            if evaluation is None:
                # A diverged trial cannot recover; retrying it would diverge again. It ends here, reported as such
                # (worst possible value, so schedulers rank it last), instead of raising and being retried.
                reason = f"training loss became {train_loss}" if not math.isfinite(train_loss) else "outputs became infinite"
                report(_diverged_result(epoch, reason, settings.metric, sign, best), None)
                return
            results.append({"train_loss": train_loss, **evaluation})
        metrics = {"epoch": epoch, **_mean_over_folds(results, [len(f.data.y_val) for f in folds])}
        if len(folds) > 1 and settings.metric in results[0]:
            # How much the folds disagree tells whether two trials' means differ by more than the luck of the cut.
            metrics[fold_std_name(settings.metric)] = statistics.pstdev(r[settings.metric] for r in results)
        value = metrics.get(settings.metric, metrics["val_loss"])
        improved = math.isfinite(value) and sign * value < best["best_value"]
        if improved:
            best = {"best_epoch": epoch, "best_value": sign * value, "best_model": _cpu_copy(first.model.state_dict())}
        metrics[f"best_{settings.metric}"] = sign * best["best_value"]
        metrics["best_epoch"] = best["best_epoch"]
        metrics["finished"] = epoch == settings.max_epochs
        due = epoch % settings.checkpoint_every == 0 or epoch in settings.decision_epochs or metrics["finished"]
        snapshot = None
        if due and best["best_model"] is not None:
            models = [_cpu_copy(f.model.state_dict()) for f in folds]
            optimizers = [f.optimizer.state_dict() for f in folds]
            # One fold keeps the checkpoint format of a plain trial; folds store one entry per fold.
            state = {"epoch": epoch, "model": models if len(folds) > 1 else models[0],
                     "optimizer": optimizers if len(folds) > 1 else optimizers[0], **best}
            snapshot = Snapshot(state=state, description=description)
        report(metrics, snapshot)


@dataclass
class _Fold:
    """One model in training with its data: a trial has one, or one per cross-validation fold."""

    data: TrialData
    arch: Architecture
    model: nn.Module
    net: nn.Module  # the model, compiled when asked
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    tensors: list[torch.Tensor]  # x_train, y_train, x_val, y_val
    seed: int

    @classmethod
    def build(cls, params: dict, data: TrialData, settings: TrainSettings, device: torch.device, index: int) -> _Fold:
        # Fold 0 trains exactly as a trial without folds (and as its refit); others get their own initialization.
        seed, arch, model, optimizer, loss_fn = _setup(params, data, settings.seed, device, FOLD_SEED_STRIDE * index)
        tensors = _place_data(data, device, settings.stream)
        net = _maybe_compile(model, tensors[2][:2].to(device)) if settings.compile else model
        return cls(data, arch, model, net, optimizer, loss_fn, tensors, seed)

    def epoch(self, epoch: int, batch_size: int, use_amp: bool, device: torch.device) -> tuple[float, dict | None]:
        """Train one epoch and validate; the validation metrics are None when the model diverged."""
        x_train, y_train, x_val, y_val = self.tensors
        # Seeding the shuffle by epoch makes a resumed trial see the same batches it would have seen.
        generator = torch.Generator().manual_seed(self.seed + epoch)
        task = self.data.task
        train_loss = _train_epoch(self.net, self.optimizer, self.loss_fn, task, x_train, y_train, batch_size, generator,
                                  use_amp, device)
        if not math.isfinite(train_loss):
            return train_loss, None
        return train_loss, _evaluate(self.net, self.loss_fn, task, x_val, y_val, self.data.preprocessor, use_amp, device)


def fold_std_name(metric: str) -> str:
    """The name under which a cross-validated trial reports the spread of ``metric`` over its folds."""
    return f"{metric}_fold_std"


def _per_fold(saved: dict | list[dict]) -> list[dict]:
    return saved if isinstance(saved, list) else [saved]


def _mean_over_folds(results: list[dict[str, float]], sizes: list[int]) -> dict[str, float]:
    """Each metric's mean over the folds, weighted by their validation rows (one fold: its metrics, untouched)."""
    if len(results) == 1:
        return results[0]
    total = sum(sizes)
    return {key: sum(size * r[key] for r, size in zip(results, sizes)) / total for key in results[0]}


def train_epochs(params: dict, data: TrialData, epochs: int, base_seed: int = 0, device: str = "cpu") -> tuple[Architecture, dict]:
    """Train a configuration for exactly ``epochs`` epochs on ``data``'s training rows and return its architecture and
    final weights (on the CPU). Nothing is held out, so nothing is selected: this is the retraining of a chosen
    configuration on training + validation rows ("refit"), with the same initialization and batch-order rules as
    :func:`train_trial`. Raises ``FloatingPointError`` if the training loss stops being finite.
    """
    torch_device = torch.device(device)
    seed, arch, model, optimizer, loss_fn = _setup(params, data, base_seed, torch_device)
    x = torch.tensor(data.x_train, device=torch_device)
    y = torch.tensor(data.y_train, device=torch_device)
    batch_size = int(params.get("batch_size", 64))
    for epoch in range(1, epochs + 1):
        generator = torch.Generator().manual_seed(seed + epoch)
        loss = _train_epoch(model, optimizer, loss_fn, data.task, x, y, batch_size, generator, False, torch_device)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at epoch {epoch}")
    return arch, _cpu_copy(model.state_dict())


def _setup(params: dict, data: TrialData, base_seed: int, device: torch.device, seed_offset: int = 0):
    """Seed, architecture, network, optimizer and loss of a configuration: the same for a trial and its refit."""
    seed = trial_seed(params, base_seed) + seed_offset
    torch.manual_seed(seed)
    prep = data.preprocessor
    n_outputs = len(prep["classes"]) if data.task == "multiclass" else 1
    arch = architecture_from_params(params, data.x_train.shape[1], n_outputs)
    model = build_mlp(arch).to(device)
    return seed, arch, model, make_optimizer(params, model), loss_function(data.task, params.get("loss"))


def _place_data(data: TrialData, device: torch.device, stream: bool | None) -> list[torch.Tensor]:
    """Train/validation tensors: on the device when they fit (batches are then slices of a shuffled index, no
    DataLoader collation), else in host memory (pinned on CUDA), each batch moved to the device as it is needed."""
    arrays = (data.x_train, data.y_train, data.x_val, data.y_val)
    if stream is None:
        stream = not _fits_on_device(sum(a.nbytes for a in arrays), device)
    if not stream:
        # torch.tensor copies: arrays from Ray's object store are read-only.
        return [torch.tensor(a, device=device) for a in arrays]
    log.info("training data kept in host memory; batches are moved to %s one at a time", device)
    host = [torch.tensor(a) for a in arrays]
    return [t.pin_memory() for t in host] if device.type == "cuda" else host


def _fits_on_device(nbytes: int, device: torch.device) -> bool:
    if device.type != "cuda":
        return True  # host memory: the arrays are already there
    free, _ = torch.cuda.mem_get_info(device)
    return nbytes <= DEVICE_DATA_FRACTION * free


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A batch on ``device``; from pinned host memory the copy is asynchronous (it overlaps the previous step)."""
    if t.device == device:
        return t
    return (t.pin_memory() if device.type == "cuda" else t).to(device, non_blocking=True)


def _maybe_compile(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """``torch.compile(model)``, or the model itself when compiling fails here (no C++ compiler, no Triton, ...).

    Compilation is lazy, so one eval-mode forward pass (no dropout, no batch-norm update, no RNG use) forces it
    now, where a failure can still fall back instead of failing the trial.
    """
    try:
        compiled = torch.compile(model)
        was_training = model.training
        model.eval()
        with torch.no_grad():
            compiled(example)
        model.train(was_training)
        return compiled
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: train uncompiled
        log.warning("torch.compile failed (%s: %s); training without it", type(exc).__name__, str(exc)[:200])
        return model


def _diverged_result(epoch: int, reason: str, metric: str, sign: float, best: dict) -> dict:
    worst = sign * math.inf
    return {
        "epoch": epoch,
        "diverged": f"{reason} at epoch {epoch}",
        metric: worst,
        "val_loss": math.inf,
        f"best_{metric}": sign * best["best_value"] if best["best_model"] is not None else worst,
        "best_epoch": best["best_epoch"],
        "finished": False,
    }


def _train_epoch(model, optimizer, loss_fn, task, x, y, batch_size, generator, use_amp, device) -> float:
    """One pass over the training data in shuffled mini-batches; returns the mean training loss."""
    model.train()
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device)
    losses, sizes = [], []  # kept on the device and summed once: no host sync, no extra ops per batch
    # Dropping the gradients directly is what zero_grad(set_to_none=True) does, without its per-call profiler
    # and dispatch wrappers (~40 us a batch, several percent of a small MLP's step on CPU).
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    autocast = torch.autocast(device_type=device.type, dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if idx.numel() < 2 and n > 1:
            continue  # a batch of one row breaks batch norm and adds nothing
        xb, yb = _to(x.index_select(0, idx), device), _to(y.index_select(0, idx), device)
        with autocast:
            loss = loss_fn(model(xb), loss_target(task, yb))
        for p in parameters:
            p.grad = None
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        sizes.append(idx.numel())
    if not losses:
        return 0.0
    return float(torch.stack(losses).float() @ torch.tensor(sizes, dtype=torch.float32, device=device)) / n


def _evaluate(model, loss_fn, task, x, y, prep, use_amp, device) -> dict[str, float] | None:
    """Validation loss and task metrics, computed in large batches without gradients."""
    model.eval()
    y = _to(y, device)
    with torch.inference_mode(), torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
        outputs = torch.cat([model(_to(x[i : i + EVAL_BATCH], device)) for i in range(0, x.shape[0], EVAL_BATCH)]).float()
        val_loss = float(loss_fn(outputs, loss_target(task, y)))
    if not bool(torch.isfinite(outputs).all()):
        return None  # weights blew up: no metric is meaningful
    return {"val_loss": val_loss, **validation_metrics(task, outputs, y, prep.get("target_scale", 1.0))}


def _cpu_copy(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in copy.copy(state_dict).items()}
