"""Datasets: loading, task detection, the train/validation/test split and preprocessing.

Everything here runs in the driver, once per search. Trials only ever receive a :class:`TrialData`
(train + validation arrays); the test split stays "in the vault" and is only described by its fingerprint.

Sources (``data.source``):

- ``sklearn:<name>``: a dataset bundled with scikit-learn (digits, wine, breast_cancer, iris, diabetes);
- ``csv:PATH`` / ``parquet:PATH``: a table; ``target`` names the column to predict;
- ``npz:PATH``: a NumPy archive with arrays ``X`` (rows x features, more dimensions are flattened) and ``y``;
- ``idx:DIR``: MNIST-style IDX files with the standard names (``train-images-idx3-ubyte``, ...,
  optionally ``.gz``); images are flattened and scaled to [0, 1].

Relative paths are resolved against the current working directory.

The :class:`Preprocessor` is fitted on the training rows only (imputation, one-hot encoding, standardization,
target encoding) and is plain JSON (:meth:`Preprocessor.to_dict` / :meth:`Preprocessor.from_dict`), so a saved
model predicts from raw rows of the original table without pickle.
"""

from __future__ import annotations

import difflib
import gzip
import hashlib
import json
import logging
import warnings
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn import datasets as sk_datasets
from sklearn.model_selection import KFold, StratifiedKFold, train_test_split

from trainables.names import (  # noqa: F401 - re-exported here
    MAX_CATEGORIES,
    MAX_COLUMNS,
    SOURCE_KINDS,
    TABLE_KINDS,
    TASKS,
    DataError,
)

log = logging.getLogger(__name__)

