"""Wiring a validated config into a Ray Tune run: data once in the object store, Optuna searcher, ASHA/FIFO
scheduler, per-trial resources, checkpoints, and the MLflow callback. Everything that can be checked is
checked before Ray starts.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import ray
from mlflow.entities import RunTag
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from search.config import HpsConfig, check_metric_for_task, config_to_yaml, parse_config
from search.capacity import check_this_host
from search.dataset import split_from_config, with_absolute_source
from search.leaderboard import leaderboard, trial_runs
from search.progress import ProgressPrinter
from search.report import write_report
from search.connection import connect
from search.searcher import PruningAwareOptunaSearch, make_sampler
from search.space import define_by_run
from search import warmstart
from search.pareto import searcher_objectives
from search.tracking import (
    LOGGERS,
    TrialRunLogger,
    experiment_id,
    finish_search_run,
    log_model_artifacts,
    prune_checkpoints,
    reconcile,
    start_search_run,
)
from search.writer import TrackingWriter, describe_given_up, quick_failing_http, state_exists, write_state
from search.errors import SearchExists, SearchNotFound, StorageError, TrackingError
from trainables.data import DataError, SplitDataset
from trainables.ray_adapter import tune_trainable
from trainables.reporting import STOPPED_NO_IMPROVEMENT
from trainables.train import TrainSettings

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "hps-runs"


class SearchFailed(RuntimeError):
    """The search ran but produced no usable trial."""


class SearchInterrupted(RuntimeError):
    """The search was stopped (Ctrl-C) before every trial ended; it can be resumed."""


class TrackingBacklog(RuntimeError):
    """The search finished but MLflow writes are still pending (tracking server down)."""


@dataclass
class SearchOutcome:
    """What a finished search produced. ``writes_given_up`` lists the MLflow writes that could not be made
    (``{"kind", "key", "reason"}``); the CLI reports them and exits 1."""

    name: str
    parent_run_id: str
    tracking_uri: str
    leaderboard: pd.DataFrame
    n_trials: int
    n_errors: int
    writes_given_up: list[dict] = field(default_factory=list)


def storage_dir(storage: str | None) -> str:
    """Absolute storage folder for Ray's experiment state and checkpoints."""
    if storage and "://" in storage:
        return storage  # s3:// or other pyarrow filesystems are passed through to Ray
    return str(Path(storage or DEFAULT_STORAGE).expanduser().resolve())


def run_search(cfg: HpsConfig, address: str | None = None, storage: str | None = None, overwrite: bool = False,
               announce: Callable[[SplitDataset], None] | None = None,
               notify: Callable[[str], None] | None = None) -> SearchOutcome:
    """Run the search ``cfg`` describes and return its leaderboard. Raises before starting Ray on bad input.

    ``announce`` is called with the loaded split once every input check has passed, before anything is recorded;
    ``notify`` then with each line worth telling the user (the warm start's kept and dropped trials).
    """
    # --- everything that can fail on bad input happens before Ray starts or any run is created ---
    cfg = with_absolute_source(cfg)
    split = split_from_config(cfg)  # data options are passed on in search.dataset
    check_metric_for_task(cfg, split.task)
    if address is None:  # trials run on this host: its CPUs and memory must hold them (a cluster's are Ray's)
        check_this_host(cfg, split)
    client = connect(cfg.tracking.uri)
    warm = warmstart.load_warm_start(client, cfg) if cfg.search.warm_start else None
    storage_path = storage_dir(storage)
    _claim_storage(storage_path, cfg.name, overwrite)
    if announce is not None:
        announce(split)
    if warm is not None and notify is not None:
        notify(warm.describe())
    exp_id = experiment_id(client, cfg.experiment_name)
    config = cfg.model_dump(mode="json", by_alias=True)
    parent = start_search_run(client, exp_id, cfg.name, config, config_to_yaml(cfg), split.summary())
    warmstart.record(client, parent, warm)
    _write_manifest(storage_path, cfg.name, {"config": config, "parent_run_id": parent, "experiment_id": exp_id,
                                             "tracking_uri": cfg.tracking.uri})
    search = _Search(cfg, client, exp_id, parent, storage_path)

    def make_tuner() -> tune.Tuner:
        logger = TrialRunLogger(cfg.tracking.uri, exp_id, parent, cfg.name, cfg.tracking.log_models, search.root)
        return _build_tuner(cfg, split.trial_folds(), storage_path, [logger, ProgressPrinter(cfg)], warm)

    return _execute(search, make_tuner, address)


