"""A search read back from MLflow: its parent run, its recorded config, its trials ranked best first."""

from __future__ import annotations

import re
import tempfile
from pathlib import Path

import pandas as pd
import yaml
from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from search.config.pareto import OBJECTIVES_TAG, mark_front, objective_value, parse_objectives
from search.config.schema import SEARCH_NAME_PATTERN, HpsConfig, parse_config
from search.errors import SearchNotFound


def find_search_run(client: MlflowClient, name: str) -> Run:
    """The parent run of the most recent search called ``name`` (in any experiment)."""
    if not re.match(SEARCH_NAME_PATTERN, name):  # also keeps quotes out of the filter string below
        raise SearchNotFound(f"no search named {name!r}: search names are letters, digits and _ . - only")
    runs = client.search_runs(
        experiment_ids=[e.experiment_id for e in client.search_experiments()],
        filter_string=f"tags.`hps.search` = '{name}' and tags.`hps.role` = 'search'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise SearchNotFound(f"no search named {name!r} at this tracking URI")
    return runs[0]


def recorded_config(client: MlflowClient, parent: Run) -> HpsConfig:
    """The resolved config the search ran with (its `config.yaml` artifact)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = client.download_artifacts(parent.info.run_id, "config.yaml", tmp)
        return parse_config(yaml.safe_load(Path(path).read_text()))


def trial_runs(client: MlflowClient, parent: Run) -> list[Run]:
    """All child runs (one per trial) of a search's parent run."""
    runs: list[Run] = []
    token = None
    while True:
        page = client.search_runs(
            experiment_ids=[parent.info.experiment_id],
            filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'",
            max_results=1000,
            page_token=token,
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def leaderboard(client: MlflowClient, parent: Run) -> pd.DataFrame:
    """Trials ranked by their best validation value (the epoch whose weights are kept), best first."""
    metric = parent.data.tags.get("hps.metric", "val_loss")
    mode = parent.data.tags.get("hps.mode", "min")
    objectives = parse_objectives(parent.data.tags.get(OBJECTIVES_TAG))  # two-objective search: the front is marked
    rows = []
    for run in trial_runs(client, parent):
        metrics, tags = run.data.metrics, run.data.tags
        row = {
            "trial": tags.get("hps.trial_id", run.info.run_name),
            "outcome": tags.get("hps.outcome", "unknown"),
            "note": tags.get("hps.outcome_note", ""),
            "status": run.info.status,
            "epochs": int(float(tags.get("hps.last_epoch", 0))),
            "best_epoch": int(metrics.get("best_epoch", 0)),
            f"best_{metric}": metrics.get(f"best_{metric}"),
        }
        row.update({k.removeprefix("best_epoch_"): v for k, v in sorted(metrics.items()) if k.startswith("best_epoch_")})
        row.pop(metric, None)  # same number as best_<metric>
        row.update({m: objective_value(metrics, m) for m, _ in objectives[1:] if m not in row})  # e.g. n_params
        row.update({f"param.{k}": parse_number(v) for k, v in sorted(run.data.params.items())})
        row["run_id"] = run.info.run_id
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    # Failed trials rank last whatever they reached before failing (a diverged trial can have a good early epoch).
    frame["_failed"] = frame["outcome"] == "failed"
    frame = frame.sort_values(["_failed", f"best_{metric}"], ascending=[True, mode == "min"], na_position="last",
                              kind="stable").drop(columns="_failed")
    frame.insert(0, "rank", range(1, len(frame) + 1))
    return mark_front(frame.reset_index(drop=True), objectives)


def parse_number(text: str) -> int | float | str:
    """MLflow stores params as strings; numbers are shown and sorted as numbers."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text
