"""Packed trials: many small MLPs trained as one batched computation. Plain PyTorch: no Ray, no MLflow.

A :class:`Pack` holds members (trials) that :func:`pack_key` finds compatible and trains them together, one epoch
at a time: hidden layer ``l`` of all members is one weight ``[M, in, out]`` applied with ``torch.baddbmm``, and a
functional optimizer steps every member at once with its own coefficients. Each member is still a trial in every
sense: it starts from the initialization :func:`trainables.train.train_trial` would give it, sees exactly the
batches it would see alone (its own shuffle, seeded ``seed + epoch``), and each :meth:`Pack.step` returns for it
the metrics dict and the :class:`~trainables.train.Snapshot` that ``train_trial`` would hand its ``report`` for
that epoch, in the same format (a member can be resumed alone, or alone resumed in a pack). Members join (new, or
from a checkpoint) and leave between epochs, at different epoch numbers.

What packs (differs freely between members of one pack):
    ``lr``, ``weight_decay``, ``momentum`` (SGD), ``dropout``, the seed (so the initialization and batch order),
    and each hidden layer's width within its bucket (see below); also each member's :class:`TrainSettings` apart
    from the device: ``max_epochs``, ``metric``, ``checkpoint_every``, ``decision_epochs``, ``patience``.
What splits packs (must be equal):
    the data (same rows and preprocessing), ``batch_size`` (every member takes the same number of steps per epoch),
    ``n_layers``, ``activation``, ``norm``, ``optimizer``, ``loss``, and each layer's width bucket. A configuration
    with cross-validation folds does not pack.

Width buckets: a member narrower than its pack is zero-padded to the pack's width: its padded weights start at zero
and get exactly zero gradients (the next layer's padded rows are zero), so they stay zero and the member's own units
compute what they would alone; LayerNorm normalizes over each member's true width; an activation that is not zero at
zero would be masked. Padding costs the work of the padded units, so widths are bucketed by the next power of two
(a 16-wide layer is never padded to 512; at most it doubles a layer's work).

On a CPU, stacking pays where per-operation overhead dominates (measured, digits, batch 64, 2 hidden layers: 4.2x
the throughput of one-after-another at width 32 with 8 models, 1.8x at 128) and costs where the arithmetic
dominates (0.9x at 256-512), so on a CPU a layer wider than :data:`CPU_MAX_WIDTH` does not pack. On a GPU small
MLPs are dispatch-bound at every width, so everything packs there. A pack of one is slower than training alone
(about 0.6x here): pack only where there is more than one member.

Exactness (no dropout): a member computes what its solo trial computes, up to float32 rounding, on any CPU or GPU.
Nothing mirrors one build's kernels: the pack's batched matmuls reduce in other orders than the solo ones, and its
optimizer is torch's single-tensor (for-loop) algorithm written out once for all members, where a solo trial runs
torch's fused kernel; torch's own kernels differ from each other by the same rounding. How far that rounding goes
depends on the configuration (measured on AVX-512, AVX2 and default kernels, tests/trainables/test_packed.py):

- everything but the case below: per-epoch metrics agree to ~2e-7 relative (the tests ask 1e-5);
- Adam or AdamW with batch norm: the bias before a batch norm has a true gradient of zero, and Adam rescales its
  rounding noise into full-size steps, so any rounding difference grows. Two solo runs that differ only in torch's
  optimizer kernel (fused vs for-loop) already differ by up to 2e-2 in their metrics within four epochs; a packed
  member differs from its solo run by as much, no more (the tests ask 5e-2).

Members never couple: the pack's loss is the sum of the members' losses (each member's gradient is its own), nothing
is clipped or scaled jointly, and a member whose training loss stops being finite is reported diverged and leaves
alone. Dropout masks are drawn per member from the global generator, but the draws depend on the pack's
composition: with dropout, packed and solo training (and a resumed member) agree only statistically. A member with
dropout 0 is unaffected by its neighbours' dropout.
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from trainables.device import prepare_device
from trainables.metrics import loss_target, validation_metrics
from trainables.model import Architecture, hidden_sizes, parameter_count
from trainables.names import ACTIVATIONS, NORMS, OPTIMIZERS
from trainables.params import DEFAULT_BATCH_SIZE, default
from trainables.train import (
    EVAL_BATCH,
    Progress,
    Snapshot,
    TrainSettings,
    _autocast,
    _gather,
    _place_data,
    _rng_state,
    _setup,
    _to,
    batch_slices,
    describe,
    divergence_reason,
)
from trainables.trial_data import TrialData

# Widest hidden layer that packs on a CPU (see the module docstring for the measurements behind it).
CPU_MAX_WIDTH = 128
MIN_BUCKET = 8  # narrower layers are padded to 8: below that the padding costs nothing measurable


def width_bucket(units: int) -> int:
    """The width a layer of ``units`` units is padded to in a pack: the next power of two, at least MIN_BUCKET."""
    return max(MIN_BUCKET, 1 << (int(units) - 1).bit_length())


def pack_key(params: dict, data: TrialData, device: str | torch.device = "cpu") -> tuple | None:
    """What must be equal for two trials to train in one pack (see the module docstring), or None when this
    configuration does not pack: cross-validation folds, an unknown name, or on a CPU a layer wider than
    CPU_MAX_WIDTH (stacking would be slower than training it alone)."""
    if not isinstance(data, TrialData):
        return None  # folds (a list of TrialData) train in lockstep inside one train_trial
    activation = params.get("activation", default("activation"))
    norm = params.get("norm", default("norm"))
    optimizer = params.get("optimizer", default("optimizer"))
    if activation not in ACTIVATIONS or norm not in NORMS or optimizer not in OPTIMIZERS:
        return None
    widths = hidden_sizes(params)
    if torch.device(device).type == "cpu" and max(widths, default=0) > CPU_MAX_WIDTH:
        return None
    return (data_digest(data), int(params.get("batch_size", DEFAULT_BATCH_SIZE)), tuple(width_bucket(w) for w in widths),
            activation, norm, optimizer, params.get("loss"))


_DIGESTS: dict[int, tuple[TrialData, str]] = {}  # id → (the object, so the id stays its own, digest)


def data_digest(data: TrialData) -> str:
    """A hash of a trial's arrays and preprocessing: equal for copies of the same data (each Ray worker
    deserializes its own), cached per object."""
    cached = _DIGESTS.get(id(data))
    if cached is not None and cached[0] is data:
        return cached[1]
    digest = hashlib.sha256(repr(sorted(data.preprocessor.items(), key=str)).encode())
    for array in (data.x_train, data.y_train, data.x_val, data.y_val):
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(array.tobytes())
    if len(_DIGESTS) > 16:
        _DIGESTS.clear()
    _DIGESTS[id(data)] = (data, digest.hexdigest()[:16])
    return _DIGESTS[id(data)][1]


@dataclass
class _Member:
    """One trial in a pack: its description, its solo-shaped model and optimizer (the templates its state is
    copied in and out of) and its bookkeeping."""

    member_id: Hashable
    params: dict
    settings: TrainSettings
    seed: int
    arch: Architecture
    model: nn.Sequential  # on the CPU; holds the member's weights only when they are copied out
    optimizer: torch.optim.Optimizer  # for the model above: only its state_dict format is used
    loss_fn: nn.Module
    progress: Progress
    description: dict
    # Where each entry of its solo state_dict lives in the pack: key → (kind, stacked name or layer, transposed, shape)
    entries: list[tuple[str, tuple]] | None = None
    n_params: int = field(init=False)  # reported every epoch (a possible objective); fixed by the architecture

    def __post_init__(self) -> None:
        self.n_params = parameter_count(self.model)

    @property
    def epoch(self) -> int:
        return self.progress.next_epoch


class Pack:
    """Trials trained together, one epoch at a time, each exactly as :func:`~trainables.train.train_trial` would.

    ``add`` a member (new, or resumed from a state a :class:`Snapshot` carried), ``step`` to train every member one
    epoch and get each one's report, ``remove`` a member whose trial ended elsewhere. A member that finished its
    ``max_epochs`` or diverged leaves by itself after its last report. Where and how the pack trains is the pack's:
    ``device``, ``amp`` (bf16 autocast of the training steps on a GPU), ``gpu_share`` and ``stream`` as in
    :class:`TrainSettings`; a member's own ``device``, ``amp``, ``compile``, ``num_threads``, ``gpu_share`` and
    ``stream`` are not used (the caller sets the thread count). Members are independent in everything else.
    """

    def __init__(self, device: str | torch.device = "cpu", amp: bool = False, gpu_share: float = 1.0,
                 stream: bool | None = None) -> None:
        self.device = prepare_device(device, gpu_share)
        self.use_amp = amp and self.device.type == "cuda"
        self.gpu_share, self.stream = gpu_share, stream
        self.members: list[_Member] = []
        self.key: tuple | None = None
        self._clear()

    def _clear(self) -> None:
        self.key, self.tensors, self.data = None, None, None
        # Every member's parameters in one row of one leaf [M, P] (see params for their shapes), so that the
        # optimizer steps all of them in a handful of operations; its state in rows alike.
        self.flat: torch.Tensor | None = None
        self.state: dict[str, torch.Tensor] = {}
        self.buffers: dict[str, torch.Tensor] = {}  # batch-norm running statistics, [M, width]
        self.coef: dict[str, torch.Tensor] = {}  # per-member coefficients, [M, 1, 1]

    def __len__(self) -> int:
        return len(self.members)

    def __contains__(self, member_id: Hashable) -> bool:
        return any(m.member_id == member_id for m in self.members)

    # ---- joining and leaving -------------------------------------------------------------------------------------

    def add(self, member_id: Hashable, params: dict, data: TrialData, settings: TrainSettings,
            resume: dict | None = None) -> bool:
        """Add a trial; it trains from the next :meth:`step` on. ``resume`` is a snapshot's state, from a solo or a
        packed run. Returns False (and adds nothing) when the trial has no epoch left to train, as ``train_trial``
        would then report nothing. Raises ValueError for a configuration this pack cannot hold."""
        if member_id in self:
            raise ValueError(f"member {member_id!r} is already in the pack")
        key = pack_key(params, data, self.device)
        if key is None or (self.key is not None and key != self.key):
            raise ValueError(f"member {member_id!r} does not pack with this pack ({'not packable' if key is None else 'other key'})")
        # The solo setup exactly (seed, architecture, initialization), on the CPU as a solo trial initializes, and
        # without touching the global generator the other members' dropout draws from.
        with torch.random.fork_rng(devices=[]):
            seed, arch, model, optimizer, loss_fn = _setup(params, data, settings.seed, torch.device("cpu"))
        if resume is not None:
            model.load_state_dict(resume["model"])
            optimizer.load_state_dict(resume["optimizer"])
        member = _Member(member_id, params, settings, seed, arch, model, optimizer, loss_fn, Progress(settings, resume),
                         describe(arch, data, params))
        if member.epoch > settings.max_epochs:
            return False
        if self.key is None:
            self._start(key, data, arch, loss_fn)
        self._insert(member)
        return True

    def remove(self, member_id: Hashable) -> bool:
        """Take a member out (its trial was stopped or failed elsewhere); False if it is not in the pack."""
        index = next((i for i, m in enumerate(self.members) if m.member_id == member_id), None)
        if index is None:
            return False
        self._keep([i for i in range(len(self.members)) if i != index])
        return True

    def split(self) -> Pack:
        """Move the second half of the members, with their exact state, into a new pack and return it (a pack that
        ran out of memory goes on as two). Each member then trains on as it would have in the whole pack."""
        if len(self.members) < 2:
            raise ValueError("a pack of fewer than two members cannot split")
        half = len(self.members) // 2
        other = copy.copy(self)  # shares the data, layout and loss; _keep gives it its own rows of everything else
        other._keep(list(range(half, len(self.members))))  # noqa: SLF001 - a Pack of this class
        self._keep(list(range(half)))
        return other

    def _keep(self, rows: list[int]) -> None:
        """Keep only the members at ``rows`` (in that order), with their parameters, state and coefficients."""
        if not rows:
            self.members = []
            self._clear()
            return
        self.members = [self.members[i] for i in rows]
        index = torch.tensor(rows, device=self.device)
        pick = lambda t: t.index_select(0, index)  # noqa: E731
        self.flat = pick(self.flat.detach()).requires_grad_()
        self.state = {k: pick(v) for k, v in self.state.items()}
        self.buffers = {k: pick(v) for k, v in self.buffers.items()}
        self.coef = {k: pick(v) for k, v in self.coef.items()}
        self._update_masks()

    def _start(self, key: tuple, data: TrialData, arch: Architecture, loss_fn: nn.Module) -> None:
        """Set the pack's shape from its first member: data, padded widths, layer layout."""
        self.key, self.data = key, data
        self.tensors = _place_data(data, self.device, self.stream, self.gpu_share)
        self.task = data.task
        self.batch_size = key[1]
        self.widths = [width_bucket(w) for w in arch.hidden]
        self.norm, self.optimizer_name = arch.norm, key[5]
        self.activation = getattr(nn, ACTIVATIONS[arch.activation])()
        # The members' loss (trainables.metrics.loss_function, the same for all), per row: each member's mean is
        # then taken over its own rows.
        self.loss_none = copy.deepcopy(loss_fn)
        self.loss_none.reduction = "none"
        ins = [arch.n_features, *self.widths]
        outs = [*self.widths, arch.n_outputs]
        # Stacked name → (shape per member, whether it holds a transposed nn.Linear weight), in the order of
        # build_mlp(arch).parameters(): the optimizer's state_dict numbers parameters in that order.
        self.layout: dict[str, tuple[tuple[int, ...], bool]] = {}
        for layer, (n_in, n_out) in enumerate(zip(ins, outs)):
            self.layout[f"w{layer}"] = ((n_in, n_out), True)
            self.layout[f"b{layer}"] = ((1, n_out), False)
            if layer < len(self.widths) and self.norm != "none":
                self.layout[f"g{layer}"] = ((1, n_out), False)
                self.layout[f"n{layer}"] = ((1, n_out), False)
        self.offsets: dict[str, tuple[int, int, tuple[int, ...]]] = {}  # name → start, size, shape in a row of flat
        start = 0
        for name, (shape, _) in self.layout.items():
            self.offsets[name] = (start, math.prod(shape), shape)
            start += math.prod(shape)

    @property
    def params(self) -> dict[str, torch.Tensor]:
        """The stacked parameters by name, [M, ...]: views of ``flat`` (a hidden layer's weight is [M, in, out])."""
        m = self.flat.shape[0]
        return {name: self.flat[:, start : start + size].view(m, *shape)
                for name, (start, size, shape) in self.offsets.items()}

    def _insert(self, member: _Member) -> None:
        """Append a member's parameters, optimizer state, statistics and coefficients to the stacks."""
        model, optimizer = member.model, member.optimizer
        row: list[torch.Tensor] = []
        state_rows: dict[str, list[torch.Tensor]] = {n: [] for n in _MOMENTS[self.optimizer_name]}
        for (shape, transpose), p in zip(self.layout.values(), model.parameters()):
            row.append(_padded(p.detach(), shape, transpose).reshape(-1))
            state = optimizer.state.get(p, {})
            for n in _MOMENTS[self.optimizer_name]:
                state_rows[n].append((_padded(state[n], shape, transpose) if n in state else torch.zeros(shape)).reshape(-1))
        norms = [m for m in model if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm))]
        new_buffers = {}
        for layer, norm in enumerate(norms):
            if isinstance(norm, nn.BatchNorm1d):
                new_buffers[f"rm{layer}"] = _padded(norm.running_mean, (self.widths[layer],), False, value=0.0)
                new_buffers[f"rv{layer}"] = _padded(norm.running_var, (self.widths[layer],), False, value=1.0)
                new_buffers["nbt"] = norm.num_batches_tracked.reshape(1).clone()
        group = optimizer.param_groups[0]
        steps = [float(s["step"]) for s in optimizer.state.values() if "step" in s]
        coef = {"lr": group["lr"], "wd": group["weight_decay"], "momentum": group.get("momentum", 0.0),
                "beta1": group.get("betas", (0.9, 0.999))[0], "beta2": group.get("betas", (0.9, 0.999))[1],
                "eps": group.get("eps", 0.0), "dropout": member.arch.dropout,
                # SGD keeps no momentum buffer before its first step: a resumed state without one starts from zero.
                "step": max(steps, default=float(bool(optimizer.state))),
                **{f"width{layer}": float(w) for layer, w in enumerate(member.arch.hidden)}}
        # Kept in double precision (as torch.optim keeps them, Python floats); cast to float32 where they multiply.
        coef_tensors = {k: torch.tensor(float(v), dtype=torch.float64).view(1, 1, 1) for k, v in coef.items()}
        append = lambda old, new: new.to(self.device) if old is None else torch.cat([old, new.to(self.device)])  # noqa: E731
        self.flat = append(None if self.flat is None else self.flat.detach(), torch.cat(row)[None]).requires_grad_()
        self.state = {n: append(self.state.get(n), torch.cat(rows)[None]) for n, rows in state_rows.items()}
        self.buffers = {k: append(self.buffers.get(k), t.unsqueeze(0) if k != "nbt" else t)
                        for k, t in new_buffers.items()}
        self.coef = {k: append(self.coef.get(k), t) for k, t in coef_tensors.items()}
        member.entries = _state_entries(model, list(self.layout.items()))
        self.members.append(member)
        self._update_masks()

    def _update_masks(self) -> None:
        """Per-layer masks of the members' true units ([M, 1, width]), None for a layer no member pads; and which
        coefficients are zero for everyone (their operations are skipped)."""
        self.masks: list[torch.Tensor | None] = []
        for layer, width in enumerate(self.widths):
            true = self.coef[f"width{layer}"]
            if bool((true == width).all()):
                self.masks.append(None)
            else:
                self.masks.append((torch.arange(width, device=self.device).view(1, 1, -1) < true).float())
        # A padded unit's pre-activation is exactly zero (zero weights and bias; batch norm maps a constant zero to
        # its zero shift, the masked layer norm to its zero shift), so an activation that is zero at zero (all of
        # trainables.names.ACTIVATIONS) keeps it zero without a mask; one that is not (a sigmoid) is masked.
        self.mask_activations = float(self.activation(torch.zeros(1))) != 0.0
        self.any_decay = bool((self.coef["wd"] != 0).any())
        self.any_dropout = bool((self.coef["dropout"] > 0).any())
        self.keep = (1.0 - self.coef["dropout"]).float()
        self.inverse_keep = 1.0 / self.keep
        self.coef32 = {k: v.float() for k, v in self.coef.items()}
        # The optimizer's coefficients, [M, 1] against rows of flat.
        rows = {k: v.view(-1, 1) for k, v in self.coef32.items()}
        rows["one_minus_beta1"] = (1 - self.coef["beta1"]).float().view(-1, 1)
        rows["one_minus_beta2"] = (1 - self.coef["beta2"]).float().view(-1, 1)
        rows["neg_lr"] = (-self.coef["lr"]).float().view(-1, 1)
        rows["decay"] = (1 - self.coef["lr"] * self.coef["wd"]).float().view(-1, 1)  # AdamW's decoupled decay
        self.rows = rows

    # ---- training ------------------------------------------------------------------------------------------------

    def step(self) -> dict[Hashable, tuple[dict, Snapshot | None]]:
        """Train every member one epoch (each at its own next epoch) and validate it. Returns, per member id, the
        ``(metrics, snapshot)`` pair ``train_trial`` would report for that epoch. Members whose report ends their
        trial (finished, out of patience or diverged) have left the pack when this returns."""
        if not self.members:
            return {}
        # An epoch that fails half-way (out of memory, say) leaves every member as it was before it: the stacks are
        # copied first (small beside the epoch's activations) and put back, so the caller may split and go on.
        before = (self.flat.detach().clone(), {k: v.clone() for k, v in self.state.items()},
                  {k: v.clone() for k, v in self.buffers.items()}, {k: v.clone() for k, v in self.coef.items()})
        try:
            train_losses = self._train_epoch()
            evaluations = self._evaluate()
        except BaseException:
            flat, self.state, self.buffers, self.coef = before
            self.flat = flat.requires_grad_()
            self._update_masks()
            raise
        results, ended = {}, []
        for index, member in enumerate(self.members):
            epoch, train_loss, evaluation = member.epoch, train_losses[index], evaluations[index]
            if not math.isfinite(train_loss) or evaluation is None:
                results[member.member_id] = (member.progress.diverged(epoch, divergence_reason(train_loss)), None)
                ended.append(member.member_id)
                continue
            metrics = member.progress.record(epoch, {"epoch": epoch, "train_loss": train_loss, **evaluation,
                                                     "n_params": member.n_params},
                                             lambda i=index: self.member_weights(i))
            snapshot = None
            if member.progress.checkpoint_due(epoch):
                state = member.progress.state(epoch, self.member_weights(index), self.member_optimizer(index),
                                              _rng_state(self.device))
                snapshot = Snapshot(state,
                                    member.description)
            results[member.member_id] = (metrics, snapshot)
            if metrics["finished"] or member.progress.stopped:  # done, or out of patience (settings.patience)
                ended.append(member.member_id)
        for member_id in ended:
            self.remove(member_id)
        return results

    def _train_epoch(self) -> list[float]:
        """One pass over the training rows for every member, each in its own shuffled order; mean losses."""
        x, y = self.tensors[0], self.tensors[1]
        n, size, m = x.shape[0], self.batch_size, len(self.members)
        # Exactly the solo shuffle: a CPU generator seeded seed + epoch, per member.
        order = torch.stack([torch.randperm(n, generator=torch.Generator().manual_seed(mb.seed + mb.epoch))
                             for mb in self.members]).to(x.device)
        # The stacked parameters as leaves of their own, sharing flat's memory: autograd hands back one gradient per
        # tensor, laid side by side once below. Through views of flat, each tensor's gradient would be scattered into
        # a zero tensor of flat's whole size and summed (measured: a quarter of a step's time in fills and adds).
        leaves = {name: t.detach().requires_grad_() for name, t in self.params.items()}
        losses, sizes = [], []
        for batch in batch_slices(n, size):  # the batches a member trains alone
            idx = order[:, batch]
            b = idx.shape[1]
            xb = _gather(x, idx.reshape(-1), self.device).view(m, b, -1)
            yb = _gather(y, idx.reshape(-1), self.device)
            with _autocast(self.device, self.use_amp):
                out = self._forward(xb, training=True, params=leaves)
                per_row = self.loss_none(out.reshape(m * b, -1), loss_target(self.task, yb))
            member_losses = per_row.float().reshape(m, -1).mean(dim=1)  # each member's mean loss, as alone
            # d(sum)/d(member's weights) = that member's own gradient
            grads = torch.autograd.grad(member_losses.sum(), list(leaves.values()))
            self.flat.grad = torch.cat([g.reshape(m, -1) for g in grads], dim=1)
            self._optimizer_step()
            losses.append(member_losses.detach())
            sizes.append(b)
        if not losses:  # never a silent epoch without a single step (its loss would read 0.0)
            raise ValueError("an epoch with no training rows: nothing to train")
        weights = torch.tensor(sizes, dtype=torch.float32, device=self.device)
        return [total / n for total in (weights @ torch.stack(losses).float()).tolist()]

    def _forward(self, x: torch.Tensor, training: bool, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """Outputs [M, rows, n_outputs] for inputs [M, rows, features] (training) or [rows, features], with
        ``params`` (default: :attr:`params`)."""
        p = self.params if params is None else params
        h = x
        for layer, width in enumerate(self.widths):
            w, b = p[f"w{layer}"], p[f"b{layer}"]
            mask = self.masks[layer]
            if h.dim() == 2:  # validation: every member sees the same rows
                h = torch.matmul(h, w) + b
            else:
                h = torch.baddbmm(b, h, w)
            if self.norm == "batch":
                h = self._batch_norm(h, layer, training, p)
            elif self.norm == "layer":
                h = self._layer_norm(h, layer, mask, p)
            h = self.activation(h)
            if mask is not None and self.mask_activations:
                h = h * mask  # padded units stay exactly zero, whatever the activation gives at zero
            if training and self.any_dropout:
                # the kept units scaled by 1 / keep, as nn.Dropout scales its mask (a multiply where a divide was)
                h = h * ((torch.rand(h.shape, device=h.device) < self.keep) * self.inverse_keep)
        last = len(self.widths)
        return torch.baddbmm(p[f"b{last}"], h, p[f"w{last}"])

    def _batch_norm(self, h: torch.Tensor, layer: int, training: bool, p: dict) -> torch.Tensor:
        """nn.BatchNorm1d per member: the members' units side by side as one BatchNorm over M * width channels,
        each with its own running statistics (momentum 0.1, unbiased running variance, eps 1e-5)."""
        m, rows, width = h.shape
        flat = h.transpose(0, 1).reshape(rows, m * width)
        out = torch.nn.functional.batch_norm(
            flat, self.buffers[f"rm{layer}"].view(-1), self.buffers[f"rv{layer}"].view(-1),
            p[f"g{layer}"].reshape(-1), p[f"n{layer}"].reshape(-1),
            training=training, momentum=0.1, eps=1e-5)
        if training and layer == 0:
            self.buffers["nbt"] += 1
        return out.view(rows, m, width).transpose(0, 1)

    def _layer_norm(self, h: torch.Tensor, layer: int, mask: torch.Tensor | None, p: dict) -> torch.Tensor:
        """nn.LayerNorm per member over its true width only (eps 1e-5)."""
        g, b = p[f"g{layer}"], p[f"n{layer}"]
        if mask is None:
            return torch.nn.functional.layer_norm(h, h.shape[-1:], eps=1e-5) * g + b
        count = self.coef32[f"width{layer}"]
        mean = (h * mask).sum(dim=-1, keepdim=True) / count
        centered = (h - mean) * mask
        var = (centered * centered).sum(dim=-1, keepdim=True) / count
        return centered * torch.rsqrt(var + 1e-5) * g + b

    @torch.no_grad()
    def _optimizer_step(self) -> None:
        """torch.optim.Adam / AdamW / SGD's update, every member with its own coefficients ([M, 1, 1])."""
        c, r, p, grad, state = self.coef, self.rows, self.flat, self.flat.grad, self.state
        c["step"] += 1
        # torch's single-tensor (for-loop) algorithm, written once for all members. It rounds a little differently
        # from the fused kernel a solo trial uses (as torch's own foreach and fused kernels differ from each other):
        # see the module docstring on what that means for exactness.
        if self.optimizer_name == "sgd":
            if self.any_decay:
                grad = grad.addcmul(p, r["wd"])
            buf = state["momentum_buffer"].mul_(r["momentum"]).add_(grad)  # a zero buffer's first step is grad itself
            p.addcmul_(buf, r["neg_lr"])
            return
        # Bias corrections from each member's own step count, in double precision, as torch computes them.
        step = c["step"]
        step_size = (c["lr"] / (1 - c["beta1"] ** step)).float().view(-1, 1)
        correction2 = (1 - c["beta2"] ** step).sqrt().float().view(-1, 1)
        if self.any_decay:
            if self.optimizer_name == "adamw":
                p.mul_(r["decay"])
            else:
                grad = grad.addcmul(p, r["wd"])
        exp_avg = state["exp_avg"].lerp_(grad, r["one_minus_beta1"])
        exp_avg_sq = state["exp_avg_sq"].mul_(r["beta2"]).addcmul_(r["one_minus_beta2"] * grad, grad)
        denom = exp_avg_sq.sqrt().div_(correction2).add_(r["eps"])
        p.sub_(exp_avg.div(denom).mul_(step_size))  # addcdiv_(exp_avg, denom, value=-step_size), per member

    def _evaluate(self) -> list[dict | None]:
        """Each member's validation loss and metrics (None for a member whose outputs are not finite), computed
        as alone: fp32, no gradients, batch norm on running statistics, the solo loss and metric functions."""
        x, y = self.tensors[2], _to(self.tensors[3], self.device)
        with torch.inference_mode(), torch.autocast(device_type=self.device.type, enabled=False):
            outputs = torch.cat([self._forward(_to(x[i : i + EVAL_BATCH], self.device), training=False).float()
                                 for i in range(0, x.shape[0], EVAL_BATCH)], dim=1)
            finite = torch.isfinite(outputs).flatten(1).all(dim=1).tolist()
            results = []
            for index, member in enumerate(self.members):
                if not finite[index]:
                    results.append(None)
                    continue
                out = outputs[index]
                val_loss = float(member.loss_fn(out, loss_target(self.task, y)))
                scale = self.data.preprocessor.get("target_scale", 1.0)
                results.append({"val_loss": val_loss, **validation_metrics(self.task, out, y, scale)})
        return results

    # ---- a member's state in the solo format ---------------------------------------------------------------------

    def member_weights(self, index: int) -> dict:
        """Member ``index``'s weights as its trial would hold them alone: ``build_mlp(arch).state_dict()`` of its true
        shapes, on the CPU."""
        member, row = self.members[index], self.flat[index].detach()
        weights = {}
        for key, (kind, where, transpose, shape) in member.entries:
            if kind == "param":
                start, size, stacked = self.offsets[where]
                tensor = _unpadded(row[start : start + size].view(stacked), shape, transpose)
            elif kind == "nbt":
                tensor = self.buffers["nbt"][index]
            else:  # a batch norm's running statistics
                tensor = self.buffers[f"{kind}{where}"][index, : shape[0]]
            weights[key] = tensor.to("cpu", copy=True, memory_format=torch.contiguous_format)
        return weights

    def member_optimizer(self, index: int) -> dict:
        """Member ``index``'s optimizer state as its trial's torch.optim optimizer would give it (``state_dict()``)."""
        member = self.members[index]
        optimizer = member.optimizer
        step = float(self.coef["step"][index])
        momentum = optimizer.param_groups[0].get("momentum", 0.0)
        for (name, (_, transpose)), p in zip(self.layout.items(), member.model.parameters()):
            start, size, shape = self.offsets[name]
            # Contiguous copies: torch's fused kernels walk a state tensor's memory as if it were.
            moments = {n: _unpadded(self.state[n][index, start : start + size].view(shape), p.shape, transpose)
                       .detach().to("cpu", copy=True).contiguous() for n in _MOMENTS[self.optimizer_name]}
            optimizer.state.pop(p, None)
            if self.optimizer_name != "sgd":
                optimizer.state[p] = {"step": torch.tensor(step, dtype=torch.float32), **moments}
            elif momentum != 0 and step > 0:  # torch's SGD keeps a buffer only with momentum, after a first step
                optimizer.state[p] = moments
        return optimizer.state_dict()


def _state_entries(model: nn.Sequential, layout: list) -> list[tuple[str, tuple]]:
    """For each entry of ``model.state_dict()``, in its order: where the pack keeps it (see Pack.member_weights)."""
    entries, names, bn_layer = [], iter(layout), 0
    for index, module in enumerate(model):
        for name, p in module.named_parameters(recurse=False):
            stacked, (_, transpose) = next(names)
            entries.append((f"{index}.{name}", ("param", stacked, transpose, tuple(p.shape))))
        if isinstance(module, nn.BatchNorm1d):
            width = (module.num_features,)
            entries += [(f"{index}.running_mean", ("rm", bn_layer, False, width)),
                        (f"{index}.running_var", ("rv", bn_layer, False, width)),
                        (f"{index}.num_batches_tracked", ("nbt", bn_layer, False, ()))]
            bn_layer += 1
    return entries


_MOMENTS = {"adam": ("exp_avg", "exp_avg_sq"), "adamw": ("exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}


def _padded(t: torch.Tensor, shape: Sequence[int], transpose: bool, value: float = 0.0) -> torch.Tensor:
    """A solo-shaped tensor (an nn.Linear weight is [out, in]) in its stacked form: [in_pad, out_pad], [1, width]
    or [width], padded with ``value``."""
    t = t.detach().float().cpu()
    t = t.t() if transpose else t.reshape(1, -1) if len(shape) == 2 else t
    out = torch.full(tuple(shape), value)
    out[tuple(slice(0, s) for s in t.shape)] = t
    return out


def _unpadded(t: torch.Tensor, shape: Sequence[int], transpose: bool) -> torch.Tensor:
    """Inverse of :func:`_padded`: the member's true region of its stacked slice ``t``, in solo shape."""
    if transpose:
        return t[: shape[1], : shape[0]].t()
    return t.reshape(-1)[: shape[0]]