def resume_search(name: str, storage: str | None = None, tracking_uri: str | None = None,
                  address: str | None = None) -> SearchOutcome:
    """Continue search ``name`` from its experiment state: finished trials are kept, unfinished ones resume from
    their checkpoints, and the same MLflow parent and child runs are continued."""
    storage_path = storage_dir(storage)
    manifest = _read_manifest(storage_path, name)
    cfg = parse_config(manifest["config"])
    uri = tracking_uri or manifest["tracking_uri"]
    if tracking_uri:
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": uri})})
    client = connect(uri)
    pending = _pending_file(storage_path, name)
    given_up: list[dict] = []
    if state_exists(pending):
        quick_failing_http()
        replay = TrackingWriter.replay(pending, uri, root=_experiment_path(storage_path, name))
        if not replay.done:
            raise TrackingError(f"could not write the buffered MLflow operations in {pending}; is {uri} up?")
        given_up = replay.given_up  # reported at the end of the resumed search (exit 1), not refused forever
    parent = manifest["parent_run_id"]
    split = split_from_config(cfg)
    recorded = client.get_run(parent).data.tags.get("hps.split_fingerprint")
    if split.fingerprint != recorded:
        raise DataError(f"the data changed since the search started (split fingerprint {split.fingerprint} != "
                        f"{recorded}); it cannot be resumed on different data")
    client.update_run(parent, status="RUNNING")
    search = _Search(cfg, client, manifest["experiment_id"], parent, storage_path, given_up)

    def make_tuner() -> tune.Tuner:
        trainable = _trainable(cfg, split.trial_folds())
        # Errored trials stay errored (retries already happened); unfinished ones continue from checkpoints.
        return tune.Tuner.restore(_experiment_path(storage_path, name), trainable=trainable,
                                  resume_unfinished=True, resume_errored=False)

    return _execute(search, make_tuner, address)


@dataclass
class _Search:
    cfg: HpsConfig
    client: Any
    exp_id: str
    parent: str
    storage_path: str
    given_up: list[dict] = field(default_factory=list)  # MLflow writes given up so far (replayed ones included)
    keep: set[str] = field(default_factory=set)  # trials whose checkpoints must outlive the search (model not in MLflow)

    @property
    def root(self) -> str:
        """The search's experiment folder (local path or URI): model uploads read the trials' checkpoints there,
        so a model waiting for the tracking server survives a restart of the machine."""
        return _experiment_path(self.storage_path, self.cfg.name)


def _execute(search: _Search, make_tuner, address: str | None) -> SearchOutcome:
    """Fit the tuner, wait for MLflow writes, finish the parent run; never leave it RUNNING."""
    cfg, client, parent = search.cfg, search.client, search.parent
    quick_failing_http()
    try:
        started_ray = _init_ray(address)
        results = make_tuner().fit()
        logger = LOGGERS.pop(parent, None)
        interrupted = _was_interrupted(results, cfg, logger)
        if logger is not None:
            _settle_tracking(search, logger, results)
        if interrupted:
            finish_search_run(client, parent, "KILLED", {"hps.status": "interrupted",
                                                         "hps.writes_given_up": str(len(search.given_up))})
            lost = f" ({describe_given_up(search.given_up)})" if search.given_up else ""
            raise SearchInterrupted(f"search {cfg.name} was interrupted{lost}; continue it with "
                                    f"`hps resume {cfg.name}{_storage_flag(search.storage_path)}`")
        return _finish(search, results, release_ray=started_ray)
    except (KeyboardInterrupt, SearchInterrupted, TrackingBacklog, SearchFailed):
        _end_parent_quietly(client, parent, "KILLED")
        raise
    except BaseException as exc:
        _end_parent_quietly(client, parent, "FAILED", f"error: {exc}"[:500])
        raise


