"""The split: a dataset cut once, in the driver, into train/validation/test rows (or cross-validation folds).

Trials only ever receive a :class:`TrialData` (train + validation arrays); the test split stays "in the vault" and
is only described by its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import KW_ONLY, dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from trainables.names import MAX_CATEGORIES, MAX_COLUMNS, DataError, impute_error
from trainables.preprocessing import (
    Preprocessor,
    check_categories,
    inf_columns_as_missing,
    infinite_for_the_network,
    refuse_empty_columns,
)
from trainables.sources import Table, load_table, reason
from trainables.tasks import check_target, detect_task, label_name, plain_value
from trainables.trial_data import TrialData

log = logging.getLogger(__name__)


@dataclass
class SplitDataset:
    """A dataset split once, in the driver: row indices of each split, the fitted preprocessor, the fingerprint.

    ``table`` holds the raw rows (after dropping rows without a target); the indices are positions into it.
    """

    table: Table
    task: str
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    preprocessor: Preprocessor
    fingerprint: str
    n_dropped_missing_target: int = 0
    # Cross-validation (data.split.folds): the validation rows of each fold. ``train_idx`` then holds all the
    # development rows (everything outside the test split) and ``val_idx`` is empty.
    folds: list[np.ndarray] | None = None

    def trial_data(self) -> TrialData:
        """Train and validation arrays only: the test split never reaches a trial."""
        return self._arrays(self.train_idx, self.val_idx, self.preprocessor)

    def trial_folds(self) -> list[TrialData]:
        """What every trial trains on: ``[trial_data()]`` with one validation split; with cross-validation one
        :class:`TrialData` per fold, its preprocessing fitted on that fold's training rows only."""
        if self.folds is None:
            return [self.trial_data()]
        fold_data = []
        for val_rows in self.folds:
            train_rows = np.setdiff1d(self.train_idx, val_rows)
            fold_data.append(self._arrays(train_rows, val_rows, self._fit_preprocessor(train_rows)))
        return fold_data

    def _fit_preprocessor(self, rows: np.ndarray) -> Preprocessor:
        """Preprocessing fitted again on ``rows`` only, with the search's imputation and standardization settings."""
        return Preprocessor.fit(self.table.features.iloc[rows], self.table.target.iloc[rows], self.task,
                                self.table.class_names, impute=self.preprocessor.impute,
                                standardize=self.table.standardize)

    def _arrays(self, train_rows: np.ndarray, val_rows: np.ndarray, prep: Preprocessor) -> TrialData:
        feats, target = self.table.features, self.table.target
        return TrialData(
            x_train=prep.transform_features(feats.iloc[train_rows]),
            y_train=prep.transform_target(target.iloc[train_rows]),
            x_val=prep.transform_features(feats.iloc[val_rows]),
            y_val=prep.transform_target(target.iloc[val_rows]),
            preprocessor=prep.to_dict(),
        )

    def refit_data(self) -> TrialData:
        """Training and validation rows pooled, with preprocessing fitted again on them: what a chosen configuration
        is retrained on before its one test evaluation. The test split still never enters."""
        rows = np.sort(np.concatenate([self.train_idx, self.val_idx]))
        feats, target = self.table.features.iloc[rows], self.table.target.iloc[rows]
        prep = self._fit_preprocessor(rows)
        x, y = prep.transform_features(feats), prep.transform_target(target)
        # No rows are held out any more: the validation arrays are empty, nothing may be selected on them.
        return TrialData(x_train=x, y_train=y, x_val=x[:0], y_val=y[:0], preprocessor=prep.to_dict())

    def test_rows(self) -> tuple[pd.DataFrame, pd.Series]:
        """The test split as raw rows: features before any preprocessing, and the original target values."""
        return self.table.features.iloc[self.test_idx], self.table.target.iloc[self.test_idx]

    def summary(self) -> dict:
        """Sizes and task, for logging on the search's parent run."""
        return {
            "task": self.task,
            "n_features": len(self.preprocessor.feature_names),
            "n_inputs": len(self.preprocessor.encoded_names),
            "n_train": len(self.train_idx),
            "n_val": len(self.val_idx),
            "n_test": len(self.test_idx),
            "n_dropped_missing_target": self.n_dropped_missing_target,
            "split_fingerprint": self.fingerprint,
            **({"n_folds": len(self.folds)} if self.folds is not None else {}),
        }


