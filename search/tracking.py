"""MLflow records of a search: one parent run per search, one nested child run per trial.

All logging happens in the driver, from a Tune callback: workers never talk to the tracking server. The
callback keeps its trial→run map in its saved state, so a restored search continues the same runs instead
of creating duplicates (Ray's MLflowLoggerCallback has neither nesting nor that).
"""

from __future__ import annotations

import functools
import logging
import math
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import requests
from mlflow.entities import Metric, Param, RunStatus, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from trainables.checkpoint import MODEL_DIR
from search.errors import TrackingError

log = logging.getLogger(__name__)

PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
REACHABILITY_TIMEOUT_S = 5
# Result keys that are the trainable's metrics (Ray adds many bookkeeping keys we do not want as metrics).
METRIC_PREFIXES = ("train_", "val_", "best_")



def connect(uri: str) -> MlflowClient:
    """A client for ``uri``, after checking that the server answers (an HTTP server within a few seconds)."""
    if uri.startswith(("http://", "https://")):
        try:
            response = requests.get(uri.rstrip("/") + "/health", timeout=REACHABILITY_TIMEOUT_S)
        except requests.RequestException as exc:
            raise TrackingError(f"tracking server {uri} is unreachable ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise TrackingError(f"tracking server {uri} answered /health with HTTP {response.status_code}")
    elif uri.startswith("sqlite:///"):
        parent = Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
        if not parent.is_dir():
            raise TrackingError(f"tracking database folder {parent} does not exist")
    for chatty in ("alembic", "mlflow.store.db.utils"):  # schema migration chatter on a new sqlite store
        logging.getLogger(chatty).setLevel(logging.WARNING)
    return MlflowClient(tracking_uri=uri)


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created (or restored from the bin) if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name)
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    return experiment.experiment_id


def flatten(mapping: dict, prefix: str = "") -> dict[str, str]:
    """``{"a": {"b": 1}}`` → ``{"a.b": "1"}``; a space distribution stays one readable value."""
    flat: dict[str, str] = {}
    for key, value in mapping.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and not (prefix == "space." and "type" in value):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


def start_search_run(client: MlflowClient, exp_id: str, name: str, config: dict, config_yaml: str, data: dict) -> str:
    """Create the parent run of a search: config as params and as ``config.yaml``, split fingerprint as a tag."""
    tags = {
        RUN_NAME_TAG: name,
        "hps.search": name,
        "hps.role": "search",
        "hps.metric": config["search"]["metric"],
        "hps.mode": config["search"]["mode"],
        "hps.split_fingerprint": data["split_fingerprint"],
        "hps.task": data["task"],
    }
    run = client.create_run(exp_id, tags=tags, run_name=name)
    params = {**flatten(config), **{f"data.{k}": str(v) for k, v in data.items()}}
    _log_params(client, run.info.run_id, params)
    client.log_text(run.info.run_id, config_yaml, "config.yaml")
    return run.info.run_id


def _log_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    items = [Param(k, str(v)[:6000]) for k, v in params.items()]
    for start in range(0, len(items), 100):  # MLflow accepts at most 100 params per batch
        client.log_batch(run_id, params=items[start : start + 100])


def log_model_artifacts(client: MlflowClient, run_id: str, checkpoint: tune.Checkpoint | None) -> bool:
    """Upload the best-epoch model (weights + JSON description) from a trial checkpoint as artifact ``model/``."""
    if checkpoint is None:
        return False
    with checkpoint.as_directory() as directory:
        model_dir = Path(directory) / MODEL_DIR
        if not model_dir.is_dir():
            return False
        client.log_artifacts(run_id, str(model_dir), artifact_path="model")
    return True