def _settle_tracking(search: _Search, logger: TrialRunLogger, results: tune.ResultGrid) -> None:
    """Write everything the trial logger queued, repair what a crash lost, or save the backlog for later."""
    cfg = search.cfg
    writer = logger.writer
    if writer.drain(cfg.tracking.outage_wait_s):
        if reconcile(logger, results._experiment_analysis.trials, check_histories=logger.restored):  # noqa: SLF001
            log.warning("replayed missing MLflow records of ended trials from the experiment state")
        if writer.drain(cfg.tracking.outage_wait_s):
            writer.close()
            search.given_up.extend(writer.given_up)
            search.keep |= logger.models_not_uploaded()
            return
    pending = _pending_file(search.storage_path, cfg.name)
    writer.close(wait_s=20)  # the write in flight ends first: what is queued then is exactly what was not written
    # Writes given up so far (a replay's included) travel with the backlog and are reported after its replay.
    writer.given_up[:0] = search.given_up
    count = writer.save_pending(pending)
    lost = f"; {describe_given_up(writer.given_up)}" if writer.given_up else ""
    raise TrackingBacklog(
        f"the tracking server was unreachable at the end of the search; {count} MLflow writes are saved in "
        f"{pending}: run `hps resume {cfg.name}{_storage_flag(search.storage_path)}` once it is back{lost}"
    )


def _finish(search: _Search, results: tune.ResultGrid, release_ray: bool = False) -> SearchOutcome:
    cfg, client, parent = search.cfg, search.client, search.parent
    _remove_orphan_runs(client, parent, results)
    board = leaderboard(client, client.get_run(parent))
    n_errors = sum(1 for r in results if r.error is not None)
    summary = _summarize(board, cfg, len(results), n_errors)
    summary["hps.writes_given_up"] = str(len(search.given_up))
    if board.empty or board.iloc[0]["outcome"] == "failed":
        finish_search_run(client, parent, "FAILED", summary)
        reasons = board["note"].dropna().unique()[:3] if "note" in board else []
        raise SearchFailed(f"all {len(board)} trials failed ({'; '.join(reasons) or 'no result'}); "
                           "see hps.outcome_note on the trial runs in MLflow")
    best = board.iloc[0]
    if cfg.tracking.log_models == "best":
        log_model_artifacts(client, best["run_id"], _checkpoint_of(results, best["trial"]))
    client.set_tag(best["run_id"], "hps.best", "true")
    # Checkpoints of trials whose model upload was given up stay: they hold the only copy of that model.
    keep = search.keep | {g["key"] for g in search.given_up if g["kind"] == "log_artifacts"}
    for result in results:  # the search is over: nothing will resume from these (the best model is in MLflow)
        if not any(trial_id in os.path.basename(result.path or "") for trial_id in keep):
            prune_checkpoints(result.path)
    report = threading.Thread(target=_write_report, args=(client, parent, cfg), name="hps-report", daemon=True)
    report.start()
    if release_ray:
        # Nothing needs Ray any more: stopping the Ray this call started (~2 s, mostly waiting for its processes
        # to exit) overlaps drawing the review plots instead of following them at exit.
        ray.shutdown()
    report.join()
    finish_search_run(client, parent, "FINISHED", summary)
    return SearchOutcome(cfg.name, parent, cfg.tracking.uri, board, len(results), n_errors, list(search.given_up))


