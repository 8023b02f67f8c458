"""The life of a search: run it or resume it, wait for its MLflow records, and finish it (rank the trials, keep
the best model, clean up checkpoints, draw the report, close the parent run). Everything that can be checked is
checked before Ray starts; Ray's wiring is in :mod:`search.run.ray_setup`, the storage folder in :mod:`search.records.storage`,
the MLflow records in :mod:`search.records.tracking`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
from mlflow.entities import RunTag
from ray import tune

from search.config.capacity import check_this_host
from search.config.dataset import split_from_config, with_absolute_source
from search.config.network import check_network, network_code
from search.config.schema import HpsConfig, check_metric_for_task, config_to_yaml, parse_config, with_absolute_builder
from search.errors import SearchFailed, SearchInterrupted, SearchNotFound, TrackingBacklog, TrackingError
from search.records.connection import connect
from search.records.inputs import log_datasets, split_datasets
from search.records.leaderboard import leaderboard, trial_runs
from search.records.logged_models import trial_model_request
from search.records.storage import (
    checkpoint_of,
    claim_storage,
    experiment_path,
    experiment_trials,
    is_trial_folder,
    pending_file,
    prune_checkpoints,
    read_manifest,
    state_exists,
    storage_dir,
    storage_flag,
    write_manifest,
)
from search.records.tracking import (
    TrialRunLogger,
    experiment_id,
    finish_search_run,
    log_model_artifacts,
    start_search_run,
)
from search.records.writer import TrackingWriter, describe_given_up, quick_failing_http, tracking_answers
from search.review.report import write_report
from search.run import warmstart
from search.run.progress import ProgressPrinter
from search.run.ray_setup import (
    build_tuner,
    init_ray,
    pack_servers,
    restore_tuner,
    shutdown_ray,
    tuner_callbacks,
)
from trainables.data import DataError, SplitDataset
from trainables.network import NetworkError
from trainables.reporting import STOPPED_NO_IMPROVEMENT

__all__ = ["SearchOutcome", "resume_search", "run_search"]

log = logging.getLogger(__name__)


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
    experiment_id: str = ""  # the MLflow experiment the runs are in (what the runs view's URL names)


def run_search(cfg: HpsConfig, address: str | None = None, storage: str | None = None, overwrite: bool = False,
               announce: Callable[[SplitDataset], None] | None = None,
               notify: Callable[[str], None] | None = None) -> SearchOutcome:
    """Run the search ``cfg`` describes and return its leaderboard. Raises before starting Ray on bad input.

    ``announce`` is called with the loaded split once every input check has passed, before anything is recorded;
    ``notify`` then with each line worth telling the user (the warm start's kept and dropped trials).
    """
    # --- everything that can fail on bad input happens before Ray starts or any run is created ---
    cfg = with_absolute_builder(with_absolute_source(cfg), ".")
    split = split_from_config(cfg)  # data options are passed on in search.config.dataset
    check_metric_for_task(cfg, split.task)
    network = check_network(cfg, split)
    if address is None:  # trials run on this host: its CPUs and memory must hold them (a cluster's are Ray's)
        check_this_host(cfg, split)
    client = connect(cfg.tracking.uri)
    warm = warmstart.load_warm_start(client, cfg) if cfg.search.warm_start else None
    storage_path = storage_dir(storage)
    claim_storage(storage_path, cfg.name, overwrite)
    if announce is not None:
        announce(split)
    if warm is not None and notify is not None:
        notify(warm.describe())
    exp_id = experiment_id(client, cfg.experiment_name)
    config = cfg.model_dump(mode="json", by_alias=True)
    parent = start_search_run(client, exp_id, cfg.name, config, config_to_yaml(cfg), split.summary())
    datasets = split_datasets(split, cfg.data.source)
    log_datasets(client, parent, datasets)
    warmstart.record(client, parent, warm)
    write_manifest(storage_path, cfg.name, {"config": config, "parent_run_id": parent, "experiment_id": exp_id,
                                            "tracking_uri": cfg.tracking.uri,
                                            "network_sha256": network.sha256 if network else None})
    search = _Search(cfg, client, exp_id, parent, storage_path, split.trial_folds())

    def make_tuner(servers: tuple[str, ...] | None) -> tune.Tuner:
        logger = TrialRunLogger(cfg.tracking.uri, exp_id, parent, cfg.name, cfg.tracking.log_models, search.root,
                                datasets)
        return build_tuner(cfg, search.data, storage_path, [logger, ProgressPrinter(cfg)], warm, servers)

    return _execute(search, make_tuner, address)


def _parent_run(client, parent: str, name: str, uri: str):
    """The search's parent run on the tracking server, or a one-line SearchNotFound (another server, say)."""
    from mlflow.exceptions import MlflowException

    try:
        run = client.get_run(parent)
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        raise SearchNotFound(f"search {name!r}: its parent run {parent} is not on the tracking server {uri} (is "
                             "--tracking-uri the server the search was started with?)") from None
    recorded = (run.data.tags.get("hps.search"), run.data.tags.get("hps.role"))
    if recorded != (name, "search"):
        raise SearchNotFound(f"search {name!r}: run {parent} on {uri} is not its parent run (it is tagged "
                             f"hps.search={recorded[0]!r}, hps.role={recorded[1]!r})")
    return run


def resume_search(name: str, storage: str | None = None, tracking_uri: str | None = None,
                  address: str | None = None) -> SearchOutcome:
    """Continue search ``name`` from its experiment state: finished trials are kept, unfinished ones resume from
    their checkpoints, and the same MLflow parent and child runs are continued."""
    storage_path = storage_dir(storage)
    manifest = read_manifest(storage_path, name)
    cfg = parse_config(manifest["config"])
    if cfg.name != name:  # a folder renamed or copied from another search: its Tune state names that search
        raise SearchNotFound(f"the folder of search {name!r} in {storage_path} holds the state of search "
                             f"{cfg.name!r} (renamed or copied?); resume that one by its own name")
    network = network_code(cfg)
    if network is not None and network.sha256 != manifest.get("network_sha256"):
        raise NetworkError(f"{cfg.model.builder.rpartition(':')[0]} changed since the search started; its trials "
                           "resume with the code they trained with (restore the file, or start a new search)")
    uri = tracking_uri or manifest["tracking_uri"]
    if tracking_uri:
        cfg = cfg.model_copy(update={"tracking": cfg.tracking.model_copy(update={"uri": uri})})
    client = connect(uri)
    pending = pending_file(storage_path, name)
    given_up: list[dict] = []
    if state_exists(pending):
        quick_failing_http()
        replay = TrackingWriter.replay(pending, uri, root=experiment_path(storage_path, name))
        if not replay.done:
            raise TrackingError(f"could not write the buffered MLflow operations in {pending}; is {uri} up?")
        given_up = replay.given_up  # reported at the end of the resumed search (exit 1), not refused forever
    parent = manifest["parent_run_id"]
    split = split_from_config(cfg)
    recorded = _parent_run(client, parent, name, uri).data.tags.get("hps.split_fingerprint")
    if split.fingerprint != recorded:
        raise DataError(f"the data changed since the search started (split fingerprint {split.fingerprint} != "
                        f"{recorded}); it cannot be resumed on different data")
    client.update_run(parent, status="RUNNING")
    search = _Search(cfg, client, manifest["experiment_id"], parent, storage_path, split.trial_folds(), given_up)

    def make_tuner(servers: tuple[str, ...] | None) -> tune.Tuner:
        return restore_tuner(cfg, search.data, experiment_path(storage_path, name), servers)

    return _execute(search, make_tuner, address)


@dataclass
class _Search:
    cfg: HpsConfig
    client: Any
    exp_id: str
    parent: str
    storage_path: str
    data: Any  # what trials train on: one TrialData per validation split (one, or one per cross-validation fold)
    given_up: list[dict] = field(default_factory=list)  # MLflow writes given up so far (replayed ones included)
    keep: set[str] = field(default_factory=set)  # trials whose checkpoints must outlive the search (model not in MLflow)
    closed: set[str] = field(default_factory=set)  # steps of _finish already done (it is tried again after an outage)

    @property
    def root(self) -> str:
        """The search's experiment folder (local path or URI): model uploads read the trials' checkpoints there,
        so a model waiting for the tracking server survives a restart of the machine."""
        return experiment_path(self.storage_path, self.cfg.name)




def _execute(search: _Search, make_tuner: Callable[[tuple[str, ...] | None], tune.Tuner],
             address: str | None) -> SearchOutcome:
    """Fit the tuner, wait for MLflow writes, finish the parent run; never leave it RUNNING."""
    cfg, client, parent = search.cfg, search.client, search.parent
    quick_failing_http()
    try:
        started_ray = init_ray(address)
        with pack_servers(cfg, search.data) as servers:  # killed once the trials have ended
            tuner = make_tuner(servers)
            logger = _trial_logger(tuner)
            results = tuner.fit()
        trials = experiment_trials(results)
        if logger is not None and not logger.started:
            logger = None  # never set up by Tune: it saw none of the experiment's events
        interrupted = _was_interrupted(trials, cfg, logger)
        if logger is not None:
            _settle_tracking(search, logger, trials)
        if interrupted:
            _end_interrupted(search)
        return _finish_outlasting_outages(search, results, trials, release_ray=started_ray)
    except (KeyboardInterrupt, SearchInterrupted, TrackingBacklog, SearchFailed):
        _end_parent_quietly(client, parent, "KILLED")
        raise
    except BaseException as exc:
        _end_parent_quietly(client, parent, "FAILED", f"error: {exc}"[:500])
        raise


def _trial_logger(tuner: tune.Tuner) -> TrialRunLogger | None:
    """The MLflow callback the tuner will call: the one :func:`run_search` built, or, for a restored tuner, the one
    unpickled with it (carrying the trial→run map of the search so far)."""
    return next((c for c in tuner_callbacks(tuner) if isinstance(c, TrialRunLogger)), None)


def _was_interrupted(trials: list, cfg: HpsConfig, logger: TrialRunLogger | None) -> bool:
    """Ctrl-C makes Tune return early with trials that never completed (or were never created)."""
    unfinished = logger.unfinished if logger is not None else [
        t for t in trials if t.status not in ("TERMINATED", "ERROR")]
    return bool(unfinished) or len(trials) < cfg.search.num_samples


def _settle_tracking(search: _Search, logger: TrialRunLogger, trials: list) -> None:
    """Write everything the trial logger queued, repair what a crash lost, or save the backlog for later."""
    cfg = search.cfg
    writer = logger.writer
    if writer.drain(cfg.tracking.outage_wait_s):
        if logger.reconcile(trials, check_histories=logger.restored):
            log.warning("replayed missing MLflow records of ended trials from the experiment state")
        if writer.drain(cfg.tracking.outage_wait_s):
            writer.close()
            search.given_up.extend(writer.given_up)
            search.keep |= logger.models_not_uploaded()
            return
    pending = pending_file(search.storage_path, cfg.name)
    writer.close(wait_s=20)  # the write in flight ends first: what is queued then is exactly what was not written
    # Writes given up so far (a replay's included) travel with the backlog and are reported after its replay.
    writer.given_up[:0] = search.given_up
    count = writer.save_pending(pending)
    lost = f"; {describe_given_up(writer.given_up)}" if writer.given_up else ""
    raise TrackingBacklog(
        f"the tracking server was unreachable at the end of the search; {count} MLflow writes are saved in "
        f"{pending}: run `hps resume {cfg.name}{storage_flag(search.storage_path)}` once it is back{lost}"
    )


def _end_interrupted(search: _Search) -> None:
    """Close the parent run of a search stopped before every trial ended, and raise how to continue it."""
    cfg = search.cfg
    finish_search_run(search.client, search.parent, "KILLED", {"hps.status": "interrupted",
                                                               "hps.writes_given_up": str(len(search.given_up))})
    lost = f" ({describe_given_up(search.given_up)})" if search.given_up else ""
    raise SearchInterrupted(f"search {cfg.name} was interrupted{lost}; continue it with "
                            f"`hps resume {cfg.name}{storage_flag(search.storage_path)}`")


def _finish_outlasting_outages(search: _Search, results: tune.ResultGrid, trials: list,
                               release_ray: bool = False) -> SearchOutcome:
    """:func:`_finish`, outlasting a tracking server that stops answering while the search closes: it waits for the
    server (``tracking.outage_wait_s`` at most, said once) and goes on with the steps not yet done; past that, it
    says that every trial is done and what `hps resume` will finish."""
    cfg = search.cfg
    deadline = time.monotonic() + cfg.tracking.outage_wait_s
    while True:
        try:
            return _finish(search, results, trials, release_ray)
        except Exception:
            if tracking_answers(search.client):
                raise  # not an outage: the error is the search's own
            if not _wait_for_tracking(search.client, deadline, cfg):
                raise TrackingBacklog(
                    f"the tracking server {cfg.tracking.uri} stopped answering while the search closed and did not come "
                    f"back within {cfg.tracking.outage_wait_s:.0f} s; every trial has ended and is saved: run "
                    f"`hps resume {cfg.name}{storage_flag(search.storage_path)}` once it is back to rank them, mark the "
                    "best and close the search's MLflow run") from None


def _wait_for_tracking(client, deadline: float, cfg: HpsConfig) -> bool:
    """Wait until the tracking server answers or ``deadline`` passes; whether it answers."""
    log.warning("tracking server unavailable while the search closes; waiting up to %.0f s for it",
                max(0.0, deadline - time.monotonic()))
    while time.monotonic() < deadline:
        time.sleep(1.0)
        if tracking_answers(client):
            log.warning("tracking server is back; closing the search")
            return True
    return False


def _finish(search: _Search, results: tune.ResultGrid, trials: list, release_ray: bool = False) -> SearchOutcome:
    """Rank the trials, keep the best model, clean up, draw the report and close the parent run. Tried again after
    an outage, it skips the steps already done (``search.closed``)."""
    cfg, client, parent = search.cfg, search.client, search.parent

    def once(step: str, action: Callable[[], None]) -> None:
        if step not in search.closed:
            action()
            search.closed.add(step)

    once("orphans", lambda: _remove_orphan_runs(client, parent, trials))
    parent_run = client.get_run(parent)
    board = leaderboard(client, parent_run)
    n_errors = sum(1 for r in results if r.error is not None)
    summary = _summarize(board, cfg, len(results), n_errors)
    summary["hps.writes_given_up"] = str(len(search.given_up))
    if board.empty or board.iloc[0]["outcome"] == "failed":
        _end_failed(search, board, summary)
    # The order matters: the best model is uploaded from its checkpoint before checkpoints are pruned; Ray is
    # shut down only once nothing reads through it (see ray_setup.shutdown_ray for what may not overlap it); the
    # parent run is closed last, so a search that dies before that is not recorded as finished.
    once("best", lambda: _mark_best(search, results, board.iloc[0]))
    once("prune", lambda: _prune_checkpoints(search, results))
    once("report", lambda: _write_report_and_release_ray(search, release_ray))
    finish_search_run(client, parent, "FINISHED", summary, _summary_metrics(summary, cfg, parent_run))
    return SearchOutcome(cfg.name, parent, cfg.tracking.uri, board, len(results), n_errors, list(search.given_up),
                         search.exp_id)


def _end_failed(search: _Search, board: pd.DataFrame, summary: dict[str, str]) -> None:
    """Close the parent run of a search in which every trial failed, and raise why."""
    finish_search_run(search.client, search.parent, "FAILED", summary)
    reasons = board["note"].dropna().unique()[:3] if "note" in board else []
    raise SearchFailed(f"all {len(board)} trials failed ({'; '.join(reasons) or 'no result'}); "
                       "see hps.outcome_note on the trial runs in MLflow")


def _mark_best(search: _Search, results: tune.ResultGrid, best: pd.Series) -> None:
    """Upload the best trial's model (``log_models: best``) and tag its run ``hps.best``."""
    if search.cfg.tracking.log_models == "best":
        run = search.client.get_run(best["run_id"])
        summary = {k: v for k, v in run.data.metrics.items() if k.startswith("best_epoch_")}
        # Looked up first: a resumed search may close again after a first try made it.
        logged_model = trial_model_request(search.exp_id, search.cfg.name, best["trial"], run.data.params, summary,
                                           look_first=True, run_tags={"hps.model": "model"})
        log_model_artifacts(search.client, best["run_id"], checkpoint_of(results, best["trial"]), logged_model)
    search.client.set_tag(best["run_id"], "hps.best", "true")


def _prune_checkpoints(search: _Search, results: tune.ResultGrid) -> None:
    """The search is over: nothing will resume from the trials' checkpoints (the best model is in MLflow)."""
    # Checkpoints of trials whose model upload was given up stay: they hold the only copy of that model.
    keep = search.keep | {g["key"] for g in search.given_up if g["kind"] == "log_artifacts"}
    for result in results:
        if not any(is_trial_folder(result.path, trial_id) for trial_id in keep):
            prune_checkpoints(result.path)


def _write_report_and_release_ray(search: _Search, release_ray: bool) -> None:
    """Draw the review plots; meanwhile stop the Ray this search started (``release_ray``)."""
    report = threading.Thread(target=_write_report, args=(search.client, search.parent, search.cfg),
                              name="hps-report", daemon=True)
    report.start()
    if release_ray:
        # Nothing needs Ray any more: stopping the Ray this call started (~2 s, mostly waiting for its processes
        # to exit) overlaps drawing the review plots instead of following them at exit.
        shutdown_ray()
    report.join()


def _write_report(client, parent: str, cfg: HpsConfig) -> None:
    # The review plots are a convenience: failing to draw one must not turn a finished search into a failed one.
    try:
        write_report(client, client.get_run(parent), cfg, draw=cfg.tracking.review_plots)
    except Exception as exc:  # noqa: BLE001
        log.warning("could not write the search report (hps report %s retries): %s", cfg.name, exc)


def _remove_orphan_runs(client, parent: str, trials: list) -> None:
    """Delete child runs of trials the experiment no longer has.

    A driver killed between two experiment-state snapshots leaves runs for trials the snapshot never recorded;
    the resumed search samples those configurations again as new trials (with the same seed Optuna suggests the
    same values) and trains them from scratch. The stale runs are tagged, ended and moved to MLflow's bin
    (restorable), so the search shows exactly one run per trial.
    """
    trial_ids = {t.trial_id for t in trials}
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


def _summary_metrics(summary: dict[str, str], cfg: HpsConfig, parent) -> dict[str, float]:
    """The search's outcome as metrics of its parent run, so that searches compare in the runs table: the best
    value, the trials by outcome, and the wall time from the parent run's start (a resumed search: first start)."""
    counts = {"trials_total": "hps.n_trials", "trials_completed": "hps.n_completed",
              "trials_stopped_early": "hps.n_stopped_early",
              "trials_stopped_no_improvement": "hps.n_stopped_no_improvement", "trials_failed": "hps.n_failed"}
    metrics = {name: float(summary[tag]) for name, tag in counts.items()}
    best = summary.get(f"hps.best_{cfg.search.metric}")
    if best is not None:
        metrics[f"best_{cfg.search.metric}"] = float(best)
    metrics["wall_time_s"] = max(0.0, time.time() - parent.info.start_time / 1000)
    return metrics


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
