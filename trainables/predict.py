"""Predictions from raw table rows with a saved model: preprocessing, forward pass, decoding. Plain PyTorch."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from trainables.preprocessing import Preprocessor

PREDICT_BATCH = 8192


def model_outputs(model: nn.Module, features: np.ndarray) -> np.ndarray:
    """Raw network outputs (logits or standardized values) for a feature matrix, in large batches."""
    model.eval()
    x = torch.as_tensor(np.ascontiguousarray(features, dtype=np.float32))
    with torch.inference_mode():
        chunks = [model(x[i : i + PREDICT_BATCH]) for i in range(0, len(x), PREDICT_BATCH)]
    return torch.cat(chunks).float().numpy() if chunks else np.zeros((0, 1), dtype=np.float32)


def probabilities(outputs: np.ndarray, task: str) -> np.ndarray:
    """Per-class probabilities (one column per class) from classifier outputs."""
    logits = torch.as_tensor(outputs)
    if task == "binary":
        p = torch.sigmoid(logits.reshape(-1))
        return torch.stack([1 - p, p], dim=1).numpy()
    return torch.softmax(logits, dim=1).numpy()


def regression_values(outputs: np.ndarray, prep: Preprocessor) -> np.ndarray:
    """Predictions in the target's own units (training standardized the target)."""
    return outputs.reshape(-1) * prep.target_scale + prep.target_mean


def predict_frame(model: nn.Module, prep: Preprocessor, rows: pd.DataFrame) -> pd.DataFrame:
    """Predict raw rows: ``prediction`` (class label or value) and, for classifiers, ``proba_<class>`` columns."""
    outputs = model_outputs(model, prep.transform_features(rows))
    if prep.task == "regression":
        return pd.DataFrame({"prediction": regression_values(outputs, prep)}, index=rows.index)
    probs = probabilities(outputs, prep.task)
    frame = pd.DataFrame({"prediction": [prep.classes[i] for i in probs.argmax(axis=1)]}, index=rows.index)
    for column, name in enumerate(prep.classes):
        frame[f"proba_{name}"] = probs[:, column]
    return frame
