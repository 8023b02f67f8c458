"""The names and rules a config shares with the trainables: each table is the one the trainables use, every name in
it is implemented, and the rules answer without torch, pandas or scikit-learn."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from trainables import names
from trainables.names import known_task, metric_mode, source_error, target_error


def test_the_trainables_take_their_tables_from_names():
    from trainables import data, metrics, model, train

    assert model.ACTIVATIONS is names.ACTIVATIONS and model.NORMS is names.NORMS
    assert train.OPTIMIZERS is names.OPTIMIZERS and metrics.REGRESSION_LOSSES is names.REGRESSION_LOSSES
    assert metrics.metric_mode is names.metric_mode and data.DataError is names.DataError


def test_every_named_activation_norm_optimizer_and_loss_is_implemented():
    from trainables.metrics import loss_function
    from trainables.model import Architecture, build_mlp
    from trainables.train import make_optimizer

    for activation, class_name in names.ACTIVATIONS.items():
        net = build_mlp(Architecture(3, 1, (4,), activation=activation))
        assert type(net[1]).__name__ == class_name and net(torch.randn(2, 3)).shape == (2, 1)
    for norm in names.NORMS:
        build_mlp(Architecture(3, 1, (4,), norm=norm))(torch.randn(2, 3))
    for optimizer in names.OPTIMIZERS:
        assert type(make_optimizer({"optimizer": optimizer}, net)).__name__.lower() == optimizer
    for loss, class_name in names.REGRESSION_LOSSES.items():
        assert type(loss_function("regression", loss)).__name__ == class_name


@pytest.mark.parametrize("task", names.TASKS)
def test_each_task_reports_exactly_its_named_metrics(task):
    from trainables.metrics import validation_metrics

    outputs = torch.randn(8, 3 if task == "multiclass" else 1)
    y = torch.arange(8) % (3 if task == "multiclass" else 2)
    reported = validation_metrics(task, outputs, y.float() if task == "regression" else y)
    assert tuple(reported) == names.TASK_METRICS[task]
    assert names.MAXIMIZED <= {m for ms in names.TASK_METRICS.values() for m in ms}


def test_metric_mode():
    assert [metric_mode(m) for m in ("val_accuracy", "best_val_r2", "val_loss", "best_val_mae")] == \
        ["max", "max", "min", "min"]


@pytest.mark.parametrize("source,fragment", [
    ("ftp:x", "unknown data source 'ftp:x'; expected one of sklearn:, csv:, parquet:, idx:, npz:"),
    ("digits", "unknown data source 'digits'"),
    ("sklearn:mnist", "unknown sklearn dataset 'mnist'; choose from breast_cancer, diabetes, digits, iris, wine"),
    ("csv: ", "csv: needs a path, e.g. csv:data/file.csv"),
    ("idx:", "idx: needs a path, e.g. idx:DIR"),
])
def test_sources_that_name_no_data(source, fragment):
    assert source_error(source).startswith(fragment)


@pytest.mark.parametrize("source", ["sklearn:wine", "csv:a.csv", "parquet:a.parquet", "idx:mnist", "npz:x.npz"])
def test_sources_that_name_data(source):
    assert source_error(source) is None


def test_only_tables_name_a_target():
    assert target_error("csv:a.csv", None) == "required for csv: sources (the column to predict)"
    assert target_error("parquet:a.parquet", "y") is None and target_error("sklearn:wine", None) is None
    assert target_error("npz:x.npz", "y") == "only csv: and parquet: sources have named target columns, not npz:"


def test_impute_strategies_per_kind_of_column():
    assert names.impute_error("numeric", "mean") is None and names.impute_error("categorical", "missing") is None
    assert "'mode' is not a strategy" in names.impute_error("numeric", "mode")
    assert names.impute_error("numeric", "missing") is not None and names.impute_error("text", "median") is not None
    assert names.DEFAULT_IMPUTE == {"numeric": names.NUMERIC_IMPUTE[0], "categorical": names.CATEGORICAL_IMPUTE[0]}


def test_the_task_is_known_before_loading_only_for_bundled_and_idx_data():
    assert known_task("sklearn:breast_cancer", "auto") == "binary" and known_task("idx:mnist", "auto") == "multiclass"
    assert known_task("csv:a.csv", "auto") == "auto" and known_task("sklearn:wine", "regression") == "regression"


def test_names_and_params_import_nothing_heavy():
    code = ("import sys, trainables.names, trainables.params; "
            "print([m for m in ('torch', 'pandas', 'sklearn', 'numpy', 'ray', 'mlflow') if m in sys.modules])")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "[]", proc.stdout + proc.stderr
