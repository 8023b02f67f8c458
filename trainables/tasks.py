"""The target: which task it poses (binary, multiclass or regression) and whether it can be learned at all.

Also how a target's values are named in messages and class lists (numpy scalars as plain Python values, ``3.0``
as ``3``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from trainables.names import DataError

# An integer target with at most this many distinct values is taken to be class labels.
MAX_CLASSES_FOR_AUTO = 20


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


def check_target(target: pd.Series, task: str) -> None:
    """A :class:`DataError` unless ``target`` has values a ``task`` model can learn from (numbers for a
    regression, two or more distinct values, exactly two classes for binary)."""
    name = target.name if target.name is not None else "target"
    if len(target) == 0:
        raise DataError(f"target {name!r} has no values")
    if task == "regression":
        if not pd.api.types.is_numeric_dtype(target) or pd.api.types.is_bool_dtype(target):
            raise DataError(f"task is regression but target {name!r} is not numeric (e.g. {target.iloc[0]!r})")
        if target.nunique() < 2:
            raise DataError(f"target {name!r} has a single value ({plain_value(target.iloc[0])!r}); "
                            "there is nothing to learn")
        return
    n_classes = target.nunique()
    if n_classes < 2:
        raise DataError(f"target {name!r} has only one class ({plain_value(target.iloc[0])!r}); a classifier needs at least two")
    if task == "binary" and n_classes != 2:
        raise DataError(f"task is binary but target {name!r} has {n_classes} classes")


def plain_value(value: Any) -> Any:
    """A JSON-native Python value (numpy scalars → int/float/bool/str)."""
    if isinstance(value, np.generic):
        value = value.item()
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def label_name(value: Any) -> str:
    """How a class label reads: a whole float as an integer."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)

