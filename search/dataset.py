"""The one way a search's data is loaded and split, used by `hps run` and again by `hps evaluate`."""

from __future__ import annotations

from pathlib import Path

from search.config import HpsConfig
from trainables.data import SplitDataset, split_dataset


def split_from_config(cfg: HpsConfig) -> SplitDataset:
    """Load and split the data a config describes (same config → same split → same fingerprint)."""
    data = cfg.data
    # Any further data options (target column, feature selection, imputation, ...) pass straight through.
    extras = data.model_dump(exclude={"source", "task", "split"})
    split = data.split
    return split_dataset(data.source, data.task, split.val, split.test, split.seed, folds=split.folds,
                         max_columns=cfg.limits.max_columns, max_categories=cfg.limits.max_categories, **extras)


FILE_SOURCES = ("csv", "parquet", "npz", "idx")


def with_absolute_source(cfg: HpsConfig) -> HpsConfig:
    """The config with a file source made absolute, so the recorded config finds the same file from anywhere
    (`hps evaluate` re-creates the split from it, possibly from another working directory)."""
    kind, sep, path = cfg.data.source.partition(":")
    if kind not in FILE_SOURCES or not sep:
        return cfg
    source = f"{kind}:{Path(path).expanduser().resolve()}"
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": source})})
