"""The split: train/validation/test rows and cross-validation folds, stratified, fingerprinted, refit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.tables import car_csv, split_csv  # noqa: F401 - car_csv: a fixture
from trainables.names import DataError
from trainables.splitting import SplitSettings, split_dataset, split_from_settings


def test_refit_data_pools_train_and_validation_and_refits_preprocessing(car_csv):
    split = split_csv(car_csv)
    data = split.refit_data()
    pooled = np.sort(np.concatenate([split.train_idx, split.val_idx]))
    rows = split.table.features.iloc[pooled]
    assert len(data.x_train) == len(pooled) and len(data.x_val) == 0 and not set(pooled) & set(split.test_idx)
    assert data.preprocessor["fill"]["weight"] == pytest.approx(rows["weight"].median())
    assert data.preprocessor["target_mean"] == pytest.approx(split.table.target.iloc[pooled].mean())
    assert np.allclose(data.x_train[:, :2].mean(axis=0), 0, atol=1e-5)
    assert split.preprocessor.to_dict() != data.preprocessor  # the search's own preprocessing is untouched


def test_cross_validation_folds_partition_the_development_rows(car_csv):
    split = split_csv(car_csv, folds=4)
    holdout = split_csv(car_csv)
    assert np.array_equal(split.test_idx, holdout.test_idx)  # the same test split as without folds
    assert len(split.val_idx) == 0 and len(split.folds) == 4
    together = np.sort(np.concatenate(split.folds))
    assert np.array_equal(together, split.train_idx)  # each development row is validated on exactly once
    assert max(map(len, split.folds)) - min(map(len, split.folds)) <= 1
    assert split.summary()["n_folds"] == 4 and "n_folds" not in holdout.summary()
    assert split.fingerprint != holdout.fingerprint != split_csv(car_csv, folds=5).fingerprint
    assert split.fingerprint == split_csv(car_csv, folds=4).fingerprint


def test_each_fold_is_preprocessed_with_its_own_training_rows(car_csv):
    split = split_csv(car_csv, folds=3)
    folds = split.trial_folds()
    assert len(folds) == 3
    for val_rows, data in zip(split.folds, folds):
        train_rows = np.setdiff1d(split.train_idx, val_rows)
        assert len(data.x_train) == len(train_rows) and len(data.x_val) == len(val_rows)
        prep = data.preprocessor
        assert prep["fill"]["weight"] == pytest.approx(split.table.features["weight"].iloc[train_rows].median())
        assert prep["target_mean"] == pytest.approx(split.table.target.iloc[train_rows].mean())
    assert len({f.preprocessor["target_mean"] for f in folds}) == 3
    # without folds: the one train/validation split, as before
    holdout = split_csv(car_csv)
    (only,) = holdout.trial_folds()
    assert np.array_equal(only.x_val, holdout.trial_data().x_val)


def test_classification_folds_are_stratified(tmp_path):
    path = tmp_path / "classes.csv"
    pd.DataFrame({"x": range(100), "y": ["a"] * 50 + ["b"] * 30 + ["c"] * 20}).to_csv(path, index=False)
    split = split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y", folds=5)
    for rows in split.folds:
        counts = split.table.target.iloc[rows].value_counts()
        assert set(counts.index) == {"a", "b", "c"} and counts["a"] >= counts["b"] >= counts["c"]


def test_too_few_rows_for_the_folds(tmp_path):
    path = tmp_path / "tiny.csv"
    pd.DataFrame({"x": range(10), "y": np.arange(10) * 1.5}).to_csv(path, index=False)
    with pytest.raises(DataError, match="cannot cut 8 rows into 9 cross-validation folds"):
        split_dataset(f"csv:{path}", "regression", 0.2, 0.2, 0, target="y", folds=9)


def test_a_fold_that_leaves_a_class_out_of_training(tmp_path):
    path = tmp_path / "rare.csv"
    pd.DataFrame({"x": range(42), "y": ["a"] * 20 + ["b"] * 20 + ["c"] * 2}).to_csv(path, index=False)
    with pytest.raises(DataError, match="leaves class\(es\) 'c' \(2 rows\) out of the training split"):
        split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 1, target="y", folds=2)


def test_rows_with_missing_target_are_dropped_and_counted(car_csv):
    split = split_csv(car_csv)
    n = len(split.table.target)
    assert split.summary()["n_dropped_missing_target"] == 2 and n == 88
    assert split.table.target.notna().all()
    assert len(split.train_idx) + len(split.val_idx) + len(split.test_idx) == n
    rows, target = split.test_rows()
    assert len(rows) == len(target) == len(split.test_idx) and "id" not in rows.columns
    assert split.summary()["n_inputs"] == 7 and split.summary()["n_features"] == 4


def test_class_absent_from_training(tmp_path):
    path = tmp_path / "rare.csv"
    pd.DataFrame({"x": range(41), "y": ["a"] * 20 + ["b"] * 20 + ["c"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="leaves class\\(es\\) 'c' \\(1 rows\\) out of the training split"):
        split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y")


def test_target_without_any_value(tmp_path):
    path = tmp_path / "no_target.csv"
    pd.DataFrame({"x": range(20), "y": [np.nan] * 20}).to_csv(path, index=False)
    with pytest.raises(DataError, match="target 'y' has no values \(all 20 rows are missing it\)"):
        split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y")


def test_settings_object_and_arguments_make_the_same_split(car_csv):
    settings = SplitSettings(f"csv:{car_csv}", "auto", 0.2, 0.2, 0, target="price", drop=["id"], folds=3)
    split = split_from_settings(settings)
    assert split.fingerprint == split_csv(car_csv, folds=3).fingerprint and len(split.folds) == 3
    with pytest.raises(TypeError):
        SplitSettings(f"csv:{car_csv}", "auto", 0.2, 0.2, 0, "price")  # everything after the seed by name only
    with pytest.raises(TypeError):
        split_dataset(f"csv:{car_csv}", "auto", 0.2, 0.2, 0, traget="price")
    with pytest.raises(DataError, match="^impute.categorical: 'median' is not a strategy"):
        SplitSettings(f"csv:{car_csv}", "auto", 0.2, 0.2, 0, target="price", impute={"categorical": "median"})


def test_only_the_settings_that_change_the_rows_change_the_fingerprint(car_csv):
    base = split_csv(car_csv)
    assert split_csv(car_csv, max_columns=100, max_categories=500).fingerprint == base.fingerprint
    assert split_dataset(f"csv:{car_csv}", "auto", 0.2, 0.2, 1, target="price", drop=["id"]).fingerprint \
        != base.fingerprint