@dataclass
class SplitSettings:
    """Which data, how it is split and the limits it must keep: a config's ``data:`` section and data limits.

    With ``folds`` the rows outside the test split are cut into that many cross-validation folds instead of a
    ``val`` fraction (which is then not used). More than ``max_columns`` feature columns, or a text column with
    more than ``max_categories`` distinct values, is refused.
    """

    source: str  # see trainables.sources
    task: str  # "auto" or one of trainables.names.TASKS
    val: float  # fractions of the rows
    test: float
    seed: int
    _: KW_ONLY
    folds: int | None = None
    target: str | None = None  # the column to predict (csv, parquet)
    features: Sequence[str] | None = None  # default: every column but the target and ``drop``
    drop: Sequence[str] | None = None
    impute: Mapping[str, str] | None = None  # "numeric"/"categorical" → strategy (trainables.names)
    max_columns: int = MAX_COLUMNS
    max_categories: int = MAX_CATEGORIES

    def __post_init__(self) -> None:
        for key, strategy in (self.impute or {}).items():
            error = impute_error(key, strategy)
            if error:
                raise DataError(f"impute.{key}: {error}")


def split_dataset(source: str, task: str, val: float, test: float, seed: int, **options: Any) -> SplitDataset:
    """:func:`split_from_settings` with the settings as arguments (``options``: the keyword-only fields of
    :class:`SplitSettings`)."""
    return split_from_settings(SplitSettings(source, task, val, test, seed, **options))


def split_from_settings(settings: SplitSettings) -> SplitDataset:
    """Load the data, drop rows without a target, split (stratified for classification) and fit preprocessing.

    ±inf counts as missing, in features (imputed) and in the target (the row is dropped). Raises
    :class:`DataError` (one line) for anything wrong with the data itself.
    """
    table, n_dropped = _usable_rows(settings)
    task = _resolve_task(table.target, settings)
    # With folds there is no validation split: the folds are cut from the training rows.
    train_idx, val_idx, test_idx = _split_rows(table.target, task, 0.0 if settings.folds else settings.val,
                                               settings.test, settings.seed)
    fold_rows = _fold_rows(table.target, task, train_idx, settings.folds, settings.seed) if settings.folds else None
    prep = Preprocessor.fit(
        table.features.iloc[train_idx], table.target.iloc[train_idx], task, table.class_names,
        impute=settings.impute, standardize=table.standardize,
    )
    fingerprint = split_fingerprint(content_digest(table), settings.seed, train_idx, val_idx, test_idx,
                                    *(fold_rows or []), target=settings.target)
    return SplitDataset(
        table, task, np.sort(train_idx), np.sort(val_idx), np.sort(test_idx), prep, fingerprint, n_dropped, fold_rows,
    )


def _usable_rows(settings: SplitSettings) -> tuple[Table, int]:
    """The table with ±inf features as missing and the rows without a (finite) target dropped, and how many were."""
    table = load_table(settings.source, target=settings.target, features=settings.features, drop=settings.drop,
                       max_columns=settings.max_columns)
    check_categories(table.features, settings.max_categories)
    table.features = inf_columns_as_missing(table.features)
    has_target = table.target.notna().to_numpy()
    if pd.api.types.is_float_dtype(table.target):
        has_target = has_target & ~infinite_for_the_network(table.target.to_numpy(dtype=np.float64, na_value=np.nan))
    n_dropped = int((~has_target).sum())
    if n_dropped:
        log.info("data %s: dropped %d row(s) with a missing or infinite target", settings.source, n_dropped)
        table.features = table.features[has_target].reset_index(drop=True)
        table.target = table.target[has_target].reset_index(drop=True)
    if len(table.target) == 0:  # before the feature check: with no rows left every feature column is empty too
        raise DataError(f"target {table.target.name!r} has no values (all {n_dropped} rows are missing it)")
    refuse_empty_columns(table.features, "at all")
    return table, n_dropped


