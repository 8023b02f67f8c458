"""A config's data: section loaded and split: the reference configs, its errors, its limits."""

from __future__ import annotations

import pytest

from search.config.dataset import split_from_config, split_settings, with_absolute_source
from search.config.schema import ConfigError, apply_overrides, load_config, load_raw, parse_config
from tests.conftest import CONFIGS, ROOT
from tests.tables import write_idx
from trainables.names import DataError


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


def test_a_config_becomes_split_settings():
    cfg = load_config(CONFIGS / "auto_mpg.yaml", ["data.split.folds=3", "limits.max_categories=77"])
    settings = split_settings(cfg)
    assert (settings.source, settings.task, settings.target) == (cfg.data.source, cfg.data.task, cfg.data.target)
    assert (settings.val, settings.test, settings.seed, settings.folds) == (cfg.data.split.val, cfg.data.split.test,
                                                                             cfg.data.split.seed, 3)
    assert settings.drop == cfg.data.drop and settings.impute == cfg.data.impute.model_dump()
    assert (settings.max_columns, settings.max_categories) == (cfg.limits.max_columns, 77)


def test_file_sources_are_recorded_with_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for source, expected in (("csv:data/a.csv", f"csv:{tmp_path}/data/a.csv"), ("idx:mnist", f"idx:{tmp_path}/mnist"),
                             ("sklearn:wine", "sklearn:wine")):
        cfg = parse_config({"name": "x", "data": {"source": source, **({"target": "y"} if "csv" in source else {})},
                            "space": {"lr": 0.01}})
        assert with_absolute_source(cfg).data.source == expected
