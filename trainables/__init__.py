"""Pure PyTorch + pandas training code: data, model, training loop, metrics. Free of Ray and MLflow,
except :mod:`trainables.ray_adapter`, which is imported only by the search service."""

import importlib

# Imported on first use (PEP 562): `trainables.names` alone must not pull in torch, pandas and scikit-learn, which
# take seconds that `hps validate` does not need.
_EXPORTS = {
    "DataError": "trainables.names", "SplitDataset": "trainables.splitting", "TrialData": "trainables.splitting",
    "split_dataset": "trainables.splitting", "SplitSettings": "trainables.splitting",
    "Architecture": "trainables.model", "build_mlp": "trainables.model",
    "Snapshot": "trainables.train", "TrainSettings": "trainables.train", "train_trial": "trainables.train",
    "Pack": "trainables.packed", "pack_key": "trainables.packed",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainables' has no attribute {name!r}")

__all__ = [
    "Architecture",
    "DataError",
    "Pack",
    "Snapshot",
    "SplitDataset",
    "SplitSettings",
    "TrainSettings",
    "TrialData",
    "build_mlp",
    "pack_key",
    "split_dataset",
    "train_trial",
]
