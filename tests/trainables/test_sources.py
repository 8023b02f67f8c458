"""Data sources: every kind read into a table, columns selected, and the one-line errors users see."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tests.tables import car_csv, car_table, split_csv, write_idx, write_idx_file  # noqa: F401 - car_csv: a fixture
from trainables.names import DataError
from trainables.sources import load_table
from trainables.splitting import split_dataset


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="data file .*nope.csv' does not exist"):
        split_dataset(f"csv:{tmp_path}/nope.csv", "auto", 0.2, 0.2, 0, target="y")
    with pytest.raises(DataError, match="data directory .*does not exist"):
        split_dataset(f"idx:{tmp_path}/nope", "auto", 0.2, 0.2, 0)


def test_missing_target_column_names_the_count(car_csv):
    with pytest.raises(DataError, match="^target column 'mpg' not found \\(6 column\\(s\\)\\)$"):
        split_csv(car_csv, target="mpg")


def test_idx_wrong_magic(tmp_path):
    directory = write_idx(tmp_path / "mnist")
    write_idx_file(directory / "train-labels-idx1-ubyte", 2051, np.zeros((30, 1, 1), np.uint8), False)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte' has magic number 2051, expected 2049"):
        split_dataset(f"idx:{directory}", "auto", 0.2, 0.2, 0)


def test_idx_count_mismatch(tmp_path):
    directory = write_idx(tmp_path / "mnist")
    write_idx_file(directory / "t10k-labels-idx1-ubyte", 2049, np.zeros(9, np.uint8), False)
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte has 10 images but t10k-labels-idx1-ubyte 9 labels"):
        split_dataset(f"idx:{directory}", "auto", 0.2, 0.2, 0)


def test_idx_corrupt_gzip(tmp_path):
    directory = write_idx(tmp_path / "mnist")
    (directory / "train-images-idx3-ubyte").unlink()
    (directory / "train-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz' is not a readable gzip file"):
        split_dataset(f"idx:{directory}", "auto", 0.2, 0.2, 0)


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
    np.savez(path, X=np.zeros((0, 4)), y=np.zeros(0))  # was a traceback: "cannot reshape array of size 0"
    with pytest.raises(DataError, match="has no rows or no features"):
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


def test_features_and_drop_select_columns(car_csv):
    split = split_csv(car_csv, features=["weight", "color"], drop=None)
    assert split.preprocessor.feature_names == ["weight", "color"]
    with pytest.raises(DataError, match="data.drop: no column 'colour'; did you mean 'color'\\? \\(5 column"):
        split_csv(car_csv, drop=["colour"])
    with pytest.raises(DataError, match="data.features.*'nope'"):
        split_csv(car_csv, features=["nope"], drop=None)


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


def test_the_target_rule_is_the_configs(car_csv):
    # The same rule `hps validate` applies (trainables.names), for code that reads data without a config.
    with pytest.raises(DataError, match="^data.target: required for csv: sources"):
        load_table(f"csv:{car_csv}")
    with pytest.raises(DataError, match="^data.target: only csv: and parquet: sources have named target columns"):
        load_table("sklearn:wine", target="target")
    with pytest.raises(DataError, match="^unknown sklearn dataset 'mnist'; choose from breast_cancer, diabetes"):
        load_table("sklearn:mnist")
    table = load_table(f"csv:{car_csv}", target="price", drop=["id"])
    assert list(table.features.columns) == ["weight", "cylinders", "color", "kind"] and table.target.name == "price"
