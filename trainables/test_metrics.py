"""The metrics `hps evaluate` reports on the test rows (scikit-learn's), apart from the per-epoch validation metrics
(:mod:`trainables.metrics`) so that trial workers never load scikit-learn."""

from __future__ import annotations

import numpy as np
from sklearn import metrics as skm


def classification_report_metrics(y_true: np.ndarray, probs: np.ndarray, task: str) -> dict[str, float]:
    """Test metrics of a classifier from true class indices and predicted probabilities (one column per class)."""
    pred = probs.argmax(axis=1)
    labels = list(range(probs.shape[1]))
    metrics = {
        "test_accuracy": skm.accuracy_score(y_true, pred),
        "test_precision": skm.precision_score(y_true, pred, average="macro", labels=labels, zero_division=0),
        "test_recall": skm.recall_score(y_true, pred, average="macro", labels=labels, zero_division=0),
        "test_f1": skm.f1_score(y_true, pred, average="macro", labels=labels, zero_division=0),
        "test_log_loss": skm.log_loss(y_true, np.clip(probs, 1e-7, 1), labels=labels),
    }
    if task == "binary" and len(np.unique(y_true)) == 2:
        metrics["test_roc_auc"] = skm.roc_auc_score(y_true, probs[:, 1])
    return {k: float(v) for k, v in metrics.items()}


def regression_report_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Test metrics of a regressor, in the target's own units."""
    mse = skm.mean_squared_error(y_true, y_pred)
    return {
        "test_mse": float(mse),
        "test_rmse": float(np.sqrt(mse)),
        "test_mae": float(skm.mean_absolute_error(y_true, y_pred)),
        "test_r2": float(skm.r2_score(y_true, y_pred)),
    }
