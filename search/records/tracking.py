"""MLflow records of a search: one parent run per search, one nested child run per trial.

All logging happens in the driver, from a Tune callback: workers never talk to the tracking server. The
callback keeps its trial→run map in its saved state, so a restored search continues the same runs instead
of creating duplicates (Ray's MLflowLoggerCallback has neither nesting nor that).
"""

from __future__ import annotations

import logging
import math
import posixpath
import time
from typing import Any

from mlflow.entities import Metric, RunTag
from mlflow.tracking import MlflowClient
from ray import tune

from search.config.pareto import OBJECTIVES_TAG, objectives_tag
from search.records.logged_models import trial_model_request
from search.records.storage import ended_in_saved_state, prune_checkpoints, read_results, trial_error_text
from search.records.writer import PARENT_TAG, TrackingWriter, log_folder, log_params
from trainables.checkpoint_files import MODEL_DIR
from trainables.reporting import STOPPED_NO_IMPROVEMENT, epoch_number, expand_epochs

log = logging.getLogger(__name__)

RUN_NAME_TAG = "mlflow.runName"
# Result keys that are the trainable's metrics (Ray adds many bookkeeping keys we do not want as metrics).
METRIC_PREFIXES = ("train_", "val_", "best_", "n_params")  # n_params: a two-objective search's second objective


