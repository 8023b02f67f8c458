"""Datasets: loading, task detection, the train/validation/test split and feature standardization.

Everything here runs in the driver, once per search. Trials only ever receive a :class:`TrialData`
(train + validation arrays); the test split stays "in the vault" and is only described by its fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from sklearn import datasets as sk_datasets
from sklearn.model_selection import train_test_split

log = logging.getLogger(__name__)

TASKS = ("binary", "multiclass", "regression")
SKLEARN_DATASETS = {
    "digits": sk_datasets.load_digits,
    "wine": sk_datasets.load_wine,
    "breast_cancer": sk_datasets.load_breast_cancer,
    "iris": sk_datasets.load_iris,
    "diabetes": sk_datasets.load_diabetes,
}
# An integer target with at most this many distinct values is taken to be class labels.
MAX_CLASSES_FOR_AUTO = 20


class DataError(ValueError):
    """The data cannot be used as configured (missing file, bad target, ...)."""


@dataclass
class Table:
    """A raw dataset: features as a DataFrame and the target as a Series, plus class names if known."""

    features: pd.DataFrame
    target: pd.Series
    class_names: list[str] | None = None


def load_table(source: str) -> Table:
    """Load the dataset named by ``source`` (``sklearn:<name>``)."""
    kind, _, name = source.partition(":")
    if kind == "sklearn":
        if name not in SKLEARN_DATASETS:
            raise DataError(f"unknown sklearn dataset {name!r}; choose from {sorted(SKLEARN_DATASETS)}")
        bunch = SKLEARN_DATASETS[name](as_frame=True)
        names = [str(n) for n in bunch.target_names] if hasattr(bunch, "target_names") and name != "diabetes" else None
        return Table(features=bunch.data, target=bunch.target, class_names=names)
    raise DataError(f"unknown data source {source!r}; expected sklearn:<name>")


def detect_task(target: pd.Series) -> str:
    """Guess the task from the target: non-numeric or few distinct integers → classification, else regression."""
    values = target.dropna()
    if not pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        n_classes = values.nunique()
    elif np.allclose(values, np.round(values)) and values.nunique() <= MAX_CLASSES_FOR_AUTO:
        n_classes = values.nunique()
    else:
        return "regression"
    return "binary" if n_classes == 2 else "multiclass"


@dataclass
class Preprocessor:
    """Feature standardization and target encoding fitted on the training split only.

    It is plain numbers and names (JSON-serializable) so a saved model can be rebuilt without pickle.
    """

    task: str
    feature_names: list[str]
    mean: list[float]
    scale: list[float]
    classes: list[str] | None = None  # class labels in output order (classification)
    target_mean: float = 0.0  # regression targets are standardized too; predictions are mapped back
    target_scale: float = 1.0
    _label_values: list = field(default_factory=list, repr=False)  # raw target values in class order

    @classmethod
    def fit(cls, features: pd.DataFrame, target: pd.Series, task: str, class_names: list[str] | None) -> Preprocessor:
        """Fit on training rows: per-column mean/std, class order, target mean/std (regression)."""
        values = features.to_numpy(dtype=np.float64)
        mean = values.mean(axis=0)
        scale = values.std(axis=0)
        scale[scale == 0] = 1.0  # constant columns stay constant (0) instead of dividing by zero
        prep = cls(task=task, feature_names=[str(c) for c in features.columns], mean=mean.tolist(), scale=scale.tolist())
        if task == "regression":
            prep.target_mean = float(target.mean())
            prep.target_scale = float(target.std(ddof=0)) or 1.0
        else:
            labels = sorted(target.unique().tolist())
            if class_names is not None and all(isinstance(v, (int, np.integer)) for v in labels):
                prep.classes = [class_names[int(v)] for v in labels]
            else:
                prep.classes = [str(v) for v in labels]
            prep._label_values = labels
        return prep

    @property
    def n_outputs(self) -> int:
        """Width of the network's output layer: 1 for binary and regression, one logit per class otherwise."""
        return len(self.classes) if self.task == "multiclass" else 1

    def transform_features(self, features: pd.DataFrame) -> np.ndarray:
        """Standardize ``features`` (columns in training order) into a float32 matrix."""
        missing = [c for c in self.feature_names if c not in features.columns]
        if missing:
            raise DataError(f"missing feature columns: {missing}")
        values = features[self.feature_names].to_numpy(dtype=np.float64)
        return ((values - np.asarray(self.mean)) / np.asarray(self.scale)).astype(np.float32)

    def transform_target(self, target: pd.Series) -> np.ndarray:
        """Encode the target: class index (int64) for classification, standardized float32 for regression."""
        if self.task == "regression":
            return ((target.to_numpy(dtype=np.float64) - self.target_mean) / self.target_scale).astype(np.float32)
        index = {v: i for i, v in enumerate(self._label_values)}
        return target.map(index).to_numpy(dtype=np.int64)

    def to_dict(self) -> dict:
        """JSON-ready description (the model artifact stores it beside the weights)."""
        return {
            "task": self.task,
            "feature_names": self.feature_names,
            "mean": self.mean,
            "scale": self.scale,
            "classes": self.classes,
            "target_mean": self.target_mean,
            "target_scale": self.target_scale,
        }