def _remove_orphan_runs(client, parent: str, results: tune.ResultGrid) -> None:
    """Delete child runs of trials the experiment no longer has.

    A driver killed between two experiment-state snapshots leaves runs for trials the snapshot never recorded;
    the resumed search samples those configurations again as new trials (with the same seed Optuna suggests the
    same values) and trains them from scratch. The stale runs are tagged, ended and moved to MLflow's bin
    (restorable), so the search shows exactly one run per trial.
    """
    trial_ids = {t.trial_id for t in results._experiment_analysis.trials}  # noqa: SLF001
    for run in trial_runs(client, client.get_run(parent)):
        trial_id = run.data.tags.get("hps.trial_id")
        if trial_id in trial_ids:
            continue
        log.warning("trial %s is not part of the resumed experiment (started after its last snapshot); "
                    "its configuration was trained again as a new trial; deleting its run %s", trial_id, run.info.run_id)
        client.log_batch(run.info.run_id, tags=[RunTag("hps.outcome", "superseded"), RunTag(
            "hps.outcome_note", "started after the last experiment snapshot before a driver crash; trained again")])
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")
        client.delete_run(run.info.run_id)


def _end_parent_quietly(client, parent: str, status: str, note: str | None = None) -> None:
    """End the parent run if it is still RUNNING; a tracking failure here must not hide the original error."""
    try:
        if client.get_run(parent).info.status == "RUNNING":
            finish_search_run(client, parent, status, {"hps.status": note or status.lower()})
    except Exception as exc:  # noqa: BLE001
        log.warning("could not end the search's MLflow run %s: %s", parent, exc)


def _was_interrupted(results: tune.ResultGrid, cfg: HpsConfig, logger: TrialRunLogger | None) -> bool:
    """Ctrl-C makes Tune return early with trials that never completed (or were never created)."""
    trials = results._experiment_analysis.trials  # noqa: SLF001 - the only place Tune exposes its trials
    unfinished = logger.unfinished if logger is not None else [
        t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    return bool(unfinished) or len(trials) < cfg.search.num_samples


def _storage_flag(storage_path: str) -> str:
    return "" if storage_path == storage_dir(None) else f" --storage {storage_path}"


def _experiment_path(storage_path: str, name: str) -> str:
    return f"{storage_path.rstrip('/')}/{name}"


MANIFEST = "hps-search.json"


def _write_manifest(storage_path: str, name: str, manifest: dict) -> None:
    """What `hps resume` needs besides Ray's own state: the resolved config and the MLflow run ids. Written
    whole or not at all (temporary file, then rename)."""
    write_state(f"{_experiment_path(storage_path, name)}/{MANIFEST}", json.dumps(manifest, indent=1))


def _read_manifest(storage_path: str, name: str) -> dict:
    import pyarrow.fs

    path = _experiment_path(storage_path, name)
    filesystem, root = pyarrow.fs.FileSystem.from_uri(path)
    if filesystem.get_file_info(f"{root}/{MANIFEST}").type == pyarrow.fs.FileType.NotFound:
        raise SearchNotFound(f"no search named {name!r} in {storage_path} (looked for {path}/{MANIFEST})")
    if not tune.Tuner.can_restore(path):
        raise SearchNotFound(f"search {name!r} in {storage_path} has no experiment state to resume from")
    with filesystem.open_input_stream(f"{root}/{MANIFEST}") as stream:
        return json.loads(stream.readall())


def _pending_file(storage_path: str, name: str) -> str:
    """Where MLflow writes still pending at the end of a search wait for `hps resume`: beside the experiment state,
    in the search's storage folder (with ``s3://`` storage, in the bucket), never in the working folder."""
    return f"{_experiment_path(storage_path, name)}/mlflow-pending.json"


def _write_report(client, parent: str, cfg: HpsConfig) -> None:
    # The review plots are a convenience: failing to draw one must not turn a finished search into a failed one.
    try:
        write_report(client, client.get_run(parent), cfg)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not write the search report (hps report %s retries): %s", cfg.name, exc)


def _claim_storage(storage_path: str, name: str, overwrite: bool) -> None:
    if "://" in storage_path:
        _claim_remote_storage(storage_path, name, overwrite)
        return
    folder = Path(storage_path) / name
    if folder.exists():
        if not overwrite:
            raise SearchExists(f"a search named {name!r} already exists in {folder}; continue it with "
                               f"`hps resume {name} --storage {storage_path}` or start over with --overwrite")
        shutil.rmtree(folder)
    try:  # now, so that a storage path that is a file or read-only fails before any run is created
        folder.mkdir(parents=True)
    except OSError as exc:
        raise StorageError(f"storage {storage_path} cannot be used: {exc.strerror or exc}") from None


def _claim_remote_storage(uri: str, name: str, overwrite: bool) -> None:
    """The same check for ``s3://`` (or another pyarrow filesystem Ray accepts): a second search of the same name
    would otherwise write into the first one's experiment state. S3 settings come from the environment
    (``AWS_ENDPOINT_URL`` for MinIO, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``), as they do for Ray."""
    import pyarrow.fs

    try:
        filesystem, root = pyarrow.fs.FileSystem.from_uri(uri.rstrip("/"))
        path = f"{root.rstrip('/')}/{name}"
        missing = filesystem.get_file_info(path).type == pyarrow.fs.FileType.NotFound
    except (OSError, ValueError) as exc:  # unreachable endpoint, bad credentials, unknown scheme
        raise StorageError(f"storage {uri} cannot be used: {str(exc).splitlines()[0]}") from None
    if missing:
        return
    if not overwrite:
        raise SearchExists(f"a search named {name!r} already exists in {uri.rstrip('/')}/{name}; "
                           "pass --overwrite to start over")
    filesystem.delete_dir(path)


def _init_ray(address: str | None) -> bool:
    """Start (or join, with ``address``) Ray once per process; an already initialized Ray is reused.
    Returns whether this call initialized it (and so may shut it down)."""
    # Tune warns on every forced experiment snapshot (one per kept-checkpoint rotation); on small trials that is
    # a warning per second which says nothing actionable to a user.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The legacy reporter honours verbose=0 fully; the new one still prints a config box and TensorBoard hints.
    # Progress comes from search.progress instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # Tune's default loggers add a CSV and a TensorBoard file per trial (and warn on every NaN); only the JSON one
    # is kept (see _build_tuner): MLflow is this service's record.
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    # Tune's own "resume with Tuner.restore(...)" hint after Ctrl-C; hps prints its `hps resume` command instead.
    logging.getLogger("ray.tune.tune").setLevel(logging.ERROR)
    if ray.is_initialized():
        return False
    # Workers print nothing to the terminal; results and errors come back through Tune and MLflow.
    ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)
    return True


