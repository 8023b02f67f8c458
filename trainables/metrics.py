"""Losses and metrics for the three tasks: per-epoch validation metrics as tensor ops, test metrics by scikit-learn."""

from __future__ import annotations

import math

import torch
from torch import nn

# The metric names (what each task reports, which are maximized) and their mode live with the config's names.
from trainables.names import REGRESSION_LOSSES, metric_mode  # noqa: F401 - metric_mode is re-exported here


def loss_function(task: str, name: str | None = None) -> nn.Module:
    """Cross-entropy for multiclass, BCE-with-logits for binary; for regression the named loss (default MSE)."""
    if task != "regression" and name is not None:
        raise ValueError(f"loss {name!r} is a regression loss; a {task} classifier trains with cross-entropy")
    if task == "multiclass":
        return nn.CrossEntropyLoss()
    if task == "binary":
        return nn.BCEWithLogitsLoss()
    name = name or "mse"
    if name not in REGRESSION_LOSSES:
        raise ValueError(f"unknown loss {name!r}; choose from {', '.join(REGRESSION_LOSSES)}")
    return getattr(nn, REGRESSION_LOSSES[name])()


def loss_target(task: str, y: torch.Tensor) -> torch.Tensor:
    """Shape/dtype the loss expects for ``y``: class indices, or a float column for binary/regression."""
    return y if task == "multiclass" else y.float().view(-1, 1)


def validation_metrics(task: str, outputs: torch.Tensor, y: torch.Tensor, target_scale: float = 1.0) -> dict[str, float]:
    """Task metrics from the network outputs (logits / standardized predictions) on the validation split.

    Regression errors are reported in the target's original units (``target_scale`` undoes standardization).
    These run every epoch of every trial, so they are computed with tensor ops where the outputs already are
    (one host transfer at the end): scikit-learn's input validation alone cost ~5 ms per epoch, a quarter of a
    digits epoch. They equal scikit-learn's ``accuracy_score``, ``f1_score`` (binary / macro, zero_division=0),
    MAE, RMSE and ``r2_score`` (tests/trainables/test_metrics.py compares them); the final test-set metrics use scikit-learn.
    """
    out = outputs.detach().double()
    if task == "regression":
        pred = out.reshape(-1) * target_scale
        true = y.detach().double().reshape(-1) * target_scale
        err = pred - true
        mae, sse, sst = torch.stack([err.abs().mean(), (err * err).sum(), ((true - true.mean()) ** 2).sum()]).tolist()
        # scikit-learn's convention for a constant target: 1 when predicted exactly, else 0.
        r2 = 1.0 - sse / sst if sst > 0 else float(sse == 0)
        return {"val_mae": mae, "val_rmse": math.sqrt(sse / err.numel()), "val_r2": r2}
    true = y.detach().long().reshape(-1)
    pred = (out.reshape(-1) > 0).long() if task == "binary" else out.argmax(dim=1)
    n_classes = max(int(torch.cat([true, pred]).max()) + 1 if true.numel() else 0, 2)
    tp = torch.bincount(true[pred == true], minlength=n_classes).double()
    predicted = torch.bincount(pred, minlength=n_classes).double()  # tp + fp
    actual = torch.bincount(true, minlength=n_classes).double()  # tp + fn
    denominator = predicted + actual
    f1 = torch.where(denominator > 0, 2 * tp / denominator.clamp(min=1), torch.zeros_like(tp))
    # Binary F1 is the positive class's; macro F1 averages the classes that occur in the labels or predictions.
    f1_value = f1[1] if task == "binary" else f1[denominator > 0].mean()
    accuracy, f1_score = torch.stack([tp.sum() / max(true.numel(), 1), f1_value]).tolist()
    return {"val_accuracy": accuracy, "val_f1": f1_score}
