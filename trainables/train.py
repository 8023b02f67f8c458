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
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from trainables.device import memory_budget, prepare_device, same_device
from trainables.metrics import loss_function, loss_target, metric_mode, validation_metrics
from trainables.model import Architecture, architecture_from_params, parameter_count
from trainables.names import OPTIMIZERS
from trainables.network import CustomArchitecture, NetworkCode
from trainables.params import DEFAULT_BATCH_SIZE, default
from trainables.reporting import STOPPED_NO_IMPROVEMENT, is_last_report
from trainables.settings import TrainSettings
from trainables.trial_data import TrialData

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


def patience_ran_out(epoch: int, best_epoch: int, patience: int | None) -> bool:
    """Whether ``patience`` epochs have passed since the best one (epoch 0: no finite value yet)."""
    return patience is not None and epoch - best_epoch >= patience


def trial_seed(params: dict, base_seed: int) -> int:
    """A seed derived from the hyperparameters, so the same configuration trains the same way every time."""
    text = json.dumps(params, sort_keys=True, default=str) + str(base_seed)
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)


def make_optimizer(params: dict, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer named by ``params['optimizer']`` with its learning rate, weight decay and momentum."""
    name = params.get("optimizer", default("optimizer"))
    lr = float(params.get("lr", default("lr")))
    weight_decay = float(params.get("weight_decay", default("weight_decay")))
    # One fused kernel per parameter instead of a handful of small ops: on small MLPs the optimizer step is a
    # large share of each batch's time (CPU and CUDA support it).
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in model.parameters())
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=fused)
    if name == "sgd":
        momentum = float(params.get("momentum", default("momentum")))
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay, fused=fused)
    raise ValueError(f"unknown optimizer {name!r}; choose from {list(OPTIMIZERS)}")


def train_trial(
    params: dict,
    data: TrialData | Sequence[TrialData],
    settings: TrainSettings,
    report: Report,
    resume: dict | None = None,
) -> None:
    """Train one configuration, handing each epoch's ``(metrics, snapshot)`` of :func:`trial_epochs` to ``report``."""
    for metrics, snapshot in trial_epochs(params, data, settings, resume):
        report(metrics, snapshot)


def trial_epochs(
    params: dict,
    data: TrialData | Sequence[TrialData],
    settings: TrainSettings,
    resume: dict | None = None,
) -> Iterator[tuple[dict, Snapshot | None]]:
    """Train one configuration for up to ``settings.max_epochs`` epochs, yielding each epoch's metrics and, when a
    checkpoint is due, a :class:`Snapshot`.

    ``data`` is one train/validation split, or one per cross-validation fold: then a model is trained on each fold
    in lockstep, and each epoch's metrics are their means over the folds (weighted by the folds' sizes), plus the
    standard deviation of ``settings.metric`` over the folds (ddof 0, as ``cross_val_score(...).std()`` gives) under
    :func:`fold_std_name`. The model a snapshot carries is the first fold's. ``resume`` is a state previously handed out in a :class:`Snapshot`;
    training continues at the epoch after it. If the training loss stops being finite the trial ends with a last
    report carrying ``diverged`` (the reason). With ``settings.patience`` the trial also ends once its best value of
    ``settings.metric`` is that many epochs old: the last report then carries :data:`STOPPED_NO_IMPROVEMENT` (the
    reason), ``finished`` false, and a checkpoint with the best epoch's weights.

    Patience lives here rather than in a Ray Tune ``Stopper``: the loop already keeps the best epoch, the rule then
    holds without Ray (tests, the GPU machine), and the trial itself ends with a checkpoint of its best weights
    and a reason in its last report; a Stopper would see results only after they were reported, so that last
    report could not say it was the last (nor be forced to carry a checkpoint).
    """
    device = prepare_device(settings.device, settings.gpu_share)
    folds = [_Fold.build(params, d, settings, device, i) for i, d in enumerate([data] if isinstance(data, TrialData) else data)]
    first = folds[0]
    description = describe(first.arch, first.data, params)
    if len(folds) > 1:  # the logged model was trained on part of the development rows: say which part
        description["cross_validation"] = {"fold": 1, "folds": len(folds)}
    batch_size = int(params.get("batch_size", DEFAULT_BATCH_SIZE))
    use_amp = settings.amp and device.type == "cuda"

    progress = Progress(settings, resume)
    n_params = parameter_count(first.model)  # reported every epoch (a possible objective); fixed by the architecture
    if resume is not None:
        for fold, model_state, optimizer_state in zip(folds, _per_fold(resume["model"]), _per_fold(resume["optimizer"])):
            fold.model.load_state_dict(model_state)
            fold.optimizer.load_state_dict(optimizer_state)
        _restore_rng(resume.get("rng"), device)

    for epoch in range(progress.next_epoch, settings.max_epochs + 1):
        results = []
        for fold in folds:
            train_loss, evaluation = fold.epoch(epoch, batch_size, use_amp, device)
            if evaluation is None:
                # A diverged trial cannot recover; retrying it would diverge again. It ends here, reported as such
                # (worst possible value, so schedulers rank it last), instead of raising and being retried.
                yield progress.diverged(epoch, divergence_reason(train_loss)), None
                return
            results.append({"train_loss": train_loss, **evaluation})
        metrics = {"epoch": epoch, **_mean_over_folds(results, [len(f.data.y_val) for f in folds]),
                   "n_params": n_params}
        if len(folds) > 1 and settings.metric in results[0]:
            # How much the folds disagree tells whether two trials' means differ by more than the luck of the cut.
            metrics[fold_std_name(settings.metric)] = statistics.pstdev(r[settings.metric] for r in results)
        metrics = progress.record(epoch, metrics, lambda: _cpu_copy(first.model.state_dict()))
        snapshot = None
        if progress.checkpoint_due(epoch):
            models = [_cpu_copy(f.model.state_dict()) for f in folds]
            optimizers = [f.optimizer.state_dict() for f in folds]
            # One fold keeps the checkpoint format of a plain trial; folds store one entry per fold.
            state = progress.state(epoch, models if len(folds) > 1 else models[0],
                                   optimizers if len(folds) > 1 else optimizers[0], _rng_state(device))
            snapshot = Snapshot(state=state, description=description)
        yield metrics, snapshot
        if progress.stopped:
            return


class Solo:
    """A trial that trains alone, one epoch per :meth:`step`, behind :class:`trainables.packed.Pack`'s interface: a
    pack server holds the configurations that do not pack beside its packs."""

    def __init__(self) -> None:
        self.member_id: Hashable | None = None
        self.epochs: Iterator | None = None

    def __len__(self) -> int:
        return int(self.epochs is not None)

    def add(self, member_id: Hashable, params: dict, data: TrialData, settings: TrainSettings,
            resume: dict | None = None) -> bool:
        """Hold this trial (one at most); False when it has no epoch left to train."""
        if self.epochs is not None:
            raise ValueError("a Solo holds one trial")
        if resume is not None and int(resume["epoch"]) >= settings.max_epochs:
            return False
        self.member_id, self.epochs = member_id, trial_epochs(params, data, settings, resume)
        return True

    def remove(self, member_id: Hashable) -> bool:
        """Drop the trial; False if it is not the one held."""
        if self.epochs is None or member_id != self.member_id:
            return False
        self.epochs.close()
        self.epochs = None
        return True

    def step(self) -> dict[Hashable, tuple[dict, Snapshot | None]]:
        """Train the next epoch: ``{member_id: (metrics, snapshot)}``; the trial leaves after its last report."""
        if self.epochs is None:
            return {}
        member_id = self.member_id
        metrics, snapshot = next(self.epochs)
        if is_last_report(metrics):
            self.remove(member_id)
        return {member_id: (metrics, snapshot)}


class Progress:
    """The per-epoch bookkeeping of one trial, the same for a trial trained alone (:func:`train_trial`) and one
    trained in a pack (:mod:`trainables.packed`): the best epoch so far and its weights, the metrics dict reported
    each epoch, when patience has run out, when a checkpoint is due, and the last report of a diverged trial."""

    def __init__(self, settings: TrainSettings, resume: dict | None = None) -> None:
        self.settings = settings
        self.sign = 1.0 if metric_mode(settings.metric) == "min" else -1.0  # best_value is sign * metric, minimized
        self.best: dict = {"best_epoch": 0, "best_value": math.inf, "best_model": None}
        self.next_epoch = 1  # the epoch training starts (or continues) with
        self.stopped = False  # the last recorded epoch ended the trial for lack of improvement (settings.patience)
        if resume is not None:
            self.best = {k: resume[k] for k in self.best}
            self.next_epoch = int(resume["epoch"]) + 1

    def record(self, epoch: int, metrics: dict, model_state: Callable[[], dict]) -> dict:
        """``metrics`` of a finished ``epoch`` plus ``best_<metric>``, ``best_epoch``, ``finished`` and, when patience
        ran out, :data:`STOPPED_NO_IMPROVEMENT` (the trial then ends: :attr:`stopped`); ``model_state()`` (the
        weights, copied to the CPU) is called only when the epoch is the best so far."""
        s, metric = self.settings, self.settings.metric
        value = metrics.get(metric, metrics["val_loss"])
        if math.isfinite(value) and self.sign * value < self.best["best_value"]:
            self.best = {"best_epoch": epoch, "best_value": self.sign * value, "best_model": model_state()}
        self.next_epoch = epoch + 1
        best_epoch = self.best["best_epoch"]
        metrics = {**metrics, f"best_{metric}": self.sign * self.best["best_value"], "best_epoch": best_epoch,
                   "finished": epoch == s.max_epochs}
        self.stopped = not metrics["finished"] and patience_ran_out(epoch, best_epoch, s.patience)
        if self.stopped:
            since = f"best at epoch {best_epoch}" if best_epoch else "no finite value yet"
            epochs = f"{s.patience} epoch{'s' if s.patience != 1 else ''}"
            metrics[STOPPED_NO_IMPROVEMENT] = f"no improvement of {metric} in {epochs} ({since})"
        return metrics

    def checkpoint_due(self, epoch: int) -> bool:
        """Whether ``epoch``'s report carries a checkpoint: every ``checkpoint_every`` epochs, at decision epochs, at
        the last epoch and when patience ran out (never before a best model exists)."""
        s = self.settings
        due = (epoch % s.checkpoint_every == 0 or epoch in s.decision_epochs or epoch == s.max_epochs
               or self.stopped)
        return due and self.best["best_model"] is not None

    def state(self, epoch: int, model: dict | list, optimizer: dict | list, rng: dict) -> dict:
        """The resumable state a :class:`Snapshot` carries (what ``train_trial(resume=...)`` takes)."""
        return {"epoch": epoch, "model": model, "optimizer": optimizer, "rng": rng, **self.best}

    def diverged(self, epoch: int, reason: str) -> dict:
        """The last report of a trial whose training diverged at ``epoch``."""
        metric, worst = self.settings.metric, self.sign * math.inf
        return {
            "epoch": epoch,
            "diverged": f"{reason} at epoch {epoch}",
            metric: worst,
            "val_loss": math.inf,
            f"best_{metric}": self.sign * self.best["best_value"] if self.best["best_model"] is not None else worst,
            "best_epoch": self.best["best_epoch"],
            "finished": False,
        }


def divergence_reason(train_loss: float) -> str:
    """Why an epoch whose validation outputs were not usable diverged."""
    return f"training loss became {train_loss}" if not math.isfinite(train_loss) else "outputs became infinite"


def describe(arch: Architecture | CustomArchitecture, data: TrialData, params: dict) -> dict:
    """The JSON description a trial's snapshots (and so its model artifact) carry."""
    return {"architecture": arch.to_dict(), "preprocessor": data.preprocessor, "params": params}


@dataclass
class _Fold:
    """One model in training with its data: a trial has one, or one per cross-validation fold."""

    data: TrialData
    arch: Architecture | CustomArchitecture
    model: nn.Module
    net: nn.Module  # the model, compiled when asked
    optimizer: torch.optim.Optimizer
    loss_fn: Callable
    tensors: list[torch.Tensor]  # x_train, y_train, x_val, y_val
    seed: int

    @classmethod
    def build(cls, params: dict, data: TrialData, settings: TrainSettings, device: torch.device, index: int) -> _Fold:
        # Fold 0 trains exactly as a trial without folds (and as its refit); others get their own initialization.
        seed, arch, model, optimizer, loss_fn = _setup(params, data, settings.seed, device, FOLD_SEED_STRIDE * index,
                                                       settings.network)
        tensors = _place_data(data, device, settings.stream, settings.gpu_share)
        fold = cls(data, arch, model, model, optimizer, loss_fn, tensors, seed)
        if settings.compile:
            fold.net = _maybe_compile(fold, int(params.get("batch_size", DEFAULT_BATCH_SIZE)), device, settings.compile,
                                      settings.amp and device.type == "cuda")
        return fold

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
        return train_loss, _evaluate(self.net, self.loss_fn, task, x_val, y_val, self.data.preprocessor, device)


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


def train_epochs(params: dict, data: TrialData, epochs: int, base_seed: int = 0, device: str | torch.device = "cpu",
                 amp: bool = False, network: dict | None = None) -> tuple[Architecture | CustomArchitecture, dict]:
    """Train a configuration for exactly ``epochs`` epochs on ``data``'s training rows and return its architecture and
    final weights (on the CPU). Nothing is held out, so nothing is selected: this is the retraining of a chosen
    configuration on training + validation rows ("refit"), with the same initialization, batch-order and precision
    rules as :func:`train_trial` (``amp`` as the trials had it; ``network`` the user's network they trained, as
    :attr:`TrainSettings.network`). Raises ``FloatingPointError`` if the training loss stops being finite.
    """
    torch_device = prepare_device(device)
    seed, arch, model, optimizer, loss_fn = _setup(params, data, base_seed, torch_device, network=network)
    # Resident or streamed by the same rule as the trials: the pooled rows are larger than a trial's training rows.
    resident = _fits_on_device(data.x_train.nbytes + data.y_train.nbytes, torch_device)
    x, y = (torch.tensor(a, device=torch_device if resident else None) for a in (data.x_train, data.y_train))
    batch_size = int(params.get("batch_size", DEFAULT_BATCH_SIZE))
    use_amp = amp and torch_device.type == "cuda"
    for epoch in range(1, epochs + 1):
        generator = torch.Generator().manual_seed(seed + epoch)
        loss = _train_epoch(model, optimizer, loss_fn, data.task, x, y, batch_size, generator, use_amp, torch_device)
        if not math.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss} at epoch {epoch}")
    return arch, _cpu_copy(model.state_dict())