def _trainable(cfg: HpsConfig, data):
    """The shared trainable with the data in Ray's object store (once) and this search's settings and resources."""
    settings = TrainSettings(
        max_epochs=cfg.scheduler.max_epochs,
        metric=cfg.search.metric,
        seed=cfg.training_seed,
        checkpoint_every=cfg.training.checkpoint_every,
        amp=cfg.training.amp,
        compile=cfg.training.compile,
        report_interval_s=cfg.training.report_interval_s,
        num_threads=max(1, int(cfg.resources.cpus_per_trial)),
        gpu_share=cfg.resources.gpus_per_trial if 0 < cfg.resources.gpus_per_trial < 1 else 1.0,
        decision_epochs=asha_rungs(cfg) if cfg.scheduler.type == "asha" else frozenset(),
        patience=cfg.scheduler.patience,
    )
    return tune.with_resources(
        tune.with_parameters(tune_trainable, data=data, settings=settings),
        {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial},
    )


def asha_rungs(cfg: HpsConfig) -> frozenset[int]:
    """The epochs at which ASHA decides to stop or continue a trial: grace_period x reduction_factor^k < max_epochs."""
    rungs, milestone = set(), float(cfg.scheduler.grace_period)
    while milestone < cfg.scheduler.max_epochs:
        rungs.add(math.ceil(milestone))
        milestone *= cfg.scheduler.reduction_factor
    return frozenset(rungs)