@dataclass
class TrialData:
    """What a trial receives: standardized train/validation arrays and how they were made."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    preprocessor: dict

    @property
    def task(self) -> str:
        return self.preprocessor["task"]


@dataclass
class SplitDataset:
    """A dataset split once, in the driver: row indices of each split, the fitted preprocessor, the fingerprint."""

    table: Table
    task: str
    train_idx: np.ndarray
    val_idx: np.ndarray
    test_idx: np.ndarray
    preprocessor: Preprocessor
    fingerprint: str

    def trial_data(self) -> TrialData:
        """Train and validation arrays only: the test split never reaches a trial."""
        prep = self.preprocessor
        feats, target = self.table.features, self.table.target
        return TrialData(
            x_train=prep.transform_features(feats.iloc[self.train_idx]),
            y_train=prep.transform_target(target.iloc[self.train_idx]),
            x_val=prep.transform_features(feats.iloc[self.val_idx]),
            y_val=prep.transform_target(target.iloc[self.val_idx]),
            preprocessor=prep.to_dict(),
        )

    def summary(self) -> dict:
        """Sizes and task, for logging on the search's parent run."""
        return {
            "task": self.task,
            "n_features": len(self.preprocessor.feature_names),
            "n_train": len(self.train_idx),
            "n_val": len(self.val_idx),
            "n_test": len(self.test_idx),
            "split_fingerprint": self.fingerprint,
        }


def split_dataset(source: str, task: str, val: float, test: float, seed: int) -> SplitDataset:
    """Load ``source`` and split it (stratified for classification) into train/validation/test with ``seed``."""
    table = load_table(source)
    resolved = detect_task(table.target) if task == "auto" else task
    if task == "auto":
        log.info("data %s: task detected as %s", source, resolved)
    stratify = table.target if resolved != "regression" else None
    rows = np.arange(len(table.target))
    rest, test_idx = train_test_split(rows, test_size=test, random_state=seed, stratify=stratify)
    rest_stratify = stratify.iloc[rest] if stratify is not None else None
    train_idx, val_idx = train_test_split(rest, test_size=val / (1 - test), random_state=seed, stratify=rest_stratify)
    prep = Preprocessor.fit(table.features.iloc[train_idx], table.target.iloc[train_idx], resolved, table.class_names)
    if resolved == "binary" and len(prep.classes) != 2:
        raise DataError(f"task is binary but the target has {len(prep.classes)} classes")
    fingerprint = split_fingerprint(source, seed, train_idx, val_idx, test_idx)
    return SplitDataset(table, resolved, np.sort(train_idx), np.sort(val_idx), np.sort(test_idx), prep, fingerprint)


def split_fingerprint(source: str, seed: int, *splits: np.ndarray) -> str:
    """A short hash identifying exactly which rows went to which split."""
    payload = json.dumps({"source": source, "seed": seed, "splits": [sorted(map(int, s)) for s in splits]})
    return hashlib.sha256(payload.encode()).hexdigest()[:16]