def experiment_id(client: MlflowClient, name: str) -> str:
    """The id of experiment ``name``, created (or restored from the bin) if needed."""
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        return client.create_experiment(name, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
    if EXPERIMENT_KIND_TAG not in experiment.tags:  # made before hps said what it is, or by hand
        client.set_experiment_tag(experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
    return experiment.experiment_id


# What the MLflow UI opens an experiment on: a model-training experiment shows its runs and models, not MLflow's
# GenAI overview (traces, token usage) that an experiment of no kind opens on in MLflow 3.
EXPERIMENT_KIND_TAG, EXPERIMENT_KIND = "mlflow.experimentKind", "custom_model_development"


def runs_view_url(tracking_uri: str, experiment_id: str) -> str:
    """Where the MLflow UI shows the experiment's runs: the server's own address for an ``http(s)`` tracking URI,
    else the address `mlflow ui` serves on by default."""
    base = tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"
    return f"{base}/#/experiments/{experiment_id}/runs"


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
    objectives = objectives_tag(config["search"].get("objectives"))
    if objectives:
        tags[OBJECTIVES_TAG] = objectives  # how the leaderboard knows to mark the Pareto front
    run = client.create_run(exp_id, tags=tags, run_name=name)
    params = {**flatten(config), **{f"data.{k}": str(v) for k, v in data.items()}}
    log_params(client, run.info.run_id, params)
    client.log_text(run.info.run_id, config_yaml, "config.yaml")
    return run.info.run_id


def log_model_artifacts(client: MlflowClient, run_id: str, checkpoint: tune.Checkpoint | None,
                        logged_model: dict | None = None) -> bool:
    """Upload the best-epoch model (weights + JSON description) from a trial checkpoint as artifact ``model/`` and,
    with ``logged_model`` (:func:`search.records.logged_models.log_trial_model`'s arguments), as a LoggedModel."""
    folder = model_folder(checkpoint)
    if folder is None:
        return False
    log_folder(client, run_id, _as_location(*folder), artifact_path="model", logged_model=logged_model)
    return True


def model_folder(checkpoint: tune.Checkpoint | None) -> tuple[str, Any] | None:
    """The model folder of a trial checkpoint as (path, pyarrow filesystem); None if it has none."""
    import pyarrow.fs

    if checkpoint is None:
        return None
    path = f"{checkpoint.path.rstrip('/')}/{MODEL_DIR}"
    if checkpoint.filesystem.get_file_info(path).type != pyarrow.fs.FileType.Directory:
        return None
    return path, checkpoint.filesystem


class TrialRunLogger(tune.Callback):
    """Tune callback: a nested MLflow run per trial with params, per-epoch metrics, placement, outcome, model.

    It never blocks the driver and never raises: writes go through a :class:`TrackingWriter` that buffers them
    while the tracking server is unreachable.
    """

    def __init__(self, tracking_uri: str, exp_id: str, parent_run_id: str, search_name: str, log_models: str,
                 root: str | None = None, datasets: list[dict] | None = None) -> None:
        self.tracking_uri = tracking_uri
        self.exp_id = exp_id
        self.parent_run_id = parent_run_id
        self.search_name = search_name
        self.log_models = log_models
        self.root = root  # the search's experiment folder (local or s3://): where model uploads read from
        self.datasets = list(datasets or [])  # the split's train/validation rows, inputs of every trial run
        self.runs: dict[str, str] = {"parent": parent_run_id}  # writer key → run id; saved with the experiment
        self.ended: set[str] = set()  # trials whose run was terminated
        self.at_best: dict[str, dict[str, float]] = {}  # trial → metrics at its best epoch so far
        self.last_epoch: dict[str, int] = {}  # trial → last epoch logged (a retried trial replays some epochs)
        self.unfinished: list[str] = []  # trials still open when the experiment ended (interrupted search)
        self.known: set[str] = set()  # trials whose run exists or whose creation is queued
        # folder → (ended trial's id, keep its newest checkpoint, wait for its model upload to succeed first)
        self.to_prune: dict[str, tuple[str, bool, bool]] = {}
        self.restored = False
        self._writer: TrackingWriter | None = None

    root: str | None = None  # class defaults: loggers pickled by an older version lack the attributes
    datasets: list[dict] = []  # noqa: RUF012 - never mutated: read only, replaced per instance

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_writer"] = None  # a thread: recreated after unpickling
        return state

    @property
    def writer(self) -> TrackingWriter:
        if self._writer is None:
            self._writer = TrackingWriter(self.tracking_uri, self.root)
            self._writer.runs.update(self.runs)
            self.runs = self._writer.runs  # one map, updated by the writer as runs are created
        return self._writer

    @property
    def started(self) -> bool:
        """Whether Tune set this logger up (its writer runs): only then did it see the experiment's events."""
        return self._writer is not None

    def setup(self, **info) -> None:
        self.writer  # noqa: B018 - start the writer thread before the first trial

    def get_state(self) -> dict:
        return {"runs": dict(self.runs), "ended": set(self.ended), "at_best": dict(self.at_best),
                "last_epoch": dict(self.last_epoch)}

    def set_state(self, state: dict) -> None:
        self.writer.runs.update(state["runs"])
        self.known = set(state["runs"]) - {"parent"}
        self.ended, self.at_best = state["ended"], state["at_best"]
        # Not restored: the saved epochs were *queued*, and a crash may have lost queued writes. What MLflow really
        # holds is read back when a trial restarts (_attach_existing).
        self.last_epoch = {}
        self.restored = True

    # -- Tune's hooks ------------------------------------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self._open(trial)

    def on_trial_recover(self, iteration, trials, trial, **info) -> None:
        self.writer.submit("log_batch", trial.trial_id, tags={"hps.retries": trial.num_failures,
                                                              "hps.outcome": "retrying"})

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        key = trial.trial_id
        for epoch in expand_epochs(result):  # a report may carry earlier short epochs too
            step = epoch_number(epoch)
            if step <= self.last_epoch.get(key, 0):
                continue  # replayed after a restore from an older checkpoint: the history already has this epoch
            self.last_epoch[key] = step
            self._log_result(key, epoch, step)

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        self._complete(trial)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._fail(trial)

    def on_experiment_end(self, trials, **info) -> None:
        # Trials still pending or running when the experiment ends (an interrupted search) must not stay RUNNING;
        # a resumed search reopens them.
        # (Tune marks the trials it stops on Ctrl-C TERMINATED in memory, RUNNING in the saved state: what tells
        # them apart from finished ones is that they never completed.)
        self.unfinished = [t.trial_id for t in trials if t.trial_id not in self.ended]
        for trial in trials:
            if trial.trial_id in self.known and trial.trial_id not in self.ended:  # run created, or queued
                self._end(trial, "interrupted", "the search stopped before this trial ended", "KILLED")

    def on_step_end(self, iteration, trials, **info) -> None:
        if not self.to_prune:
            return
        ended = ended_in_saved_state(next(iter(self.to_prune)))
        for path, (trial_id, keep_newest, uploading) in list(self.to_prune.items()):
            if trial_id in ended and (not uploading or trial_id in self.writer.uploaded):
                prune_checkpoints(path, keep_newest)
                del self.to_prune[path]

    # -- after the experiment -----------------------------------------------------------------------------------
    def models_not_uploaded(self) -> set[str]:
        """Trials whose model upload was submitted but has not succeeded (still queued, or given up): their
        checkpoints must be kept."""
        return {key for key, _, uploading in self.to_prune.values() if uploading and key not in self.writer.uploaded}

    def reconcile(self, trials: list, check_histories: bool) -> int:
        """Make MLflow agree with Tune's experiment state; returns how many trials needed it.

        A driver killed mid-search loses the writes still queued in memory, and a resumed search does not replay
        events of trials that had already ended. Tune's state is the record: each ended trial whose run is missing,
        still RUNNING, or (``check_histories``, after a resume) missing epochs gets them from the trial's
        ``result.json`` and is ended with its outcome. Call it with an idle writer.
        """
        client = self.writer.client
        from search.records.leaderboard import trial_runs  # local: leaderboard imports nothing from here, keep it so

        runs = {r.data.tags.get("hps.trial_id"): r for r in trial_runs(client, client.get_run(self.parent_run_id))}
        fixed = 0
        for trial in trials:
            if trial.status not in ("TERMINATED", "ERROR"):
                continue
            key, run, last = trial.trial_id, runs.get(trial.trial_id), (trial.last_result or {}).get("epoch")
            logged = set()
            if run is not None and check_histories:
                logged = {m.step for m in client.get_metric_history(run.info.run_id, "train_loss")}
            missing = []
            if check_histories or run is None:  # only then are epochs replayed: read the results (S3: a download)
                # The trial's own storage filesystem: on s3:// storage its path carries no scheme.
                filesystem = getattr(getattr(trial, "storage", None), "storage_filesystem", None)
                results = [e for r in read_results(trial.path, filesystem) for e in expand_epochs(r)]
                missing = [r for r in results if "epoch" in r and r["epoch"] not in logged]
            consistent = run is not None and run.info.status != "RUNNING" and run.data.tags.get("hps.last_epoch") == str(last)
            if consistent and not missing:
                continue
            if run is None:
                self.runs.pop(key, None)
                self.known.discard(key)
                self._open(trial)
            else:
                self.runs[key] = run.info.run_id
                self.known.add(key)
            for result in missing:
                self._log_result(key, result, int(result["epoch"]))
            self.ended.discard(key)
            if trial.status == "ERROR":
                self._fail(trial)
            else:
                self._complete(trial)
            fixed += 1
        return fixed

    # -- the records --------------------------------------------------------------------------------------------
    def _open(self, trial) -> None:
        """Create the trial's run (params, tags), or continue its own run when it is retried or resumed."""
        key = trial.trial_id
        if (self.restored and self._attach_existing(key)) or key in self.runs or key in self.known:
            # A retried or resumed trial continues its own run.
            self.known.add(key)
            self.ended.discard(key)
            self.writer.submit("set_status", key, status="RUNNING")
            self.writer.submit("log_batch", key, tags={"hps.outcome": "running", "hps.retries": trial.num_failures})
            return
        tags = {PARENT_TAG: self.parent_run_id, "hps.search": self.search_name, "hps.role": "trial",
                "hps.trial_id": key, "hps.outcome": "running"}
        self.known.add(key)
        self.writer.submit("create_run", key, experiment_id=self.exp_id, tags=tags, run_name=f"trial-{key}")
        self.writer.submit("log_params", key, params=dict(trial.config))
        if self.datasets:
            self.writer.submit("log_inputs", key, datasets=self.datasets)

    def _attach_existing(self, key: str) -> bool:
        """After a restore, find the trial's run in MLflow (the saved map may predate it, or name a run whose
        creation was lost) and read which epochs it really holds, so exactly the missing ones are logged."""
        try:
            found = self.writer.client.search_runs(
                [self.exp_id], f"tags.`{PARENT_TAG}` = '{self.parent_run_id}' and tags.`hps.trial_id` = '{key}'")
            if not found:
                self.runs.pop(key, None)
                self.known.discard(key)
                return False
            run_id = found[0].info.run_id
            history = self.writer.client.get_metric_history(run_id, "train_loss")
        except Exception as exc:  # noqa: BLE001 - server down: keep what the saved state says
            log.warning("could not look up the run of trial %s: %s", key, exc)
            return key in self.runs
        self.last_epoch[key] = max((m.step for m in history), default=0)
        self.runs[key] = run_id
        return True

    def _log_result(self, key: str, result: dict, step: int) -> None:
        now = int(result.get("epoch_end_time", time.time()) * 1000)
        values = {k: v for k, v in result.items() if k.startswith(METRIC_PREFIXES) and _is_number(v)}
        values["epoch_time_s"] = result.get("epoch_time_s", result.get("time_this_iter_s", 0.0))
        if "pack_members" in result:  # a packed trial: how many trials trained together in this epoch
            values["pack_members"] = result["pack_members"]
        tags = {}
        if key not in self.at_best or step == 1:
            tags = {k: result[k] for k in ("node_id", "hostname", "device", "pid") if k in result}
        if result.get("best_epoch") == step:
            self.at_best[key] = {k: v for k, v in values.items() if k.startswith(("train_", "val_"))}
        self.writer.submit("log_batch", key, metrics=[(k, float(v), now, step) for k, v in values.items()], tags=tags)

    def _complete(self, trial) -> None:
        """End the run of a trial that ended without an error: completed, stopped early or diverged."""
        result = trial.last_result or {}
        if "epoch" not in result:
            # Stopped before its first report: no scheduler stops a trial it has no result of, so this is Tune
            # winding down an interrupted search (Ctrl-C). It stays open; on_experiment_end marks it interrupted.
            return
        if result.get("diverged"):
            self._end(trial, "failed", f"diverged: {result['diverged']}", "FAILED")
        elif result.get("finished"):
            self._end(trial, "completed", f"completed {result.get('epoch')} epochs", "FINISHED", self.log_models == "all")
        elif result.get(STOPPED_NO_IMPROVEMENT):  # scheduler.patience: the trial ended itself, best weights kept
            self._end(trial, STOPPED_NO_IMPROVEMENT, f"stopped at epoch {result.get('epoch')}: "
                      f"{result[STOPPED_NO_IMPROVEMENT]}", "FINISHED", self.log_models == "all")
        else:
            self._end(trial, "stopped_early", f"stopped early at epoch {result.get('epoch')}", "FINISHED",
                      self.log_models == "all")

    def _fail(self, trial) -> None:
        """End the run of a trial that raised (after its retries), with the error as ``error.txt``."""
        error = trial_error_text(trial) or "unknown error"
        reason = error.splitlines()[-1][:500]
        epoch = (trial.last_result or {}).get("epoch", 0)
        self.writer.submit("log_text", trial.trial_id, text=error, path="error.txt")
        self._end(trial, "failed", f"failed at epoch {epoch} after {trial.num_failures} attempt(s): {reason}", "FAILED")

    def _end(self, trial, outcome: str, note: str, status: str, log_model: bool = False) -> None:
        key = trial.trial_id
        if key not in self.known or key in self.ended:
            return
        result = trial.last_result or {}
        tags = {"hps.outcome": outcome, "hps.outcome_note": note}
        if "epoch" in result:
            tags["hps.last_epoch"] = result["epoch"]
        now = int(time.time() * 1000)
        summary = {f"best_epoch_{k}": float(v) for k, v in self.at_best.get(key, {}).items()}
        # The model's upload logs the best-epoch summary itself, linked to its LoggedModel (the Models tab's metrics).
        uploading = log_model and self._submit_model(key, trial, summary)
        self.writer.submit("log_batch", key, metrics=[] if uploading else [(k, v, now, 0) for k, v in summary.items()],
                           tags=tags)
        self.writer.submit("set_status", key, status=status)
        self.ended.add(key)
        if outcome != "interrupted":
            # An ended trial is never resumed: once its model is in MLflow its checkpoints only fill the disk;
            # otherwise only the newest (which holds the best epoch's weights) is kept for the end of the search.
            # Deleted once the experiment state that records the trial as ended is on disk (a resume from an
            # older state would still need them) and, for a model being uploaded, once the upload succeeded: the
            # upload reads the checkpoint itself, which is the only copy while the tracking server is down.
            self.to_prune[trial.path] = (key, not log_model and outcome != "failed", uploading)

    def _submit_model(self, key: str, trial, summary: dict[str, float]) -> bool:
        """Queue the upload of the trial's best model straight from its newest checkpoint (no copy: the
        checkpoint is kept until the upload succeeded), as the run's ``model/`` artifact and as a LoggedModel with
        the trial's hyperparameters and best-epoch ``summary``; the ``hps.model`` tag is set only after the upload."""
        try:
            folder = model_folder(trial.checkpoint)
            if folder is None:
                return False
            # (A logger unpickled from a search started before `root` existed reads absolute paths.)
            source = _relative_to_experiment(*folder, trial.path if self.root else None)
        except Exception as exc:  # noqa: BLE001 - a missing checkpoint must not stop the search
            log.warning("could not read the checkpoint of trial %s: %s", key, exc)
            return False
        # A resumed search may end a trial again whose model a killed driver had already made (its experiment state
        # predates that): the model is looked up first, never made twice.
        logged_model = trial_model_request(self.exp_id, self.search_name, key, trial.config, summary, self.datasets,
                                           look_first=self.restored)
        self.writer.submit("log_artifacts", key, local_dir=source, artifact_path="model", tags={"hps.model": "model"},
                           logged_model=logged_model)
        return True


def _relative_to_experiment(path: str, filesystem, trial_dir: str | None) -> str:
    """``path`` relative to the experiment folder (the trial folder's parent), so a pending upload still finds it
    when the storage folder is resumed from elsewhere; an absolute path or URI if it lies outside."""
    if trial_dir:
        experiment = posixpath.dirname(trial_dir.rstrip("/"))
        relative = posixpath.relpath(path, experiment)
        if not relative.startswith(".."):
            return relative
    return _as_location(path, filesystem)


def _as_location(path: str, filesystem) -> str:
    """A path on a pyarrow filesystem as the writer reads it: the path itself if local, a URI otherwise."""
    type_name = getattr(filesystem, "type_name", "local")
    return path if type_name == "local" else f"{type_name}://{path}"


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def finish_search_run(client: MlflowClient, run_id: str, status: str, tags: dict[str, str],
                      metrics: dict[str, float] | None = None) -> None:
    """Tag the parent run with the outcome (best trial, counts), log ``metrics`` (the same summary, to compare
    searches in the runs table) and end it with ``status``."""
    now = int(time.time() * 1000)
    client.log_batch(run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()],
                     metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if math.isfinite(v)])
    client.set_terminated(run_id, status)