class SchedulerState(tune.Callback):
    """Saves the scheduler's bookkeeping (ASHA's rungs) with the experiment state and restores it on resume.

    Tune restores a scheduler from the pickle taken when the search *started*, so ASHA forgets every rung
    decision made before a crash (ray-project/ray#30838). Callbacks' state, however, is saved with each
    experiment snapshot; this one carries the scheduler's. It and the scheduler are unpickled together from
    the same tuner pickle, so after a restore ``self.scheduler`` is the scheduler Tune uses.
    """

    def __init__(self, scheduler) -> None:
        self.scheduler = scheduler

    def get_state(self) -> dict:
        return dict(self.scheduler.__dict__)

    def set_state(self, state: dict) -> None:
        self.scheduler.__dict__.update(state)


def _build_tuner(cfg: HpsConfig, data, storage_path: str, callbacks: list,
                 warm: warmstart.WarmStart | None = None) -> tune.Tuner:
    trainable = _trainable(cfg, data)
    metric, mode = searcher_objectives(cfg)  # lists for a two-objective search
    searcher = ConcurrencyLimiter(
        # With a define-by-run space OptunaSearch ignores the metric/mode Tune passes on: give them here too.
        PruningAwareOptunaSearch(
            space=define_by_run(cfg.space),
            metric=metric,
            mode=mode,
            points_to_evaluate=warm.points if warm and warm.points else None,  # asked first, best first
            prior_trials=warm.trials if warm else None,
            sampler=make_sampler(cfg.search.sampler, cfg.search.seed),
            in_order=cfg.search.max_concurrent if cfg.search.tell_in_order else None,
            num_samples=cfg.search.num_samples,
        ),
        max_concurrent=cfg.search.max_concurrent,
    )
    if cfg.scheduler.type == "asha":
        scheduler = ASHAScheduler(
            time_attr="epoch",
            max_t=cfg.scheduler.max_epochs,
            grace_period=cfg.scheduler.grace_period,
            reduction_factor=cfg.scheduler.reduction_factor,
        )
        callbacks = [*callbacks, SchedulerState(scheduler)]
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            # What ASHA compares at its rungs (the searcher has its own metric, above): each trial's best value so
            # far, the quantity the leaderboard finally ranks by. The epoch's own value would stop a trial for
            # one noisy epoch that its best epoch outranks.
            metric=f"best_{cfg.search.metric}",
            mode=cfg.search.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=cfg.search.num_samples,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=storage_path,
            # result.json per trial: the on-disk record `reconcile` repairs MLflow from after a crash.
            callbacks=[*callbacks, JsonLoggerCallback()],
            # No num_to_keep: with it Tune forces an experiment snapshot at every rotation (~10% of the wall time
            # of small trials here). The tracking callback prunes ended trials' checkpoints instead.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            failure_config=tune.FailureConfig(max_failures=cfg.search.max_failures),
            verbose=0,
        ),
    )


def _checkpoint_of(results: tune.ResultGrid, trial_id: str):
    for result in results:
        if result.path and os.path.basename(result.path).find(trial_id) >= 0:
            return result.checkpoint
    return None


def _summarize(board: pd.DataFrame, cfg: HpsConfig, n_trials: int, n_errors: int) -> dict[str, str]:
    counts = board["outcome"].value_counts().to_dict() if not board.empty else {}
    tags = {
        "hps.status": "finished" if n_errors < n_trials else "all trials failed",
        "hps.n_trials": str(n_trials),
        "hps.n_completed": str(counts.get("completed", 0)),
        "hps.n_stopped_early": str(counts.get("stopped_early", 0)),
        "hps.n_stopped_no_improvement": str(counts.get(STOPPED_NO_IMPROVEMENT, 0)),
        "hps.n_failed": str(counts.get("failed", 0)),
    }
    if not board.empty and board.iloc[0]["outcome"] != "failed":
        best = board.iloc[0]
        tags.update(
            {
                "hps.best_trial_id": best["trial"],
                "hps.best_run_id": best["run_id"],
                f"hps.best_{cfg.search.metric}": f"{best[f'best_{cfg.search.metric}']:.6g}",
                "hps.best_epoch": str(best["best_epoch"]),
            }
        )
    return tags
