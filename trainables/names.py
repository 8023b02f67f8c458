"""The names a config is checked against, and the data error, importable without torch, pandas or scikit-learn.

`hps validate` (and every CLI command's error handling) needs only these; importing the modules that define the
behind-the-names (``trainables.model``, ``trainables.metrics``, ``trainables.train``, ``trainables.data``) takes
seconds. Those modules' own tables must list exactly these names: tests/test_bounds.py checks that they do.
"""

from __future__ import annotations

TASKS = ("binary", "multiclass", "regression")
SOURCE_KINDS = ("sklearn", "csv", "parquet", "idx", "npz")
TABLE_KINDS = ("csv", "parquet")  # sources with named columns: they need a target column
SKLEARN_DATASETS = ("digits", "wine", "breast_cancer", "iris", "diabetes")  # trainables.data.SKLEARN_DATASETS
# trainables.metrics: what each task reports every epoch, which are maximized, the losses, the regression losses
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("val_accuracy", "val_f1"),
    "multiclass": ("val_accuracy", "val_f1"),
    "regression": ("val_mae", "val_rmse", "val_r2"),
}
MAXIMIZED = frozenset({"val_accuracy", "val_f1", "val_r2"})
LOSSES = ("train_loss", "val_loss")
REGRESSION_LOSSES = ("mse", "mae", "huber")
ACTIVATIONS = ("relu", "leaky_relu", "elu", "gelu", "tanh", "selu", "silu")  # trainables.model.ACTIVATIONS
NORMS = ("none", "batch", "layer")  # trainables.model.NORMS
OPTIMIZERS = ("adam", "adamw", "sgd")  # trainables.train.OPTIMIZERS
# Defaults of the config's limits.max_columns / limits.max_categories: every feature column is one network input,
# every category of a text column one more (one-hot, dense).
MAX_COLUMNS = 20_000
MAX_CATEGORIES = 1_000


def gpu_request_error(gpus_per_trial: float) -> str | None:
    """Why a per-trial GPU request cannot be honoured, or None: a trial trains on one device, so more than one whole
    GPU would sit idle while the scheduler counts it as busy."""
    if gpus_per_trial > 1:
        return (f"gpus_per_trial {gpus_per_trial:g} is more than one GPU, but a trial trains on one device; "
                "use 1, or a fraction such as 0.25 to share a GPU between trials")
    return None


class DataError(ValueError):
    """The data cannot be used as configured (missing file, bad target, ...)."""
