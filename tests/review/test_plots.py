"""The PNG figures and the per-class table, drawn headless from plain arrays and a small study."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from search.review import plots

PNG = b"\x89PNG"


def test_test_set_diagnostics_are_pngs_and_the_per_class_table_counts_right(tmp_path):
    y_true, y_pred = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    classes = ["a", "b", "c"]
    assert plots.confusion_matrix(y_true, y_pred, classes, tmp_path / "cm.png").read_bytes().startswith(PNG)
    table = plots.per_class_report(y_true, y_pred, classes)
    assert table.loc["c", "support"] == 3 and table.loc["c", "recall"] == pytest.approx(2 / 3)
    assert table.loc["b", "precision"] == pytest.approx(0.5)
    values = np.linspace(0, 1, 20)
    path = plots.regression_diagnostics(values, values + 0.1, tmp_path / "pva.png")
    assert path.read_bytes().startswith(PNG)


def test_validation_curves_skip_a_trial_without_points(tmp_path):
    histories = {"a": [(2, 0.5), (1, 0.9)], "b": [(1, 0.8)], "empty": []}
    path = plots.validation_curves(histories, {"b"}, "val_loss", tmp_path / "curves.png")
    assert path.read_bytes().startswith(PNG)


def add_trials(study: optuna.Study, values) -> optuna.Study:
    distributions = {"x": optuna.distributions.FloatDistribution(0, 1), "y": optuna.distributions.FloatDistribution(0, 1)}
    for x in (0.1, 0.5, 0.9, 0.3):
        study.add_trial(optuna.trial.create_trial(params={"x": x, "y": 1 - x}, distributions=distributions,
                                                  **values(x)))
    return study


def test_optuna_plots_of_a_study(tmp_path):
    written = plots.optuna_plots(add_trials(optuna.create_study(), lambda x: {"value": x * x}), tmp_path)
    assert [p.name for p in written] == list(plots.OPTUNA_PLOTS)
    assert all(p.read_bytes().startswith(PNG) for p in written)


def test_a_plot_the_study_cannot_support_is_skipped_without_an_error(tmp_path):
    # Two of Optuna's plots refuse a two-objective study unless told which objective to draw.
    study = add_trials(optuna.create_study(directions=["minimize", "minimize"]), lambda x: {"values": [x, 1 - x]})
    written = plots.optuna_plots(study, tmp_path)
    assert [p.name for p in written] == ["param_importances.png", "parallel_coordinate.png"]
    assert sorted(tmp_path.iterdir()) == sorted(written)
