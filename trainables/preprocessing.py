"""Preprocessing fitted on training rows only: imputation, one-hot encoding, standardization, target encoding.

The :class:`Preprocessor` is plain JSON (:meth:`Preprocessor.to_dict` / :meth:`Preprocessor.from_dict`), so a saved
model predicts from raw rows of the original table without pickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from trainables.names import DEFAULT_IMPUTE, DataError
from trainables.tasks import label_name, plain_value

MISSING_CATEGORY = "<missing>"  # the category of a missing text value under the "missing" imputation


FLOAT32_MAX = float(np.finfo(np.float32).max)


def infinite_for_the_network(values: np.ndarray) -> np.ndarray:
    """Which values are ±inf once in float32, the network's precision: ±inf itself, and numbers beyond float32's
    range (a 1e300 cell in a table reached the network as inf, and every output it touched with it)."""
    with np.errstate(invalid="ignore"):
        return np.isinf(values) | (np.abs(values) > FLOAT32_MAX)


def _inf_as_missing(values: np.ndarray) -> np.ndarray:
    """±inf is a missing value (imputed like NaN): one infinite cell would otherwise make the column's mean and
    standard deviation, every trial's loss and every prediction NaN."""
    infinite = infinite_for_the_network(values)
    if infinite.any():
        values = np.where(infinite, np.nan, values)
    return values


