"""A search's split as MLflow dataset inputs: the training and validation rows on the parent run and on every trial
run (the test rows only once `hps evaluate` opens them), so that the runs table's Dataset column and a run's
Datasets section say what each run trained and was judged on.

Each dataset is named after the data source and its part (``sklearn:digits (train)``), has the split fingerprint
as its digest (the same rows under the same fingerprint are the same dataset in MLflow), the source, the raw
table's schema (MLflow's column-spec JSON, as ``mlflow.data`` writes it) and a profile (rows, folds). The
descriptions are plain dicts: the outage-safe writer can save and replay them.
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
from mlflow.entities import Dataset, DatasetInput, InputTag
from mlflow.tracking import MlflowClient

CONTEXT_TAG = "mlflow.data.context"  # MLflow's input tag saying what a dataset was to the run
FILE_SOURCES = ("csv", "parquet", "npz", "idx")


def split_datasets(split, source: str, parts: tuple[str, ...] = ("train", "validation")) -> list[dict[str, Any]]:
    """Descriptions of ``split``'s ``parts`` ("train", "validation", "test"): JSON-ready, for :func:`log_datasets`.
    A cross-validated split has no separate validation rows: its "train" part is every development row."""
    rows = {"train": split.train_idx, "validation": split.val_idx, "test": split.test_idx}
    contexts = {"train": "training", "validation": "validation", "test": "test"}
    schema = _schema(split.table.features, split.table.target)
    kind, _, location = source.partition(":")
    descriptions = []
    for part in parts:
        if part == "validation" and split.folds is not None:
            continue
        n_rows = len(rows[part])
        profile = {"num_rows": n_rows, "num_features": int(split.table.features.shape[1])}
        if part == "train" and split.folds is not None:
            profile["folds"] = len(split.folds)  # every development row: each fold trains on the others
        descriptions.append({
            "name": f"{source} ({part})",
            "digest": split.fingerprint,
            "source_type": "local" if kind in FILE_SOURCES else kind or "unknown",
            "source": json.dumps({"uri": location if kind in FILE_SOURCES else source}),
            "schema": schema,
            "profile": json.dumps(profile),
            "context": contexts[part],
        })
    return descriptions


def log_datasets(client: MlflowClient, run_id: str, descriptions: list[dict[str, Any]]) -> None:
    """Record ``descriptions`` (from :func:`split_datasets`) as the run's dataset inputs. Logging the same
    dataset on the same run again changes nothing (MLflow keeps one input per dataset and run)."""
    inputs = [DatasetInput(Dataset(d["name"], d["digest"], d["source_type"], d["source"], d["schema"], d["profile"]),
                           tags=[InputTag(CONTEXT_TAG, d["context"])]) for d in descriptions]
    client.log_inputs(run_id, datasets=inputs)


def _schema(features: pd.DataFrame, target: pd.Series) -> str:
    """The raw table's columns as MLflow's column-spec schema JSON (what the UI shows under "Schema")."""
    from mlflow.types import ColSpec, Schema

    columns = [ColSpec(_mlflow_type(features[c]), str(c)) for c in features.columns]
    columns.append(ColSpec(_mlflow_type(target), str(target.name if target.name is not None else "target")))
    return json.dumps({"mlflow_colspec": Schema(columns).to_dict()})


def _mlflow_type(column: pd.Series) -> str:
    kind = column.dtype.kind
    if kind == "b":
        return "boolean"
    if kind in "iu":
        return "long"
    if kind == "f":
        return "double"
    return "string"
