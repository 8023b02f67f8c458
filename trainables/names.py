"""What a config may name, and the rules on those names, importable without torch, pandas or scikit-learn.

`hps validate` (and every CLI command's error handling) needs only these; importing the modules behind the names
(``trainables.model``, ``trainables.metrics``, ``trainables.train``, ``trainables.sources``) takes seconds. Those
modules take their tables from here, so each table exists once: a torch class is named by its attribute name in
``torch.nn`` and looked up where it is used.
"""

from __future__ import annotations

TASKS = ("binary", "multiclass", "regression")
FILE_KINDS = ("csv", "parquet", "idx", "npz")  # sources read from a path (a file, or a directory for idx)
SOURCE_KINDS = ("sklearn", *FILE_KINDS)
TABLE_KINDS = ("csv", "parquet")  # sources with named columns: they need a target column
# The datasets bundled with scikit-learn (loaded by sklearn.datasets.load_<name>) and the task each one poses, so a
# `task: auto` config is checked without loading data.
SKLEARN_DATASETS = {"digits": "multiclass", "wine": "multiclass", "breast_cancer": "binary", "iris": "multiclass",
                    "diabetes": "regression"}
IDX_TASK = "multiclass"  # IDX sources are MNIST-style images of digits or articles: always 10 classes
# How missing feature values may be filled (statistics of the training rows only); "missing": a category of its own.
NUMERIC_IMPUTE = ("median", "mean")
CATEGORICAL_IMPUTE = ("most_frequent", "missing")
DEFAULT_IMPUTE = {"numeric": "median", "categorical": "most_frequent"}
# What each task reports every epoch, which metrics are maximized, the losses every trial reports.
TASK_METRICS: dict[str, tuple[str, ...]] = {
    "binary": ("val_accuracy", "val_f1"),
    "multiclass": ("val_accuracy", "val_f1"),
    "regression": ("val_mae", "val_rmse", "val_r2"),
}
MAXIMIZED = frozenset({"val_accuracy", "val_f1", "val_r2"})
LOSSES = ("train_loss", "val_loss")
# Training losses a regression can use (the ``loss`` hyperparameter) → torch.nn class. MAE/Huber suit targets judged
# by MAE or with outliers; losses of different kinds are not comparable, so a search over them must select on
# val_mae/rmse/r2.
REGRESSION_LOSSES = {"mse": "MSELoss", "mae": "L1Loss", "huber": "HuberLoss"}
ACTIVATIONS = {"relu": "ReLU", "leaky_relu": "LeakyReLU", "elu": "ELU", "gelu": "GELU", "tanh": "Tanh",
               "selu": "SELU", "silu": "SiLU"}  # → torch.nn class
NORMS = ("none", "batch", "layer")
OPTIMIZERS = ("adam", "adamw", "sgd")
# Defaults of the config's limits.max_columns / limits.max_categories: every feature column is one network input,
# every category of a text column one more (one-hot, dense).
MAX_COLUMNS = 20_000
MAX_CATEGORIES = 1_000


class DataError(ValueError):
    """The data cannot be used as configured (missing file, bad target, ...)."""


def metric_mode(metric: str) -> str:
    """``max`` for accuracy-like metrics, ``min`` for losses and errors (``best_<metric>`` as ``<metric>``)."""
    return "max" if metric.removeprefix("best_") in MAXIMIZED else "min"


def source_error(source: str) -> str | None:
    """Why ``source`` names no data this project can read (unknown kind or bundled dataset, no path), or None."""
    kind, sep, name = source.partition(":")
    if not sep or kind not in SOURCE_KINDS:
        return f"unknown data source {source!r}; expected one of {', '.join(k + ':' for k in SOURCE_KINDS)}"
    if kind == "sklearn" and name not in SKLEARN_DATASETS:
        return f"unknown sklearn dataset {name!r}; choose from {', '.join(sorted(SKLEARN_DATASETS))}"
    if not name.strip():
        return f"{kind}: needs a path, e.g. {kind}:{'DIR' if kind == 'idx' else 'data/file.' + kind}"
    return None


def target_error(source: str, target: str | None) -> str | None:
    """Why ``target`` (the column to predict) does not go with ``source``, or None: tables need one, others have
    their target built in."""
    kind = source.partition(":")[0]
    if kind in TABLE_KINDS and not target:
        return f"required for {kind}: sources (the column to predict)"
    if kind and kind not in TABLE_KINDS and target is not None:
        return f"only csv: and parquet: sources have named target columns, not {kind}:"
    return None


def impute_error(key: str, strategy: str) -> str | None:
    """Why ``strategy`` cannot fill missing values of the ``key`` ("numeric" or "categorical") columns, or None."""
    allowed = {"numeric": NUMERIC_IMPUTE, "categorical": CATEGORICAL_IMPUTE}.get(key)
    if allowed is None or strategy not in allowed:
        return f"{strategy!r} is not a strategy; numeric: {NUMERIC_IMPUTE}, categorical: {CATEGORICAL_IMPUTE}"
    return None


def known_task(source: str, task: str) -> str:
    """The task of a config's data as far as it is known without loading it: ``task`` itself unless it is "auto"
    and the source is a bundled dataset or IDX images."""
    kind, _, name = source.partition(":")
    if task != "auto":
        return task
    if kind == "sklearn":
        return SKLEARN_DATASETS.get(name, task)
    return IDX_TASK if kind == "idx" else task


# What a CUDA process holds outside torch's caching allocator, which set_per_process_memory_fraction does not cap:
# its context and the cuBLAS/cuDNN workspaces, 0.3-0.5 GB a process as reported on this project's issue tracker;
# budgeted at the upper end so that 4 trials of 0.25 fit one GPU with everything they hold.
OUTSIDE_ALLOCATOR_BYTES = 512 * 2**20
# The most memory one GPU offers today (AMD MI300X / NVIDIA B200 class): a share that leaves no room for a
# process's own memory even there fits no GPU, wherever the search runs.
LARGEST_GPU_BYTES = 192 * 2**30


def gpu_request_error(gpus_per_trial: float) -> str | None:
    """Why a per-trial GPU request cannot be honoured, or None: a trial trains on one device, so more than one whole
    GPU would sit idle while the scheduler counts it as busy; a share too small to hold a CUDA process's own memory
    (:data:`OUTSIDE_ALLOCATOR_BYTES`) on the largest GPU cannot train anywhere (a known GPU is checked by
    :func:`trainables.device.allocator_fraction` before Ray starts, and again in each trial)."""
    if gpus_per_trial > 1:
        return (f"gpus_per_trial {gpus_per_trial:g} is more than one GPU, but a trial trains on one device; "
                "use 1, or a fraction such as 0.25 to share a GPU between trials")
    if 0 < gpus_per_trial * LARGEST_GPU_BYTES <= OUTSIDE_ALLOCATOR_BYTES:
        return (f"gpus_per_trial {gpus_per_trial:g} of even a {LARGEST_GPU_BYTES / 2**30:.0f} GiB GPU cannot hold a "
                f"CUDA process's own {OUTSIDE_ALLOCATOR_BYTES / 2**30:.1f} GiB (context, cuBLAS workspace); "
                "use a larger fraction")
    return None
