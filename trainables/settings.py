"""How a trial trains, as opposed to what (its hyperparameters): plain data, no torch, so the search's driver can
build it without loading PyTorch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class TrainSettings:
    """How to train, as opposed to what (the hyperparameters)."""

    max_epochs: int
    metric: str = "val_loss"
    seed: int = 0
    device: str | torch.device = "cpu"  # where to train; "cuda" means the current GPU
    checkpoint_every: int = 1  # epochs between checkpoints; the last epoch and decision epochs are always saved
    # Epochs at which a scheduler may stop the trial (ASHA's rungs): checkpointed too, so a stopped trial's best
    # weights (kept in memory between checkpoints) are never lost.
    decision_epochs: frozenset[int] = frozenset()
    amp: bool = False  # bf16 autocast of the training steps on CUDA (validation is always fp32); ignored on CPU
    num_threads: int = 1  # intra-op threads; follows the CPUs a trial was given
    # torch.compile the model: False, True (inductor's default mode) or "reduce-overhead" (CUDA graphs on a GPU:
    # one launch replays a whole step, which is what small dispatch-bound MLPs need). Compiling takes seconds.
    compile: bool | str = False
    gpu_share: float = 1.0  # the fraction of the GPU the trial holds (Ray's fractional gpus); sizes resident data
    # Shortest time between two reports to the scheduler; shorter epochs travel together (trainables.reporting).
    report_interval_s: float = 0.0
    stream: bool | None = None  # keep data in host memory and move batches; None: only when it does not fit the device
    # Early stopping: end the trial once ``metric``'s best value has not improved for this many epochs (None: off).
    # Its last report carries STOPPED_NO_IMPROVEMENT and a checkpoint holding the best epoch's weights.
    patience: int | None = None
    # A user's network (trainables.network.NetworkCode.to_dict(): the builder and its file's text); None: the MLP.
    network: dict | None = None