def _resolve_task(target: pd.Series, settings: SplitSettings) -> str:
    """The configured task, or the one detected from the target; checked against the target either way."""
    task = detect_task(target) if settings.task == "auto" else settings.task
    if settings.task == "auto":
        log.info("data %s: task detected as %s (target %r: %s, %d distinct values)", settings.source, task,
                 target.name, target.dtype, target.nunique())
    check_target(target, task)
    return task


def _fold_rows(target: pd.Series, task: str, rows: np.ndarray, folds: int, seed: int) -> list[np.ndarray]:
    """The validation rows of each cross-validation fold of ``rows`` (stratified for classification)."""
    labels = target.iloc[rows].to_numpy()
    splitter = KFold(folds, shuffle=True, random_state=seed) if task == "regression" else \
        StratifiedKFold(folds, shuffle=True, random_state=seed)
    try:
        with warnings.catch_warnings():
            # "The least populated class has only N members": checked below, as a DataError when it matters.
            warnings.simplefilter("ignore", UserWarning)
            parts = [np.sort(rows[val]) for _, val in splitter.split(rows, labels)]
    except ValueError as exc:
        raise DataError(f"cannot cut {len(rows)} rows into {folds} cross-validation folds: {reason(exc)}") from None
    if task != "regression":
        for part in parts:  # every fold's training rows must still hold every class
            _raise_absent(target, set(target.unique()) - set(target.iloc[np.setdiff1d(rows, part)].unique()))
    return parts


def _split_rows(target: pd.Series, task: str, val: float, test: float, seed: int) -> tuple[np.ndarray, ...]:
    rows = np.arange(len(target))
    stratify = target.to_numpy() if task != "regression" else None
    if stratify is not None:  # a class with a single row cannot be stratified into training at all
        counts = target.value_counts()
        _raise_absent(target, set(counts[counts < 2].index))
    rest = rows
    try:
        rest, test_idx = train_test_split(rows, test_size=test, random_state=seed, stratify=stratify)
        if val:
            rest_stratify = stratify[rest] if stratify is not None else None
            train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), random_state=seed,
                                                  stratify=rest_stratify)
        else:  # no validation split (cross-validation): everything but the test split trains
            train_idx, val_idx = rest, rest[:0]
    except ValueError as exc:  # too few rows for the fractions, or a class too rare to stratify
        if stratify is not None:
            left = target.iloc[rest].value_counts()
            _raise_absent(target, set(target.unique()) - set(left[left >= 2].index))
        raise DataError(f"cannot split {len(rows)} rows into train/val/test ({1 - val - test:g}/{val:g}/{test:g}): {reason(exc)}") from None
    if stratify is not None:
        _raise_absent(target, set(target.unique()) - set(target.iloc[train_idx].unique()))
    return train_idx, val_idx, test_idx


def _raise_absent(target: pd.Series, classes: set) -> None:
    if classes:
        counts = target.value_counts()
        shown = ", ".join(sorted(f"{label_name(plain_value(v))!r} ({counts[v]} rows)" for v in classes))
        raise DataError(f"the split leaves class(es) {shown} out of the training split; remove or merge rare classes")


def content_digest(table: Table) -> str:
    """A hash of the data itself (values and column names), so the fingerprint does not depend on where the file
    lives: the same table moved to another folder or machine is still the same data."""
    digest = hashlib.sha256()
    digest.update(json.dumps([str(c) for c in table.features.columns]).encode())
    digest.update(pd.util.hash_pandas_object(table.features, index=False).to_numpy().tobytes())
    digest.update(pd.util.hash_pandas_object(table.target, index=False).to_numpy().tobytes())
    return digest.hexdigest()


def split_fingerprint(content: str, seed: int, *splits: np.ndarray, target: str | None = None) -> str:
    """A short hash identifying the data and exactly which rows went to which split."""
    payload: dict[str, Any] = {"content": content, "seed": seed, "splits": [sorted(map(int, s)) for s in splits]}
    if target is not None:
        payload["target"] = target
    return hashlib.sha256(json.dumps(payload).encode()).hexdigest()[:16]
