"""Data sources, preprocessing fitted on the training split, and the data errors users see (no Ray, no MLflow)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from search.config import ConfigError, apply_overrides, load_config, load_raw, parse_config
from search.dataset import split_from_config
from tests.conftest import CONFIGS, ROOT
from trainables.data import IDX_FILES, DataError, Preprocessor, split_dataset

COLORS = ["red", "green", "blue"]


def car_table(n: int = 90, seed: int = 0) -> pd.DataFrame:
    """A small table like real ones: a categorical column, missing values, an id column, a numeric target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({
        "id": [f"row{i}" for i in range(n)],
        "weight": rng.normal(3000, 500, n).round(1),
        "cylinders": rng.choice([4, 6, 8], n),
        "color": rng.choice(COLORS, n, p=[0.5, 0.3, 0.2]),
        "kind": rng.choice(["a", "b"], n),
    })
    frame["price"] = 0.01 * frame["weight"] + 2.0 * frame["cylinders"] + rng.normal(0, 1, n)
    frame.loc[[3, 10, 20], "weight"] = np.nan
    frame.loc[[5, 6], "color"] = None
    frame.loc[[7, 8], "price"] = np.nan  # dropped, counted
    return frame


@pytest.fixture
def car_csv(tmp_path) -> Path:
    path = tmp_path / "cars.csv"
    car_table().to_csv(path, index=False)
    return path


def split_csv(path: Path, target: str = "price", task: str = "auto", **kw):
    return split_dataset(f"csv:{path}", task, 0.2, 0.2, 0, target=target, drop=kw.pop("drop", ["id"]), **kw)


