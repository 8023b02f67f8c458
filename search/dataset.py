"""The one way a search's data is loaded and split, used by `hps run` and again by `hps evaluate`."""

from __future__ import annotations

from search.config import HpsConfig
from trainables.data import SplitDataset, split_dataset


def split_from_config(cfg: HpsConfig) -> SplitDataset:
    """Load and split the data a config describes (same config → same split → same fingerprint)."""
    data = cfg.data
    # Any further data options (target column, feature selection, imputation, ...) pass straight through.
    extras = data.model_dump(exclude={"source", "task", "split"})
    return split_dataset(data.source, data.task, data.split.val, data.split.test, data.split.seed, **extras)