def inf_columns_as_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ±inf in its float columns replaced by NaN (the same object when there is none)."""
    floats = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
    infinite = {c: infinite_for_the_network(frame[c].to_numpy(dtype=np.float64, na_value=np.nan)) for c in floats}
    infinite = {c: mask for c, mask in infinite.items() if mask.any()}
    if not infinite:
        return frame
    frame = frame.copy()
    for column, mask in infinite.items():
        frame[column] = frame[column].mask(mask)
    return frame


def is_categorical(column: pd.Series) -> bool:
    """Text (or other non-numeric) columns are one-hot encoded; numbers and booleans are standardized."""
    return not (pd.api.types.is_numeric_dtype(column) or pd.api.types.is_bool_dtype(column))


@dataclass
class Preprocessor:
    """Imputation, one-hot encoding, standardization and target encoding, fitted on the training split only.

    It is plain numbers and names (JSON-serializable) so a saved model can be rebuilt without pickle.
    ``feature_names`` are the raw input columns a caller provides; ``encoded_names`` the network's inputs.
    """

    task: str
    feature_names: list[str]
    numeric: list[str]  # numeric input columns, in input order; ``mean``/``scale`` follow this order
    mean: list[float]
    scale: list[float]
    fill: dict[str, Any] = field(default_factory=dict)  # column → imputed value (number or category)
    categories: dict[str, list[str]] = field(default_factory=dict)  # categorical column → categories seen
    impute: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_IMPUTE))
    classes: list[str] | None = None  # class names in output order (classification)
    label_values: list | None = None  # raw target values in output order (classification)
    target_mean: float = 0.0  # regression targets are standardized too; predictions are mapped back
    target_scale: float = 1.0

    @classmethod
    def fit(
        cls,
        features: pd.DataFrame,
        target: pd.Series,
        task: str,
        class_names: list[str] | None = None,
        *,
        impute: Mapping[str, str] | None = None,
        standardize: bool = True,
    ) -> Preprocessor:
        """Fit on training rows: fill values, categories, per-column mean/std, class order, target mean/std."""
        strategy = {**DEFAULT_IMPUTE, **(impute or {})}
        names = [str(c) for c in features.columns]
        prep = cls(task=task, feature_names=names, numeric=[], mean=[], scale=[], impute=strategy)
        refuse_empty_columns(features, "in the training split")
        for name in names:
            if is_categorical(features[name]):
                prep._fit_categorical(name, features[name], strategy["categorical"])
            else:
                prep.numeric.append(name)
        if prep.numeric:
            values = _inf_as_missing(features[prep.numeric].to_numpy(dtype=np.float64, na_value=np.nan))
            missing = np.isnan(values)
            if strategy["numeric"] == "median":
                fill = np.nanmedian(values, axis=0) if missing.any() else np.median(values, axis=0)
            else:
                fill = np.nanmean(values, axis=0)
            prep.fill.update({name: float(v) for name, v in zip(prep.numeric, fill)})
            filled = np.where(missing, fill, values) if missing.any() else values
            mean = filled.mean(axis=0) if standardize else np.zeros(filled.shape[1])
            scale = filled.std(axis=0) if standardize else np.ones(filled.shape[1])
            scale[scale == 0] = 1.0  # constant columns stay constant (0) instead of dividing by zero
            prep.mean, prep.scale = mean.tolist(), scale.tolist()
        prep._fit_target(target, class_names)
        return prep

    def _fit_categorical(self, name: str, column: pd.Series, strategy: str) -> None:
        present = column.dropna().astype(str)
        if strategy == "missing":
            self.fill[name] = MISSING_CATEGORY
        else:  # most frequent; ties go to the alphabetically first category
            counts = present.value_counts()
            self.fill[name] = str(min(counts.index[counts == counts.max()]))
        seen = set(present)
        if column.isna().any():
            seen.add(self.fill[name])
        self.categories[name] = sorted(seen)

    def _fit_target(self, target: pd.Series, class_names: list[str] | None) -> None:
        if self.task == "regression":
            values = target.astype(np.float64)
            self.target_mean = float(values.mean())
            self.target_scale = float(values.std(ddof=0)) or 1.0
            return
        labels = [plain_value(v) for v in target.unique().tolist()]
        try:
            labels = sorted(labels)
        except TypeError:  # mixed types: a stable, readable order anyway
            labels = sorted(labels, key=str)
        if class_names is not None and all(isinstance(v, int) and 0 <= v < len(class_names) for v in labels):
            self.classes = [class_names[v] for v in labels]
        else:
            self.classes = [label_name(v) for v in labels]
        self.label_values = labels

    @property
    def n_outputs(self) -> int:
        """Width of the network's output layer: 1 for binary and regression, one logit per class otherwise."""
        return len(self.classes) if self.task == "multiclass" else 1

    @property
    def encoded_names(self) -> list[str]:
        """Names of the network's input columns: numeric columns as they are, one ``col=category`` per category."""
        names: list[str] = []
        for name in self.feature_names:
            names.extend([name] if name not in self.categories else [f"{name}={c}" for c in self.categories[name]])
        return names

    def _numeric_matrix(self, features: pd.DataFrame) -> np.ndarray:
        """Numeric columns as float64, missing values imputed."""
        frame = features[self.numeric]
        try:
            values = frame.to_numpy(dtype=np.float64, na_value=np.nan)
        except (TypeError, ValueError):
            bad = [c for c in self.numeric if pd.to_numeric(frame[c], errors="coerce").isna().sum() > frame[c].isna().sum()]
            raise DataError(f"non-numeric values in numeric feature column(s): {', '.join(bad)}") from None
        values = _inf_as_missing(values)
        fill = np.asarray([self.fill[c] for c in self.numeric], dtype=np.float64)
        missing = np.isnan(values)
        if missing.any():
            values = np.where(missing, fill, values)
        return values

    def transform_features(self, features: pd.DataFrame) -> np.ndarray:
        """Raw rows (any column order, extra columns ignored) → the float32 matrix the network takes."""
        missing = [c for c in self.feature_names if c not in features.columns]
        if missing:
            raise DataError(f"missing feature column(s): {', '.join(missing)}")
        numeric = (self._numeric_matrix(features) - np.asarray(self.mean)) / np.asarray(self.scale)
        # Still finite in float32 when a value far outside the training rows' spread is scaled by a tiny one.
        numeric = np.clip(numeric, -FLOAT32_MAX, FLOAT32_MAX)
        if not self.categories:
            return numeric.astype(np.float32)
        out = np.zeros((len(features), len(self.encoded_names)), dtype=np.float32)
        position, numeric_col = 0, 0
        for name in self.feature_names:
            if name not in self.categories:
                out[:, position] = numeric[:, numeric_col]
                position, numeric_col = position + 1, numeric_col + 1
                continue
            column = features[name]
            values = column.astype(object).where(column.notna(), self.fill[name]).map(str).to_numpy()
            for category in self.categories[name]:  # an unseen category matches none: all zeros
                out[:, position] = values == category
                position += 1
        return out

    def transform_target(self, target: pd.Series) -> np.ndarray:
        """Encode the target: class index (int64) for classification, standardized float32 for regression."""
        if self.task == "regression":
            return ((target.to_numpy(dtype=np.float64) - self.target_mean) / self.target_scale).astype(np.float32)
        index = {v: i for i, v in enumerate(self.label_values)}
        by_name = {label_name(v): i for i, v in enumerate(self.label_values)}
        codes = [index.get(plain_value(v), by_name.get(label_name(plain_value(v)))) for v in target.tolist()]
        unknown = sorted({str(v) for v, c in zip(target.tolist(), codes) if c is None})
        if unknown:
            raise DataError(f"target values not seen in training: {', '.join(unknown[:10])}")
        return np.asarray(codes, dtype=np.int64)

    def decode_target(self, values: Sequence | np.ndarray) -> list:
        """Class indices → the original target values; regression outputs (standardized) → original units."""
        if self.task == "regression":
            return (np.asarray(values, dtype=np.float64) * self.target_scale + self.target_mean).tolist()
        return [self.label_values[int(i)] for i in np.asarray(values).reshape(-1)]

    def to_dict(self) -> dict:
        """JSON-ready description (the model artifact stores it beside the weights)."""
        return {
            "task": self.task,
            "feature_names": list(self.feature_names),
            "encoded_names": self.encoded_names,
            "numeric": list(self.numeric),
            "mean": list(self.mean),
            "scale": list(self.scale),
            "fill": {k: plain_value(v) for k, v in self.fill.items()},
            "categories": {k: list(v) for k, v in self.categories.items()},
            "impute": dict(self.impute),
            "classes": None if self.classes is None else list(self.classes),
            "label_values": None if self.label_values is None else list(self.label_values),
            "target_mean": self.target_mean,
            "target_scale": self.target_scale,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessor:
        """Rebuild what :meth:`to_dict` wrote (``encoded_names`` is derived, so it is not read back)."""
        return cls(
            task=data["task"],
            feature_names=list(data["feature_names"]),
            numeric=list(data["numeric"]),
            mean=[float(v) for v in data["mean"]],
            scale=[float(v) for v in data["scale"]],
            fill=dict(data.get("fill", {})),
            categories={k: list(v) for k, v in data.get("categories", {}).items()},
            impute=dict(data.get("impute", DEFAULT_IMPUTE)),
            classes=None if data.get("classes") is None else list(data["classes"]),
            label_values=None if data.get("label_values") is None else list(data["label_values"]),
            target_mean=float(data.get("target_mean", 0.0)),
            target_scale=float(data.get("target_scale", 1.0)),
        )


def check_categories(features: pd.DataFrame, max_categories: int) -> None:
    """Every text column is one-hot encoded, one network input per distinct value: an id or free-text column would
    silently make the table enormous."""
    for name in features.columns:
        if is_categorical(features[name]):
            count = features[name].nunique()
            if count > max_categories:
                raise DataError(f"feature column {str(name)!r} has {count} distinct text values, above the limit of "
                                f"{max_categories} categories (each would be one input): drop it (data.drop) if it is "
                                f"an id or free text, or raise limits.max_categories")


def refuse_empty_columns(features: pd.DataFrame, where: str) -> None:
    """A :class:`DataError` naming the feature columns without a single value (``where``: in which rows): nothing
    could be imputed or learned from them."""
    empty = [str(c) for c in features.columns[features.isna().all().to_numpy()]]
    if empty:
        raise DataError(f"feature column(s) with no values {where}: {', '.join(empty)}; drop them (data.drop)")