def _setup(params: dict, data: TrialData, base_seed: int, device: torch.device, seed_offset: int = 0,
           network: dict | None = None):
    """Seed, architecture, network, optimizer and loss of a configuration: the same for a trial and its refit."""
    seed = trial_seed(params, base_seed) + seed_offset
    torch.manual_seed(seed)
    arch = data_architecture(params, data, network)
    model = arch.build().to(device)
    return seed, arch, model, make_optimizer(params, model), loss_function(data.task, params.get("loss"))


def data_architecture(params: dict, data: TrialData, network: dict | None = None) -> Architecture | CustomArchitecture:
    """The architecture of a configuration on ``data``: its features in, the task's outputs out (a class count for
    multiclass, 1 for binary and regression); ``network``: a user's network (:attr:`TrainSettings.network`)."""
    prep = data.preprocessor
    n_classes = len(prep["classes"]) if data.task != "regression" else 1
    n_outputs = n_classes if data.task == "multiclass" else 1
    code = NetworkCode.from_dict(network) if network is not None else None
    return architecture_from_params(params, data.x_train.shape[1], n_outputs, code, n_classes)


def _place_data(data: TrialData, device: torch.device, stream: bool | None, gpu_share: float = 1.0) -> list[torch.Tensor]:
    """Train/validation tensors: on the device when they fit (batches are then slices of a shuffled index, no
    DataLoader collation), else in host memory, each batch gathered into pinned memory and moved as it is needed."""
    arrays = (data.x_train, data.y_train, data.x_val, data.y_val)
    if stream is None:
        stream = not _fits_on_device(sum(a.nbytes for a in arrays), device, gpu_share)
    if not stream:
        # torch.tensor copies: arrays from Ray's object store are read-only.
        return [torch.tensor(a, device=device) for a in arrays]
    log.info("training data kept in host memory; batches are moved to %s one at a time", device)
    # Not pinned as a whole: every batch is a gather (index_select) that makes a new tensor anyway, and that gather
    # writes straight into pinned memory (see _to), so each row is copied once on the host and once to the device.
    return [torch.tensor(a) for a in arrays]


