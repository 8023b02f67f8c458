"""The one way a search's data is loaded and split, used by `hps run` and again by `hps evaluate`."""

from __future__ import annotations

from pathlib import Path

from search.config.schema import HpsConfig
from trainables.names import FILE_KINDS
from trainables.splitting import SplitDataset, SplitSettings, split_from_settings


def split_settings(cfg: HpsConfig) -> SplitSettings:
    """The :class:`SplitSettings` a config describes: its ``data:`` section and data limits."""
    data, split = cfg.data, cfg.data.split
    # Any further data options (target column, feature selection, imputation, ...) pass straight through.
    extras = data.model_dump(exclude={"source", "task", "split"})
    return SplitSettings(data.source, data.task, split.val, split.test, split.seed, folds=split.folds,
                         max_columns=cfg.limits.max_columns, max_categories=cfg.limits.max_categories, **extras)


def split_from_config(cfg: HpsConfig) -> SplitDataset:
    """Load and split the data a config describes (same config → same split → same fingerprint)."""
    return split_from_settings(split_settings(cfg))


def with_absolute_source(cfg: HpsConfig) -> HpsConfig:
    """The config with a file source made absolute, so the recorded config finds the same file from anywhere
    (`hps evaluate` re-creates the split from it, possibly from another working directory)."""
    kind, sep, path = cfg.data.source.partition(":")
    if kind not in FILE_KINDS or not sep:
        return cfg
    source = f"{kind}:{Path(path).expanduser().resolve()}"
    return cfg.model_copy(update={"data": cfg.data.model_copy(update={"source": source})})