SKLEARN_DATASETS = {
    "digits": sk_datasets.load_digits,
    "wine": sk_datasets.load_wine,
    "breast_cancer": sk_datasets.load_breast_cancer,
    "iris": sk_datasets.load_iris,
    "diabetes": sk_datasets.load_diabetes,
}
NUMERIC_IMPUTE = ("median", "mean")
CATEGORICAL_IMPUTE = ("most_frequent", "missing")  # "missing": a category of its own
DEFAULT_IMPUTE = {"numeric": "median", "categorical": "most_frequent"}
MISSING_CATEGORY = "<missing>"
# An integer target with at most this many distinct values is taken to be class labels.
MAX_CLASSES_FOR_AUTO = 20
# How many close matches an unknown column name is answered with (never the whole header of a wide table).
CLOSE_MATCHES = 3
IDX_FILES = {  # split -> (images, labels), without the optional .gz
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "t10k": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC = 2051, 2049  # unsigned bytes, 3 and 1 dimensions


@dataclass
class Table:
    """A raw dataset: features as a DataFrame and the target as a Series, plus class names if known.

    ``standardize`` is False for data already on a common scale (IDX pixels in [0, 1]): standardizing each
    pixel on its own would blow up pixels that are almost always 0.
    """

    features: pd.DataFrame
    target: pd.Series
    class_names: list[str] | None = None
    standardize: bool = True


# --------------------------------------------------------------------------------------------- loading


def load_table(
    source: str,
    *,
    target: str | None = None,
    features: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
    max_columns: int = MAX_COLUMNS,
) -> Table:
    """Load the dataset named by ``source`` and select its feature columns (``features`` minus ``drop``).

    More than ``max_columns`` feature columns is a :class:`DataError`; a CSV or Parquet file is refused from its
    header alone, before its rows are read.
    """
    kind, _, rest = source.partition(":")
    if kind not in SOURCE_KINDS:
        raise DataError(f"unknown data source {source!r}; expected one of {', '.join(k + ':' for k in SOURCE_KINDS)}")
    if kind in TABLE_KINDS and not target:
        raise DataError(f"data source {source!r} needs data.target (the column to predict)")
    if kind == "sklearn":
        table = _load_sklearn(rest)
    elif kind == "idx":
        table = _load_idx(_existing(rest, directory=True))
    elif kind == "npz":
        table = _load_npz(_existing(rest))
    else:
        path = _existing(rest)
        _check_header(_read_header(kind, path), target, features, drop, max_columns)
        table = _split_target(_read_frame(kind, path), target)
    table = _select_features(table, features, drop)
    _check_width(len(table.features.columns), max_columns)
    return table


def _read_header(kind: str, path: Path) -> list[str]:
    """The column names of a CSV or Parquet file, without reading its rows."""
    try:
        if kind == "csv":
            return [str(c) for c in pd.read_csv(path, nrows=0).columns]
        import pyarrow.parquet as pq

        return [str(name) for name in pq.read_schema(path).names if not name.startswith("__index_level_")]
    except Exception as exc:  # parser errors come in many types; the user needs the file and the reason
        raise DataError(f"cannot read {kind} file {str(path)!r}: {_reason(exc)}") from None


def _check_header(columns: list[str], target: str | None, features: Sequence[str] | None,
                  drop: Sequence[str] | None, max_columns: int) -> None:
    """The target exists and the feature columns are within ``max_columns``, judged from the header."""
    if target not in columns:
        raise DataError(f"target column {target!r} not found{_close_matches(str(target), columns)}")
    if features is None:  # with data.features the selection is checked once the table is read
        _check_width(len(set(columns) - {target} - set(drop or [])), max_columns)


def _check_width(n_columns: int, max_columns: int) -> None:
    if n_columns > max_columns:
        raise DataError(f"{n_columns} feature columns is above the limit of {max_columns}: choose some (data.features "
                        f"or data.drop), or raise limits.max_columns if the network should take them all")


def _close_matches(name: str, columns: Sequence[str]) -> str:
    """``; did you mean 'age', 'wage'? (412 columns)``: at most a few similar names, never the whole header."""
    matches = difflib.get_close_matches(name, list(columns), n=CLOSE_MATCHES, cutoff=0.6)
    if not matches:  # a different case, or a prefix: still worth showing
        lowered = name.lower()
        matches = [c for c in columns if lowered in c.lower() or c.lower() in lowered][:CLOSE_MATCHES]
    suggestion = f"; did you mean {', '.join(map(repr, matches))}?" if matches else ""
    return f"{suggestion} ({len(columns)} column(s))"


def _existing(path: str, directory: bool = False) -> Path:
    resolved = Path(path).expanduser()
    if not path or not resolved.exists():
        raise DataError(f"data {'directory' if directory else 'file'} {path!r} does not exist")
    if directory and not resolved.is_dir():
        raise DataError(f"idx: needs a directory with the IDX files, got the file {path!r}")
    if not directory and resolved.is_dir():
        raise DataError(f"{path!r} is a directory, not a data file")
    return resolved


def _load_sklearn(name: str) -> Table:
    if name not in SKLEARN_DATASETS:
        raise DataError(f"unknown sklearn dataset {name!r}; choose from {sorted(SKLEARN_DATASETS)}")
    bunch = SKLEARN_DATASETS[name](as_frame=True)
    names = [str(n) for n in bunch.target_names] if hasattr(bunch, "target_names") and name != "diabetes" else None
    return Table(features=bunch.data, target=bunch.target, class_names=names)


def _read_frame(kind: str, path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path) if kind == "csv" else pd.read_parquet(path)
    except Exception as exc:  # parser errors come in many types; the user needs the file and the reason
        raise DataError(f"cannot read {kind} file {str(path)!r}: {_reason(exc)}") from None


def _reason(exc: Exception) -> str:
    """The first line of an exception's message (DataErrors are one line)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _split_target(frame: pd.DataFrame, target: str | None) -> Table:
    if target not in frame.columns:
        raise DataError(f"target column {target!r} not found{_close_matches(str(target), [str(c) for c in frame.columns])}")
    return Table(features=frame.drop(columns=[target]), target=frame[target])


def _load_npz(path: Path) -> Table:
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except Exception as exc:  # a bad archive, or object arrays (pickle is refused)
        raise DataError(f"cannot read npz file {str(path)!r}: {_reason(exc)}") from None
    if "X" not in arrays or "y" not in arrays:
        raise DataError(f"npz file {str(path)!r} needs arrays 'X' and 'y'; it has: {', '.join(arrays) or 'none'}")
    x, y = arrays["X"], arrays["y"]
    if x.ndim < 2 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"npz file {str(path)!r}: X must be (rows, features...) and y (rows,); got {x.shape} and {y.shape}")
    x = x.reshape(len(x), -1)
    columns = [f"x{i}" for i in range(x.shape[1])]
    return Table(features=pd.DataFrame(x, columns=columns), target=pd.Series(y, name="y"))


def _load_idx(directory: Path) -> Table:
    """MNIST / Fashion-MNIST: the train files, plus the t10k files when present, as one table."""
    images, labels = [], []
    for split, names in IDX_FILES.items():
        found = [_idx_file(directory, name) for name in names]
        if split == "t10k" and found == [None, None]:
            continue  # the train files alone are a dataset too
        for name, path in zip(names, found):
            if path is None:
                raise DataError(f"IDX file {name}[.gz] not found in {str(directory)!r}")
        x, y = _read_idx(found[0], IDX_IMAGES_MAGIC), _read_idx(found[1], IDX_LABELS_MAGIC)
        if len(x) != len(y):
            raise DataError(f"IDX files in {str(directory)!r}: {names[0]} has {len(x)} images but {names[1]} {len(y)} labels")
        images.append(x.reshape(len(x), -1))
        labels.append(y)
    pixels = np.concatenate(images).astype(np.float32) / np.float32(255.0)
    columns = [f"px{i}" for i in range(pixels.shape[1])]
    return Table(
        features=pd.DataFrame(pixels, columns=columns),
        target=pd.Series(np.concatenate(labels).astype(np.int64), name="label"),
        standardize=False,
    )


def _idx_file(directory: Path, name: str) -> Path | None:
    for candidate in (directory / name, directory / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX file of unsigned bytes (``magic`` 2051 for images, 2049 for labels)."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (gzip.BadGzipFile, EOFError, zlib.error) as exc:  # EOFError: cut short; zlib.error: corrupt data
        raise DataError(f"IDX file {str(path)!r} is not a readable gzip file ({exc})") from None
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found != magic:
        raise DataError(f"IDX file {str(path)!r} has magic number {found}, expected {magic}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) != header + int(np.prod(shape)):
        raise DataError(f"IDX file {str(path)!r} is truncated or too long for shape {shape}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _select_features(table: Table, features: Sequence[str] | None, drop: Sequence[str] | None) -> Table:
    columns = [str(c) for c in table.features.columns]
    table.features.columns = columns
    target = str(table.target.name) if table.target.name is not None else None
    for key, names in (("data.features", features), ("data.drop", drop)):
        unknown = [n for n in names or [] if n not in columns and not (n == target and key == "data.drop")]
        if target is not None and target in (names or []) and key == "data.features":
            raise DataError(f"{key}: {target!r} is the target column, not a feature")
        if unknown:
            raise DataError(f"{key}: no column {unknown[0]!r}{_close_matches(unknown[0], columns)}"
                            + (f" (and {len(unknown) - 1} more unknown)" if len(unknown) > 1 else ""))
    keep = [c for c in (features or columns) if c not in set(drop or [])]
    if not keep:
        raise DataError("no feature columns left (data.features / data.drop remove them all)")
    table.features = table.features[keep]
    return table


# ----------------------------------------------------------------------------------------------- task


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


def _check_target(target: pd.Series, task: str) -> None:
    name = target.name if target.name is not None else "target"
    if len(target) == 0:
        raise DataError(f"target {name!r} has no values")
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
            raise DataError(f"task is regression but target {name!r} is not numeric (e.g. {target.iloc[0]!r})")
        if target.nunique() < 2:
            raise DataError(f"target {name!r} has a single value ({_py(target.iloc[0])!r}); there is nothing to learn")
        return
    n_classes = target.nunique()
    if n_classes < 2:
        raise DataError(f"target {name!r} has only one class ({target.iloc[0]!r}); a classifier needs at least two")
    if task == "binary" and n_classes != 2:
        raise DataError(f"task is binary but target {name!r} has {n_classes} classes")


# ----------------------------------------------------------------------------------------- preprocessing


def _py(value: Any) -> Any:
    """A JSON-native Python value (numpy scalars → int/float/bool/str)."""
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def _label_name(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _inf_as_missing(values: np.ndarray) -> np.ndarray:
    """±inf is a missing value (imputed like NaN): one infinite cell would otherwise make the column's mean and
    standard deviation, every trial's loss and every prediction NaN."""
    infinite = np.isinf(values)
    if infinite.any():
        values = np.where(infinite, np.nan, values)
    return values


def _inf_columns_as_missing(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with ±inf in its float columns replaced by NaN (the same object when there is none)."""
    floats = [c for c in frame.columns if pd.api.types.is_float_dtype(frame[c])]
    infinite = [c for c in floats if np.isinf(frame[c].to_numpy(dtype=np.float64, na_value=np.nan)).any()]
    if not infinite:
        return frame
    frame = frame.copy()
    for column in infinite:
        frame[column] = frame[column].mask(np.isinf(frame[column].to_numpy(dtype=np.float64, na_value=np.nan)))
    return frame


def _is_categorical(column: pd.Series) -> bool:
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
        empty = features.columns[features.isna().all().to_numpy()]
        if len(empty):
            raise DataError(f"feature column(s) with no values in the training split: {', '.join(map(str, empty))}; "
                            "drop them (data.drop)")
        for name in names:
            if _is_categorical(features[name]):
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
        labels = [_py(v) for v in target.unique().tolist()]
        try:
            labels = sorted(labels)
        except TypeError:  # mixed types: a stable, readable order anyway
            labels = sorted(labels, key=str)
        if class_names is not None and all(isinstance(v, int) and 0 <= v < len(class_names) for v in labels):
            self.classes = [class_names[v] for v in labels]
        else:
            self.classes = [_label_name(v) for v in labels]
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
        by_name = {_label_name(v): i for i, v in enumerate(self.label_values)}
        codes = [index.get(_py(v), by_name.get(_label_name(_py(v)))) for v in target.tolist()]
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
            "fill": {k: _py(v) for k, v in self.fill.items()},
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


# ------------------------------------------------------------------------------------------- splitting


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


def split_dataset(
    source: str,
    task: str,
    val: float,
    test: float,
    seed: int,
    *,
    target: str | None = None,
    features: Sequence[str] | None = None,
    drop: Sequence[str] | None = None,
    impute: Mapping[str, str] | None = None,
    folds: int | None = None,
    max_columns: int = MAX_COLUMNS,
    max_categories: int = MAX_CATEGORIES,
) -> SplitDataset:
    """Load ``source``, drop rows without a target, split (stratified for classification) and fit preprocessing.

    With ``folds`` the rows outside the test split are cut into that many cross-validation folds instead of a
    ``val`` fraction (which is then not used). ±inf counts as missing, in features (imputed) and in the target (the
    row is dropped). More than ``max_columns`` feature columns, or a text column with more than ``max_categories``
    distinct values, is refused. Raises :class:`DataError` (one line) for anything wrong with the data itself.
    """
    _check_impute(impute)
    table = load_table(source, target=target, features=features, drop=drop, max_columns=max_columns)
    _check_categories(table.features, max_categories)
    table.features = _inf_columns_as_missing(table.features)
    has_target = table.target.notna().to_numpy()
    if pd.api.types.is_float_dtype(table.target):
        has_target = has_target & ~np.isinf(table.target.to_numpy(dtype=np.float64, na_value=np.nan))
    n_dropped = int((~has_target).sum())
    if n_dropped:
        log.info("data %s: dropped %d row(s) with a missing or infinite target", source, n_dropped)
        table.features = table.features[has_target].reset_index(drop=True)
        table.target = table.target[has_target].reset_index(drop=True)
    if len(table.target) == 0:  # before the feature check: with no rows left every feature column is empty too
        raise DataError(f"target {table.target.name!r} has no values (all {n_dropped} rows are missing it)")
    empty = [str(c) for c in table.features.columns[table.features.isna().all().to_numpy()]]
    if empty:
        raise DataError(f"feature column(s) with no values at all: {', '.join(empty)}; drop them (data.drop)")
    resolved = detect_task(table.target) if task == "auto" else task
    if task == "auto":
        log.info("data %s: task detected as %s (target %r: %s, %d distinct values)", source, resolved,
                 table.target.name, table.target.dtype, table.target.nunique())
    _check_target(table.target, resolved)
    # With folds there is no validation split: the folds are cut from the training rows.
    train_idx, val_idx, test_idx = _split_rows(table.target, resolved, 0.0 if folds else val, test, seed)
    fold_rows = _fold_rows(table.target, resolved, train_idx, folds, seed) if folds else None
    prep = Preprocessor.fit(
        table.features.iloc[train_idx], table.target.iloc[train_idx], resolved, table.class_names,
        impute=impute, standardize=table.standardize,
    )
    fingerprint = split_fingerprint(content_digest(table), seed, train_idx, val_idx, test_idx, *(fold_rows or []),
                                    target=target)
    return SplitDataset(
        table, resolved, np.sort(train_idx), np.sort(val_idx), np.sort(test_idx), prep, fingerprint, n_dropped,
        fold_rows,
    )


def _check_categories(features: pd.DataFrame, max_categories: int) -> None:
    """Every text column is one-hot encoded, one network input per distinct value: an id or free-text column would
    silently make the table enormous."""
    for name in features.columns:
        if _is_categorical(features[name]):
            count = features[name].nunique()
            if count > max_categories:
                raise DataError(f"feature column {str(name)!r} has {count} distinct text values, above the limit of "
                                f"{max_categories} categories (each would be one input): drop it (data.drop) if it is "
                                f"an id or free text, or raise limits.max_categories")


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
        raise DataError(f"cannot cut {len(rows)} rows into {folds} cross-validation folds: {_reason(exc)}") from None
    if task != "regression":
        for part in parts:  # every fold's training rows must still hold every class
            _raise_absent(target, set(target.unique()) - set(target.iloc[np.setdiff1d(rows, part)].unique()))
    return parts


def _check_impute(impute: Mapping[str, str] | None) -> None:
    for key, value in (impute or {}).items():
        allowed = {"numeric": NUMERIC_IMPUTE, "categorical": CATEGORICAL_IMPUTE}.get(key)
        if allowed is None or value not in allowed:
            raise DataError(f"impute.{key}: {value!r} is not a strategy; numeric: {NUMERIC_IMPUTE}, categorical: {CATEGORICAL_IMPUTE}")


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
        raise DataError(f"cannot split {len(rows)} rows into train/val/test ({1 - val - test:g}/{val:g}/{test:g}): {_reason(exc)}") from None
    if stratify is not None:
        _raise_absent(target, set(target.unique()) - set(target.iloc[train_idx].unique()))
    return train_idx, val_idx, test_idx


def _raise_absent(target: pd.Series, classes: set) -> None:
    if classes:
        counts = target.value_counts()
        shown = ", ".join(sorted(f"{_label_name(_py(v))!r} ({counts[v]} rows)" for v in classes))
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