def _fits_on_device(nbytes: int, device: torch.device, gpu_share: float = 1.0) -> bool:
    """Whether data of ``nbytes`` may stay resident: at most DEVICE_DATA_FRACTION of what this process may still
    allocate on the device (its share of the GPU when the trial holds a fraction of one)."""
    budget = memory_budget(device, gpu_share)
    return True if budget is None else nbytes <= DEVICE_DATA_FRACTION * budget


def _to(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``: itself when it is already there (however the device was spelled); from host memory to a
    GPU through pinned memory, asynchronously (the copy overlaps the previous step)."""
    if same_device(t.device, device):
        return t
    if device.type == "cuda" and t.device.type == "cpu" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def _gather(t: torch.Tensor, idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Rows ``idx`` of ``t``, on ``device``. Streaming to a GPU, the rows are gathered straight into a pinned buffer
    (from torch's caching host allocator, which keeps it alive until the asynchronous copy is done): one host copy."""
    if device.type == "cuda" and t.device.type == "cpu":
        buffer = torch.empty((idx.numel(), *t.shape[1:]), dtype=t.dtype, pin_memory=True)
        return torch.index_select(t, 0, idx, out=buffer).to(device, non_blocking=True)
    return _to(t.index_select(0, idx), device)


# Backend of torch.compile; tests switch it to "eager" (Dynamo's tracing and guards without inductor's code
# generation) to check the reuse rules in seconds.
COMPILE_BACKEND = "inductor"


def _maybe_compile(fold: _Fold, batch_size: int, device: torch.device, mode: bool | str, use_amp: bool) -> nn.Module:
    """``torch.compile(fold.model)``, or the model itself when compiling fails here (no C++ compiler, no Triton, ...).

    Ray reuses a worker for trial after trial, and Dynamo's caches are per process: every new model (a different
    dropout rate is enough) adds guards and recompiles until the recompile limit silently sends the rest back to
    eager. Each trial therefore starts from empty caches. Compilation is lazy, so every graph training will need is
    forced now, inside the fallback: validation exactly as it runs, and a training forward + backward for the full
    and the last, shorter batch. Every state this touches (weights, batch-norm statistics, gradients, the RNG dropout
    draws from) is put back.
    """
    import torch._dynamo

    model = fold.model
    torch._dynamo.reset()
    options = {"mode": mode} if isinstance(mode, str) else {}
    saved_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_rng = _rng_state(device)
    x_train, y_train, x_val, y_val = fold.tensors
    n = x_train.shape[0]
    sizes = {min(batch_size, n), n % batch_size} - {0, 1}  # batches of one row are skipped in training
    try:
        compiled = torch.compile(model, backend=COMPILE_BACKEND, **options)
        _evaluate(compiled, fold.loss_fn, fold.data.task, x_val, y_val, fold.data.preprocessor, device)
        model.train()
        for size in sorted(sizes, reverse=True):
            idx = torch.arange(size, device=x_train.device)
            with _autocast(device, use_amp):  # the training graph is traced as training will run it
                loss = fold.loss_fn(compiled(_gather(x_train, idx, device)),
                                    loss_target(fold.data.task, _gather(y_train, idx, device)))
            loss.backward()
        return compiled
    except Exception as exc:  # noqa: BLE001 - any compiler failure means: train uncompiled
        log.warning("torch.compile failed (%s: %s); training without it", type(exc).__name__, str(exc)[:200])
        return model
    finally:
        model.load_state_dict(saved_state)
        for p in model.parameters():
            p.grad = None
        _restore_rng(saved_rng, device)


def _autocast(device: torch.device, use_amp: bool):
    """bf16 autocast for training steps on a GPU when asked; nothing otherwise."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()


def _rng_state(device: torch.device) -> dict:
    """The random state dropout draws from (the CPU generator, and the GPU's when training there): saved in every
    checkpoint, so a resumed trial draws the same masks an uninterrupted one would have."""
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _restore_rng(state: dict | None, device: torch.device) -> None:
    if not state:
        return  # a checkpoint written before RNG state was saved: resume as before
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def batch_slices(n: int, size: int) -> list[slice]:
    """The mini-batches of an epoch of ``n`` shuffled rows, ``size`` rows each. A last batch of a single row joins
    the one before it: alone it would break batch norm, and dropped, that row would never train."""
    starts = list(range(0, n, size))
    if len(starts) > 1 and n - starts[-1] == 1:
        starts.pop()
    return [slice(start, end) for start, end in zip(starts, [*starts[1:], n])]


def _train_epoch(model, optimizer, loss_fn, task, x, y, batch_size, generator, use_amp, device) -> float:
    """One pass over the training data in shuffled mini-batches; returns the mean training loss."""
    model.train()
    n = x.shape[0]
    order = torch.randperm(n, generator=generator).to(x.device)
    losses, sizes = [], []  # kept on the device and summed once: no host sync, no extra ops per batch
    # Dropping the gradients directly is what zero_grad(set_to_none=True) does, without its per-call profiler
    # and dispatch wrappers (~40 us a batch, several percent of a small MLP's step on CPU).
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    autocast = _autocast(device, use_amp)
    for batch in batch_slices(n, batch_size):
        idx = order[batch]
        xb, yb = _gather(x, idx, device), _gather(y, idx, device)
        with autocast:
            loss = loss_fn(model(xb), loss_target(task, yb))
        for p in parameters:
            p.grad = None
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        sizes.append(idx.numel())
    if not losses:  # never a silent epoch without a single step (its loss would read 0.0)
        raise ValueError("an epoch with no training rows: nothing to train")
    return float(torch.stack(losses).float() @ torch.tensor(sizes, dtype=torch.float32, device=device)) / n


def _evaluate(model, loss_fn, task, x, y, prep, device) -> dict[str, float] | None:
    """Validation loss and task metrics, computed in large batches without gradients, always in fp32: they rank
    trials and drive ASHA's decisions, so bf16 rounding (~1e-3 relative) would reorder close trials."""
    model.eval()
    y = _to(y, device)
    with torch.inference_mode(), torch.autocast(device_type=device.type, enabled=False):
        # Each chunk's output is copied before the next chunk runs: with CUDA graphs (compile "reduce-overhead") the
        # next replay of the same graph would overwrite it.
        outputs = torch.cat([model(_to(x[i : i + EVAL_BATCH], device)).float().clone()
                             for i in range(0, x.shape[0], EVAL_BATCH)])
        val_loss = float(loss_fn(outputs, loss_target(task, y)))
    if not bool(torch.isfinite(outputs).all()):
        return None  # weights blew up: no metric is meaningful
    return {"val_loss": val_loss, **validation_metrics(task, outputs, y, prep.get("target_scale", 1.0))}


def _cpu_copy(state_dict: dict) -> dict:
    return {k: v.detach().to("cpu", copy=True) for k, v in copy.copy(state_dict).items()}
