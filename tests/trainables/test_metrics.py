"""The per-epoch validation metrics (tensor ops, for speed) agree with scikit-learn's on any input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from trainables.metrics import validation_metrics


@pytest.mark.parametrize("seed", range(25))
def test_classification_metrics_match_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    n, k = int(rng.integers(1, 60)), int(rng.integers(2, 8))
    y = rng.integers(0, k, n)
    logits = rng.normal(size=(n, k)) + 2.0 * np.eye(k)[y] * rng.random()  # from random to mostly right
    got = validation_metrics("multiclass", torch.tensor(logits), torch.tensor(y))
    assert got["val_accuracy"] == pytest.approx(skm.accuracy_score(y, logits.argmax(1)))
    assert got["val_f1"] == pytest.approx(skm.f1_score(y, logits.argmax(1), average="macro", zero_division=0))

    y2 = rng.integers(0, 2, n)
    scores = rng.normal(size=(n, 1)) + (y2[:, None] - 0.5) * rng.random()
    got = validation_metrics("binary", torch.tensor(scores), torch.tensor(y2))
    pred = (scores.reshape(-1) > 0).astype(int)
    assert got["val_accuracy"] == pytest.approx(skm.accuracy_score(y2, pred))
    assert got["val_f1"] == pytest.approx(skm.f1_score(y2, pred, zero_division=0))


def test_degenerate_classification_inputs_match_scikit_learn():
    # no positive labels nor predictions: F1 is 0 by zero_division, accuracy is 1
    got = validation_metrics("binary", torch.tensor([[-1.0], [-2.0]]), torch.tensor([0, 0]))
    assert got == {"val_accuracy": 1.0, "val_f1": skm.f1_score([0, 0], [0, 0], zero_division=0)}
    # a class predicted that never occurs counts in the macro average (as scikit-learn counts it)
    logits, y = torch.tensor([[5.0, 0, 0], [0, 0, 5.0]]), torch.tensor([0, 0])
    expected = skm.f1_score([0, 0], [0, 2], average="macro", zero_division=0)
    assert validation_metrics("multiclass", logits, y)["val_f1"] == pytest.approx(expected)


@pytest.mark.parametrize("seed", range(10))
def test_regression_metrics_match_scikit_learn_in_original_units(seed):
    rng = np.random.default_rng(seed)
    n, scale = int(rng.integers(2, 50)), float(rng.uniform(0.5, 80))
    y, out = rng.normal(size=n), rng.normal(size=(n, 1))
    got = validation_metrics("regression", torch.tensor(out, dtype=torch.float32), torch.tensor(y), scale)
    true, pred = y * scale, out.reshape(-1).astype(np.float32).astype(float) * scale
    assert got["val_mae"] == pytest.approx(skm.mean_absolute_error(true, pred))
    assert got["val_rmse"] == pytest.approx(np.sqrt(skm.mean_squared_error(true, pred)))
    assert got["val_r2"] == pytest.approx(skm.r2_score(true, pred))


def test_constant_regression_target_follows_scikit_learn():
    same = validation_metrics("regression", torch.tensor([[1.0], [1.0]]), torch.tensor([1.0, 1.0]))
    off = validation_metrics("regression", torch.tensor([[1.0], [2.0]]), torch.tensor([1.0, 1.0]))
    assert same["val_r2"] == skm.r2_score([1, 1], [1, 1]) and off["val_r2"] == skm.r2_score([1, 1], [1, 2])