def _never_raise(method):
    """Tracking must never take a search down: a failed logging call is logged and the search goes on."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - any tracking failure is non-fatal by design
            log.warning("MLflow logging failed in %s: %s", method.__name__, exc)
            self.failures += 1

    return wrapper


class TrialRunLogger(tune.Callback):
    """Tune callback: a nested MLflow run per trial with params, per-epoch metrics, placement, outcome, model."""

    def __init__(
        self, tracking_uri: str, exp_id: str, parent_run_id: str, search_name: str, max_epochs: int, log_models: str
    ) -> None:
        self.tracking_uri = tracking_uri
        self.exp_id = exp_id
        self.parent_run_id = parent_run_id
        self.search_name = search_name
        self.max_epochs = max_epochs
        self.log_models = log_models
        self.runs: dict[str, str] = {}  # trial_id → MLflow run id; saved with the experiment state
        self.ended: set[str] = set()  # trials whose run is terminated
        self.at_best: dict[str, dict[str, float]] = {}  # trial_id → metrics of its best epoch so far
        self.failures = 0
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def get_state(self) -> dict:
        return {"runs": dict(self.runs), "ended": set(self.ended), "at_best": dict(self.at_best)}

    def set_state(self, state: dict) -> None:
        self.runs, self.ended, self.at_best = state["runs"], state["ended"], state["at_best"]

    @_never_raise
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if trial.trial_id in self.runs:  # a retried or restored trial keeps its run
            self.client.set_tag(self.runs[trial.trial_id], "hps.retries", str(trial.num_failures))
            return
        tags = {
            PARENT_TAG: self.parent_run_id,
            "hps.search": self.search_name,
            "hps.role": "trial",
            "hps.trial_id": trial.trial_id,
            "hps.outcome": "running",
        }
        run = self.client.create_run(self.exp_id, tags=tags, run_name=f"trial-{trial.trial_id}")
        self.runs[trial.trial_id] = run.info.run_id
        _log_params(self.client, run.info.run_id, trial.config)

    @_never_raise
    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        now = int(time.time() * 1000)
        values = {k: v for k, v in result.items() if k.startswith(METRIC_PREFIXES) and _is_number(v)}
        values["epoch_time_s"] = result.get("time_this_iter_s", 0.0)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        tags = []
        if step == 1 or trial.trial_id not in self.at_best:
            tags = [RunTag(k, str(result[k])) for k in ("node_id", "hostname", "device") if k in result]
        if result.get("best_epoch") == step:
            self.at_best[trial.trial_id] = {k: v for k, v in values.items() if k.startswith(("train_", "val_"))}
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    @_never_raise
    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        result = trial.last_result or {}
        if result.get("finished"):
            outcome, note = "completed", f"completed {result.get('epoch')} epochs"
        else:
            outcome, note = "stopped_early", f"stopped early at epoch {result.get('epoch')}"
        self._end(trial, outcome, note, RunStatus.FINISHED, log_model=self.log_models == "all")

    @_never_raise
    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        error = trial.get_error() or "unknown error"
        reason = str(error).strip().splitlines()[-1][:500]
        epoch = (trial.last_result or {}).get("epoch", 0)
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None:
            self.client.log_text(run_id, str(error), "error.txt")
        self._end(trial, "failed", f"failed at epoch {epoch}: {reason}", RunStatus.FAILED, log_model=False)

    @_never_raise
    def on_experiment_end(self, trials, **info) -> None:
        # Trials still pending or running when the experiment ends (interrupted search) must not stay RUNNING.
        for trial in trials:
            if trial.trial_id in self.runs and trial.trial_id not in self.ended:
                self._end(trial, "interrupted", "search ended before this trial did", RunStatus.KILLED, log_model=False)

    def _end(self, trial, outcome: str, note: str, status: int, log_model: bool) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is None or trial.trial_id in self.ended:
            return
        result = trial.last_result or {}
        tags = [RunTag("hps.outcome", outcome), RunTag("hps.outcome_note", note)]
        if "epoch" in result:
            tags.append(RunTag("hps.last_epoch", str(result["epoch"])))
        summary = [Metric(f"best_epoch_{k}", float(v), int(time.time() * 1000), 0) for k, v in self.at_best.get(trial.trial_id, {}).items()]
        self.client.log_batch(run_id, metrics=summary, tags=tags)
        if log_model and log_model_artifacts(self.client, run_id, trial.checkpoint):
            self.client.set_tag(run_id, "hps.model", "model")
        self.client.set_terminated(run_id, RunStatus.to_string(status))
        self.ended.add(trial.trial_id)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finish_search_run(client: MlflowClient, run_id: str, status: str, tags: dict[str, str]) -> None:
    """Tag the parent run with the outcome (best trial, counts) and end it with ``status``."""
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])
    client.set_terminated(run_id, status)


def log_table(client: MlflowClient, run_id: str, frame, name: str) -> None:
    """Attach a pandas DataFrame to a run as a CSV artifact."""
    with tempfile.TemporaryDirectory() as directory:
        path = os.path.join(directory, name)
        frame.to_csv(path, index=False)
        client.log_artifact(run_id, path)
