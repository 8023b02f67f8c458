"""Pure PyTorch + pandas training code: data, model, training loop, metrics. Free of Ray and MLflow,
except :mod:`trainables.ray_adapter`, which is imported only by the search service."""

from trainables.data import DataError, SplitDataset, TrialData, split_dataset
from trainables.model import Architecture, build_mlp
from trainables.train import Snapshot, TrainSettings, train_trial

__all__ = [
    "Architecture",
    "DataError",
    "Snapshot",
    "SplitDataset",
    "TrainSettings",
    "TrialData",
    "build_mlp",
    "split_dataset",
    "train_trial",
]
