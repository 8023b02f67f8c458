"""The training loop every trial runs. Plain PyTorch: no Ray, no MLflow.

``train_trial`` trains the MLP a trial's hyperparameters describe and hands each epoch's metrics (and, when a
checkpoint is due, a :class:`Snapshot` of everything needed to resume) to a ``report`` callable. The Ray adapter
turns that into ``tune.report``; tests pass a list's ``append``.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from trainables.data import TrialData
from trainables.metrics import loss_function, loss_target, metric_mode, validation_metrics
from trainables.model import architecture_from_params, build_mlp

OPTIMIZERS = ("adam", "adamw", "sgd")
EVAL_BATCH = 8192  # validation runs in large batches: no gradients, so memory is not the limit


class TrainingDiverged(RuntimeError):
    """The training loss became NaN or infinite; the trial cannot recover."""


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
    checkpoint_every: int = 1  # epochs between checkpoints; improvements and the last epoch are always saved
    amp: bool = True  # bf16 autocast on CUDA; ignored on CPU
    num_threads: int = 1  # intra-op threads; follows the CPUs a trial was given


def trial_seed(params: dict, base_seed: int) -> int:
    """A seed derived from the hyperparameters, so the same configuration trains the same way every time."""
    text = json.dumps(params, sort_keys=True, default=str) + str(base_seed)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def make_optimizer(params: dict, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``params['optimizer']`` with its learning rate, weight decay and momentum."""
    name = params.get("optimizer", "adam")
    lr = float(params.get("lr", 1e-3))
    weight_decay = float(params.get("weight_decay", 0.0))
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        momentum = float(params.get("momentum", 0.9))
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optimizer {name!r}; choose from {list(OPTIMIZERS)}")


def train_trial(
    params: dict,
    data: TrialData,
    settings: TrainSettings,
    report: Report,
    resume: dict | None = None,
) -> None:
    """Train one configuration for up to ``settings.max_epochs`` epochs, reporting once per epoch.

    ``resume`` is a state previously handed out in a :class:`Snapshot`; training continues at the epoch after it.
    Raises :class:`TrainingDiverged` when the training loss stops being finite.
    """
    device = torch.device(settings.device)
    seed = trial_seed(params, settings.seed)
    torch.manual_seed(seed)
    task = data.task
    prep = data.preprocessor
    n_outputs = len(prep["classes"]) if task == "multiclass" else 1
    arch = architecture_from_params(params, data.x_train.shape[1], n_outputs)
    model = build_mlp(arch).to(device)
    optimizer = make_optimizer(params, model)
    loss_fn = loss_function(task)
    description = {"architecture": arch.to_dict(), "preprocessor": prep, "params": params}

    # The whole dataset lives on the device; batches are slices of a shuffled index (no DataLoader collation).
    # torch.tensor copies: arrays from Ray's object store are read-only.
    x_train, y_train, x_val, y_val = (
        torch.tensor(a, device=device) for a in (data.x_train, data.y_train, data.x_val, data.y_val)
    )
    batch_size = int(params.get("batch_size", 64))
    use_amp = settings.amp and device.type == "cuda"

    sign = 1.0 if metric_mode(settings.metric) == "min" else -1.0
    start_epoch, best = 1, {"best_epoch": 0, "best_value": math.inf, "best_model": None}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        start_epoch = int(resume["epoch"]) + 1
        best = {k: resume[k] for k in best}

    for epoch in range(start_epoch, settings.max_epochs + 1):
        # Seeding the shuffle by epoch makes a resumed trial see the same batches it would have seen.
        generator = torch.Generator().manual_seed(seed + epoch)
        train_loss = _train_epoch(model, optimizer, loss_fn, task, x_train, y_train, batch_size, generator, use_amp)
        if not math.isfinite(train_loss):
            raise TrainingDiverged(f"training loss is {train_loss} at epoch {epoch}")
        metrics = {"epoch": epoch, "train_loss": train_loss, **_evaluate(model, loss_fn, task, x_val, y_val, prep, use_amp)}
        value = metrics.get(settings.metric, metrics["val_loss"])
        improved = math.isfinite(value) and sign * value < best["best_value"]
        if improved:
            best = {"best_epoch": epoch, "best_value": sign * value, "best_model": _cpu_copy(model.state_dict())}
        metrics[f"best_{settings.metric}"] = sign * best["best_value"]
        metrics["best_epoch"] = best["best_epoch"]
        metrics["finished"] = epoch == settings.max_epochs
        due = improved or epoch % settings.checkpoint_every == 0 or metrics["finished"]
        snapshot = None
        if due and best["best_model"] is not None:
            state = {"epoch": epoch, "model": _cpu_copy(model.state_dict()), "optimizer": optimizer.state_dict(), **best}
            snapshot = Snapshot(state=state, description=description)
        report(metrics, snapshot)


def _train_epoch(model, optimizer, loss_fn, task, x, y, batch_size, generator, use_amp) -> float:
    """One pass over the training data in shuffled mini-batches; returns the mean training loss."""
    model.train()
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device)
    total = torch.zeros((), device=x.device)  # summed on the device: no host sync per batch
    for start in range(0, n, batch_size):
        idx = order[start : start + batch_size]
        if idx.numel() < 2 and n > 1:
            continue  # a batch of one row breaks batch norm and adds nothing
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = loss_fn(model(x[idx]), loss_target(task, y[idx]))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.detach().float() * idx.numel()
    return float(total) / n


def _evaluate(model, loss_fn, task, x, y, prep, use_amp) -> dict[str, float]:
    """Validation loss and task metrics, computed in large batches without gradients."""
    model.eval()
    with torch.inference_mode(), torch.autocast(device_type=x.device.type, dtype=torch.bfloat16, enabled=use_amp):
        outputs = torch.cat([model(x[i : i + EVAL_BATCH]) for i in range(0, x.shape[0], EVAL_BATCH)]).float()
        val_loss = float(loss_fn(outputs, loss_target(task, y)))
    return {"val_loss": val_loss, **validation_metrics(task, outputs, y, prep.get("target_scale", 1.0))}


def _cpu_copy(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in copy.copy(state_dict).items()}
