"""PNG figures for the MLflow UI: search review (Optuna's matplotlib plots, validation curves) and test-set
diagnostics (confusion matrix, predicted vs actual). Headless: matplotlib's Agg backend."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import optuna  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

log = logging.getLogger(__name__)


def _save(fig, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Optuna's multi-axes figures are not tight_layout-compatible; harmless
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], path: Path) -> Path:
    """Confusion matrix of the test split (counts), rows = true class."""
    size = max(4.0, 0.55 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    skm.ConfusionMatrixDisplay.from_predictions(
        y_true, y_pred, labels=list(range(len(classes))), display_labels=classes, ax=ax, colorbar=False,
        xticks_rotation=45 if len(classes) > 4 else "horizontal",
    )
    ax.set_title("Test set confusion matrix")
    return _save(fig, path)


def per_class_report(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> pd.DataFrame:
    """Precision, recall, F1 and support per class (scikit-learn's classification report as a table)."""
    report = skm.classification_report(
        y_true, y_pred, labels=list(range(len(classes))), target_names=classes, output_dict=True, zero_division=0
    )
    return pd.DataFrame(report).T


def regression_diagnostics(y_true: np.ndarray, y_pred: np.ndarray, path: Path) -> Path:
    """Predicted vs actual (with the identity line) and residuals vs predicted, side by side."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.5))
    low, high = float(min(y_true.min(), y_pred.min())), float(max(y_true.max(), y_pred.max()))
    left.scatter(y_true, y_pred, s=12, alpha=0.7)
    left.plot([low, high], [low, high], color="black", linewidth=1)
    left.set(xlabel="actual", ylabel="predicted", title="Test set: predicted vs actual")
    right.scatter(y_pred, y_true - y_pred, s=12, alpha=0.7)
    right.axhline(0, color="black", linewidth=1)
    right.set(xlabel="predicted", ylabel="actual - predicted", title="Residuals")
    return _save(fig, path)


def validation_curves(histories: dict[str, list[tuple[int, float]]], stopped: set[str], metric: str, path: Path) -> Path:
    """One curve per trial (metric against epoch); an x marks where ASHA stopped a trial."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, points in histories.items():
        if not points:
            continue
        epochs, values = zip(*sorted(points))
        (line,) = ax.plot(epochs, values, marker=".", label=label)
        if label in stopped:
            ax.plot(epochs[-1], values[-1], marker="x", markersize=10, color=line.get_color())
    ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} of the top trials (x: stopped early by ASHA)")
    ax.legend(fontsize=7, ncol=2)
    return _save(fig, path)


OPTUNA_PLOTS = {
    "optimization_history.png": optuna.visualization.matplotlib.plot_optimization_history,
    "param_importances.png": optuna.visualization.matplotlib.plot_param_importances,
    "parallel_coordinate.png": optuna.visualization.matplotlib.plot_parallel_coordinate,
    "slice.png": optuna.visualization.matplotlib.plot_slice,
}


def optuna_plots(study: optuna.Study, directory: Path) -> list[Path]:
    """Optuna's own matplotlib plots of a study; a plot the study cannot support (too few trials) is skipped."""
    written = []
    for name, plot in OPTUNA_PLOTS.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
                result = plot(study)
            axes = result.flat[0] if isinstance(result, np.ndarray) else result
            written.append(_save(axes.figure, directory / name))
        except Exception as exc:  # noqa: BLE001 - a missing plot must not fail the search
            log.info("skipped %s: %s", name, exc)
            plt.close("all")
    return written


def pareto_front(first: np.ndarray, second: np.ndarray, on_front: np.ndarray, labels: list[str], path: Path) -> Path:
    """A two-objective search: every trial (first objective against second), the Pareto front marked and joined."""
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.scatter(second[~on_front], first[~on_front], s=18, alpha=0.5, color="tab:gray", label="trial")
    order = np.argsort(second[on_front])
    ax.plot(second[on_front][order], first[on_front][order], marker="o", color="tab:red", drawstyle="steps-post",
            label="Pareto front")
    ax.set(xlabel=labels[1], ylabel=labels[0], title=f"{labels[0]} against {labels[1]}: the Pareto front")
    if labels[1] == "n_params":
        ax.set_xscale("log")
    ax.legend(fontsize=8)
    return _save(fig, path)
