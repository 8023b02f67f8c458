"""Preprocessing fitted on the training split only: imputation, one-hot encoding, standardization, target encoding."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from search.config.dataset import split_from_config
from search.config.schema import parse_config
from tests.tables import COLORS, car_csv, car_table, split_csv  # noqa: F401 - car_csv: a fixture
from trainables.names import DataError
from trainables.preprocessing import Preprocessor


def test_preprocessing_is_fitted_on_training_rows_only(car_csv):
    split = split_csv(car_csv)
    prep, data = split.preprocessor, split.trial_data()
    train = split.table.features.iloc[split.train_idx]
    assert prep.feature_names == ["weight", "cylinders", "color", "kind"]
    assert prep.encoded_names == ["weight", "cylinders", "color=blue", "color=green", "color=red", "kind=a", "kind=b"]
    assert prep.fill["weight"] == pytest.approx(train["weight"].median())
    assert prep.fill["color"] == train["color"].mode().iloc[0] == "red"
    # numeric columns standardized with training statistics; one-hot columns stay 0/1
    assert np.allclose(data.x_train[:, :2].mean(axis=0), 0, atol=1e-5)
    assert np.allclose(data.x_train[:, :2].std(axis=0), 1, atol=1e-4)
    assert not np.allclose(data.x_val[:, :2].mean(axis=0), 0, atol=1e-5)
    assert set(np.unique(data.x_train[:, 2:])) == {0.0, 1.0}
    assert (data.x_train[:, 2:5].sum(axis=1) == 1).all() and (data.x_train[:, 5:].sum(axis=1) == 1).all()
    # regression target standardized with training rows too
    assert prep.target_mean == pytest.approx(split.table.target.iloc[split.train_idx].mean())
    assert data.y_train.dtype == np.float32 and abs(float(data.y_train.mean())) < 1e-5


def test_missing_values_are_imputed(car_csv):
    prep = split_csv(car_csv).preprocessor
    rows = pd.DataFrame({"weight": [np.nan], "cylinders": [4], "color": [None], "kind": ["a"]})
    x = prep.transform_features(rows)
    assert x[0, 0] == pytest.approx((prep.fill["weight"] - prep.mean[0]) / prep.scale[0])
    assert x[0, 2:5].tolist() == [0, 0, 1]  # the most frequent colour, red


def test_impute_strategies(car_csv):
    split = split_csv(car_csv, impute={"numeric": "mean", "categorical": "missing"})
    train = split.table.features.iloc[split.train_idx]
    prep = split.preprocessor
    assert prep.fill["weight"] == pytest.approx(train["weight"].mean())
    assert prep.fill["color"] == "<missing>" and "<missing>" in prep.categories["color"]
    with pytest.raises(DataError, match="impute.numeric"):
        split_csv(car_csv, impute={"numeric": "mode"})


def test_unseen_category_encodes_as_all_zeros(car_csv):
    prep = split_csv(car_csv).preprocessor
    rows = pd.DataFrame({"weight": [3000.0], "cylinders": [6], "color": ["purple"], "kind": ["c"]})
    assert prep.transform_features(rows)[0, 2:].tolist() == [0, 0, 0, 0, 0]


def test_raw_rows_any_column_order_extra_columns_ignored(car_csv):
    split = split_csv(car_csv)
    rows, _ = split.test_rows()
    shuffled = rows[["kind", "color", "cylinders", "weight"]].assign(extra=1, id="x")
    assert np.array_equal(split.preprocessor.transform_features(shuffled), split.preprocessor.transform_features(rows))
    with pytest.raises(DataError, match="missing feature column.*color"):
        split.preprocessor.transform_features(rows.drop(columns=["color"]))
    with pytest.raises(DataError, match="non-numeric.*weight"):
        split.preprocessor.transform_features(rows.assign(weight="heavy"))


def test_round_trip_through_json_transforms_identically(car_csv):
    split = split_csv(car_csv)
    prep = split.preprocessor
    rebuilt = Preprocessor.from_dict(json.loads(json.dumps(prep.to_dict())))
    assert rebuilt.to_dict() == prep.to_dict()
    rows, target = split.test_rows()
    assert np.array_equal(rebuilt.transform_features(rows), prep.transform_features(rows))
    assert np.array_equal(rebuilt.transform_target(target), prep.transform_target(target))
    for key in ("task", "classes", "target_mean", "target_scale", "feature_names"):  # what the trainable reads
        assert key in prep.to_dict()


def test_classification_round_trip_and_decoding(car_csv):
    split = split_csv(car_csv, target="color", drop=["id", "price"])
    prep = Preprocessor.from_dict(json.loads(json.dumps(split.preprocessor.to_dict())))
    assert split.task == "multiclass" and prep.classes == COLORS[::-1] == sorted(COLORS) and prep.n_outputs == 3
    assert split.summary()["n_dropped_missing_target"] == 2
    _, target = split.test_rows()
    codes = prep.transform_target(target)
    assert prep.decode_target(codes) == target.tolist()


def test_regression_decoding_maps_back_to_original_units(car_csv):
    prep = split_csv(car_csv).preprocessor
    _, target = split_csv(car_csv).test_rows()
    assert np.allclose(prep.decode_target(prep.transform_target(target)), target.to_numpy(), atol=1e-4)


def test_all_missing_feature(car_csv, tmp_path):
    path = tmp_path / "empty.csv"
    car_table().assign(notes=np.nan).to_csv(path, index=False)
    with pytest.raises(DataError, match="no values at all: notes"):
        split_csv(path)


def test_infinite_feature_cells_are_imputed_like_missing_ones(tmp_path):
    # Before: one inf cell made the column's mean and scale inf, every trial's inputs NaN, every prediction NaN.
    frame = car_table()
    frame.loc[[1, 2], "weight"] = [np.inf, -np.inf]
    frame.loc[4, "price"] = np.inf  # an infinite target is a missing one: the row is dropped and counted
    path = tmp_path / "inf.csv"
    frame.to_csv(path, index=False)
    split = split_csv(path)
    assert split.summary()["n_dropped_missing_target"] == 3
    data = split.trial_data()
    assert np.isfinite(data.x_train).all() and np.isfinite(data.x_val).all() and np.isfinite(data.y_train).all()
    prep = split.preprocessor
    assert np.isfinite(prep.mean).all() and np.isfinite(prep.scale).all()
    # At prediction time too: an infinite cell is imputed with the training fill, exactly like a missing one.
    rows = frame.drop(columns=["price"]).head(2).copy()
    rows.loc[:, "weight"] = [np.inf, np.nan]
    encoded = prep.transform_features(rows)
    assert np.isfinite(encoded).all()
    assert encoded[0, 0] == encoded[1, 0]


def test_an_all_infinite_column_is_an_empty_column(tmp_path):
    frame = car_table()
    frame["bad"] = np.inf
    path = tmp_path / "allinf.csv"
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match="no values at all: bad"):
        split_csv(path)


def test_a_text_column_with_too_many_categories_is_named(car_csv, tmp_path):
    # Before: an id or free-text column became one input per distinct value, silently.
    with pytest.raises(DataError, match="^feature column 'id' has 90 distinct text values, above the limit of 50 "):
        split_csv(car_csv, drop=None, max_categories=50)
    raw = {"name": "cars", "data": {"source": f"csv:{car_csv}", "target": "price"}, "space": {"lr": 0.01},
           "limits": {"max_categories": 50}}
    with pytest.raises(DataError, match="'id' has 90 distinct .*limits.max_categories"):
        split_from_config(parse_config(raw))
    raw["limits"]["max_categories"] = 100
    assert "id" in split_from_config(parse_config(raw)).preprocessor.categories