def write_idx(directory: Path, n_train: int = 30, n_test: int = 10, gz: bool = False, side: int = 4) -> Path:
    """Tiny MNIST-style IDX files (labels 0-9 cycling, so every class has rows)."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, side, side), dtype=np.uint8)
        images[0, 0, 0], images[0, 0, 1] = 0, 255  # the extremes, to check the scaling
        labels = (np.arange(n) % 10).astype(np.uint8)
        image_name, label_name = IDX_FILES[split]
        _write_idx_file(directory / image_name, 2051, images, gz)
        _write_idx_file(directory / label_name, 2049, labels, gz)
    return directory


def _write_idx_file(path: Path, magic: int, array: np.ndarray, gz: bool) -> None:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    payload = header + array.tobytes()
    if gz:
        path.with_name(path.name + ".gz").write_bytes(gzip.compress(payload))
    else:
        path.write_bytes(payload)


# ------------------------------------------------------------------------------------------ preprocessing


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


def test_rows_with_missing_target_are_dropped_and_counted(car_csv):
    split = split_csv(car_csv)
    n = len(split.table.target)
    assert split.summary()["n_dropped_missing_target"] == 2 and n == 88
    assert split.table.target.notna().all()
    assert len(split.train_idx) + len(split.val_idx) + len(split.test_idx) == n
    rows, target = split.test_rows()
    assert len(rows) == len(target) == len(split.test_idx) and "id" not in rows.columns
    assert split.summary()["n_inputs"] == 7 and split.summary()["n_features"] == 4


def test_features_and_drop_select_columns(car_csv):
    split = split_csv(car_csv, features=["weight", "color"], drop=None)
    assert split.preprocessor.feature_names == ["weight", "color"]
    with pytest.raises(DataError, match="data.drop: no column 'colour'; did you mean 'color'\\? \\(5 column"):
        split_csv(car_csv, drop=["colour"])
    with pytest.raises(DataError, match="data.features.*'nope'"):
        split_csv(car_csv, features=["nope"], drop=None)


# ----------------------------------------------------------------------------------------- task detection


@pytest.mark.parametrize("target,task", [("price", "regression"), ("color", "multiclass"), ("kind", "binary"),
                                         ("cylinders", "multiclass")])
def test_task_detection(car_csv, target, task, caplog):
    caplog.set_level("INFO", logger="trainables.data")
    split = split_csv(car_csv, target=target, drop=["id"])
    assert split.task == task
    assert f"task detected as {task}" in caplog.text
    if task != "regression":
        assert split.trial_data().y_train.dtype == np.int64


def test_integer_class_names_are_readable(car_csv):
    assert split_csv(car_csv, target="cylinders").preprocessor.classes == ["4", "6", "8"]


# ------------------------------------------------------------------------------------------------ errors


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file .*nope.csv' does not exist"):
        split_dataset(f"csv:{tmp_path}/nope.csv", "auto", 0.2, 0.2, 0, target="y")
    with pytest.raises(DataError, match="data directory .*does not exist"):
        split_dataset(f"idx:{tmp_path}/nope", "auto", 0.2, 0.2, 0)


def test_missing_target_column_names_the_count(car_csv):
    with pytest.raises(DataError, match="^target column 'mpg' not found \\(6 column\\(s\\)\\)$"):
        split_csv(car_csv, target="mpg")


def test_one_class_target(tmp_path):
    path = tmp_path / "one.csv"
    pd.DataFrame({"x": range(20), "y": ["yes"] * 20}).to_csv(path, index=False)
    with pytest.raises(DataError, match="only one class \\('yes'\\)"):
        split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y")


def test_all_missing_feature(car_csv, tmp_path):
    path = tmp_path / "empty.csv"
    car_table().assign(notes=np.nan).to_csv(path, index=False)
    with pytest.raises(DataError, match="no values at all: notes"):
        split_csv(path)


def test_class_absent_from_training(tmp_path):
    path = tmp_path / "rare.csv"
    pd.DataFrame({"x": range(41), "y": ["a"] * 20 + ["b"] * 20 + ["c"]}).to_csv(path, index=False)
    with pytest.raises(DataError, match="leaves class\\(es\\) 'c' \\(1 rows\\) out of the training split"):
        split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y")


def test_regression_needs_a_numeric_target(car_csv):
    with pytest.raises(DataError, match="not numeric"):
        split_csv(car_csv, target="color", task="regression")


def test_idx_wrong_magic(tmp_path):
    directory = write_idx(tmp_path / "mnist")
    _write_idx_file(directory / "train-labels-idx1-ubyte", 2051, np.zeros((30, 1, 1), np.uint8), False)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte' has magic number 2051, expected 2049"):
        split_dataset(f"idx:{directory}", "auto", 0.2, 0.2, 0)


def test_idx_count_mismatch(tmp_path):
    directory = write_idx(tmp_path / "mnist")
    _write_idx_file(directory / "t10k-labels-idx1-ubyte", 2049, np.zeros(9, np.uint8), False)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte has 10 images but t10k-labels-idx1-ubyte 9 labels"):
        split_dataset(f"idx:{directory}", "auto", 0.2, 0.2, 0)


def test_idx_corrupt_gzip(tmp_path):
    directory = write_idx(tmp_path / "mnist")
    (directory / "train-images-idx3-ubyte").unlink()
    (directory / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz' is not a readable gzip file"):
        split_dataset(f"idx:{directory}", "auto", 0.2, 0.2, 0)


def test_target_without_any_value(tmp_path):
    path = tmp_path / "no_target.csv"
    pd.DataFrame({"x": range(20), "y": [np.nan] * 20}).to_csv(path, index=False)
    with pytest.raises(DataError, match="target 'y' has no values \(all 20 rows are missing it\)"):
        split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y")


def test_constant_regression_target(tmp_path):
    path = tmp_path / "constant.csv"
    pd.DataFrame({"x": range(20), "y": [2.5] * 20}).to_csv(path, index=False)
    with pytest.raises(DataError, match="target 'y' has a single value \(2.5\)"):
        split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y")


def test_idx_missing_file(tmp_path):
    directory = write_idx(tmp_path / "mnist")
    (directory / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte\\[.gz\\] not found"):
        split_dataset(f"idx:{directory}", "auto", 0.2, 0.2, 0)


def test_data_errors_are_one_line(car_csv, tmp_path):
    for call in (lambda: split_csv(car_csv, target="mpg"), lambda: split_dataset(f"npz:{tmp_path}/x.npz", "auto", 0.2, 0.2, 0)):
        with pytest.raises(DataError) as info:
            call()
        assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------------------------- sources


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzip"])
def test_idx_files_load_flattened_and_scaled(tmp_path, gz):
    directory = write_idx(tmp_path / "mnist", n_train=60, n_test=20, gz=gz)
    split = split_dataset(f"idx:{directory}", "auto", 0.2, 0.2, 0)
    assert split.task == "multiclass" and split.preprocessor.classes == [str(i) for i in range(10)]
    features = split.table.features
    assert features.shape == (80, 16)  # train + t10k concatenated, 4x4 images flattened
    assert features.to_numpy().min() == 0.0 and features.to_numpy().max() == 1.0
    assert features.iloc[0, 1] == 1.0  # pixel 255 → 1.0
    data = split.trial_data()
    assert data.x_train.dtype == np.float32 and 0 <= data.x_train.min() and data.x_train.max() <= 1  # not standardized
    assert len(data.x_train) + len(data.x_val) + len(split.test_idx) == 80


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    np.savez(path, X=rng.normal(size=(50, 2, 3)), y=rng.normal(size=50))
    split = split_dataset(f"npz:{path}", "auto", 0.2, 0.2, 0)
    assert split.task == "regression" and split.preprocessor.feature_names == [f"x{i}" for i in range(6)]
    np.savez(path, features=np.zeros((5, 2)))
    with pytest.raises(DataError, match="needs arrays 'X' and 'y'"):
        split_dataset(f"npz:{path}", "auto", 0.2, 0.2, 0)


def test_parquet(tmp_path):
    path = tmp_path / "cars.parquet"
    car_table().to_parquet(path)
    split = split_dataset(f"parquet:{path}", "auto", 0.2, 0.2, 0, target="kind", drop=["id"])
    assert split.task == "binary" and split.preprocessor.classes == ["a", "b"]
    assert "color=red" in split.preprocessor.encoded_names


def test_unreadable_file(tmp_path):
    path = tmp_path / "bad.parquet"
    path.write_text("not parquet")
    with pytest.raises(DataError, match="cannot read parquet file"):
        split_dataset(f"parquet:{path}", "auto", 0.2, 0.2, 0, target="y")


def test_bundled_sklearn_sets_still_split_the_same():
    split = split_dataset("sklearn:wine", "auto", 0.15, 0.15, 0)
    assert split.task == "multiclass" and split.preprocessor.classes == ["class_0", "class_1", "class_2"]
    assert split.preprocessor.decode_target([2]) == [2]
    assert split.summary()["n_dropped_missing_target"] == 0
    assert split.fingerprint == split_dataset("sklearn:wine", "auto", 0.15, 0.15, 0).fingerprint


# ----------------------------------------------------------------------------------------------- configs


def test_auto_mpg_config_loads(monkeypatch):
    monkeypatch.chdir(ROOT)  # its csv: path is relative to the working directory
    cfg = load_config(CONFIGS / "auto_mpg.yaml")
    split = split_from_config(cfg)
    assert split.task == "regression"
    assert {"Origin=USA", "Origin=Europe", "Origin=Japan"} <= set(split.preprocessor.encoded_names)
    assert "Name" not in split.preprocessor.feature_names
    assert split.summary()["n_dropped_missing_target"] > 0


def test_mnist_config_runs_on_given_idx_directory(tmp_path):
    directory = write_idx(tmp_path / "mnist", n_train=100, n_test=20, gz=True)  # stratified: >= 10 test rows
    cfg = load_config(CONFIGS / "mnist.yaml", [f"data.source=idx:{directory}"])
    split = split_from_config(cfg)
    assert split.task == "multiclass" and split.preprocessor.n_outputs == 10


@pytest.mark.parametrize("override,key,message", [
    ("data.source=xlsx:cars.xlsx", "data.source", "unknown data source"),
    ("data.source='csv:'", "data.source", "needs a path"),
    ("data.target=null", "data.target", "required for csv"),
    ("data.impute.numeric=mode", "data.impute.numeric", "median"),
])
def test_data_config_errors(override, key, message):
    raw = apply_overrides(load_raw(CONFIGS / "auto_mpg.yaml"), [override])
    with pytest.raises(ConfigError, match=message) as info:
        parse_config(raw)
    assert info.value.key == key


def test_target_only_for_tables():
    raw = apply_overrides(load_raw(CONFIGS / "digits.yaml"), ["data.target=label"])
    with pytest.raises(ConfigError, match="only csv: and parquet:"):
        parse_config(raw)


# ------------------------------------------------------------------------------------- bounds (issue 14)


def test_a_mistyped_target_gets_a_few_close_matches_not_the_whole_header(tmp_path):
    # Before: the error listed every column name (thousands of them for a wide table) on one line.
    columns = {f"sensor_{i}": [0.0, 1.0] for i in range(2000)}
    path = tmp_path / "wide.csv"
    pd.DataFrame({**columns, "price": [1.0, 2.0]}).to_csv(path, index=False)
    with pytest.raises(DataError) as caught:
        split_csv(path, target="pirce", drop=None)
    message = str(caught.value)
    assert "did you mean 'price'" in message and "(2001 column(s))" in message
    assert len(message) < 200 and message.count("sensor_") <= 3


def test_an_unknown_feature_gets_close_matches(car_csv):
    with pytest.raises(DataError, match="data.features: no column 'wieght'; did you mean 'weight'\\?"):
        split_csv(car_csv, features=["wieght", "colr"], drop=None)


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


def test_too_many_columns_is_refused_from_the_header(tmp_path):
    # Before: any number of columns was read and densely encoded without a word. Rows after the header are not even
    # parsed: the broken row below would otherwise be a parser error.
    path = tmp_path / "wide.csv"
    header = ",".join([f"c{i}" for i in range(30)] + ["y"])
    path.write_text(header + "\n" + ",".join(["1"] * 31) + "\n" + "not,a,row\n")
    with pytest.raises(DataError, match="^30 feature columns is above the limit of 10: .*limits.max_columns"):
        split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y", max_columns=10)
    # data.features choosing few of them is fine (checked after the selection).
    path.write_text(header + "\n" + "\n".join(",".join([str(i)] * 30 + [str(i % 2)]) for i in range(40)) + "\n")
    split = split_dataset(f"csv:{path}", "auto", 0.2, 0.2, 0, target="y", max_columns=10, features=["c0", "c1"])
    assert split.preprocessor.feature_names == ["c0", "c1"]
    # Sources without a header are checked once loaded.
    wide = tmp_path / "wide.npz"
    np.savez(wide, X=np.zeros((40, 31)), y=np.arange(40) % 2)
    with pytest.raises(DataError, match="^31 feature columns is above the limit of 30"):
        split_dataset(f"npz:{wide}", "auto", 0.2, 0.2, 0, max_columns=30)


def test_the_default_column_limit_comes_from_the_config(tmp_path):
    path = tmp_path / "wide.csv"
    n = 20_001
    path.write_text(",".join([f"c{i}" for i in range(n)] + ["y"]) + "\n")
    raw = {"name": "wide", "data": {"source": f"csv:{path}", "target": "y"}, "space": {"lr": 0.01}}
    with pytest.raises(DataError, match=f"^{n} feature columns is above the limit of 20000"):
        split_from_config(parse_config(raw))
    raw["limits"] = {"max_columns": 5}
    with pytest.raises(DataError, match=f"^{n} feature columns is above the limit of 5"):
        split_from_config(parse_config(raw))


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
