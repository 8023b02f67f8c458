"""Task detection and the checks that a target can be learned."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.tables import car_csv, split_csv  # noqa: F401 - car_csv: a fixture
from trainables.names import SKLEARN_DATASETS, DataError
from trainables.sources import load_table
from trainables.splitting import split_dataset
from trainables.tasks import detect_task, label_name, plain_value


@pytest.mark.parametrize("target,task", [("price", "regression"), ("color", "multiclass"), ("kind", "binary"),
                                         ("cylinders", "multiclass")])
def test_task_detection(car_csv, target, task, caplog):
    caplog.set_level("INFO", logger="trainables.splitting")
    split = split_csv(car_csv, target=target, drop=["id"])
    assert split.task == task
    assert f"task detected as {task}" in caplog.text
    if task != "regression":
        assert split.trial_data().y_train.dtype == np.int64


def test_integer_class_names_are_readable(car_csv):
    assert split_csv(car_csv, target="cylinders").preprocessor.classes == ["4", "6", "8"]


def test_one_class_target(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"x": range(20), "y": ["yes"] * 20}).to_csv(path, index=False)
    with pytest.raises(DataError, match="only one class \\('yes'\\)"):
        split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y")


def test_regression_needs_a_numeric_target(car_csv):
    with pytest.raises(DataError, match="not numeric"):
        split_csv(car_csv, target="color", task="regression")


def test_constant_regression_target(tmp_path):
    path = tmp_path / "constant.csv"
    pd.DataFrame({"x": range(20), "y": [2.5] * 20}).to_csv(path, index=False)
    with pytest.raises(DataError, match="target 'y' has a single value \(2.5\)"):
        split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y")


@pytest.mark.parametrize("name,task", list(SKLEARN_DATASETS.items()))
def test_each_bundled_dataset_poses_the_task_the_config_assumes(name, task):
    # `hps validate` checks a `task: auto` config's metric against this task without loading the data.
    table = load_table(f"sklearn:{name}")
    assert detect_task(table.target) == task
    assert (table.class_names is None) == (task == "regression")


def test_label_names_read_as_written():
    assert [label_name(v) for v in (3.0, 2.5, "a", 7)] == ["3", "2.5", "a", "7"]
    values = (np.int64(1), np.float32(0.5), np.bool_(True), "x")
    assert [type(plain_value(v)) for v in values] == [int, float, bool, str]
