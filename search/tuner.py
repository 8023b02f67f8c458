"""Wiring a validated config into a Ray Tune run: data once in the object store, Optuna searcher, ASHA/FIFO
scheduler, per-trial resources, checkpoints, and the MLflow callback. Everything that can be checked is
checked before Ray starts.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import ray
from mlflow.entities import RunStatus
from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from search.config import HpsConfig, check_metric_for_task, config_to_yaml
from search.dataset import split_from_config
from search.leaderboard import leaderboard
from search.progress import ProgressPrinter
from search.report import write_report
from search.searcher import PruningAwareOptunaSearch, make_sampler
from search.space import define_by_run
from search.tracking import (
    TrialRunLogger,
    connect,
    experiment_id,
    finish_search_run,
    log_model_artifacts,
    start_search_run,
)
from trainables.ray_adapter import tune_trainable
from trainables.train import TrainSettings
from search.errors import SearchExists

log = logging.getLogger(__name__)

DEFAULT_STORAGE = "hps-runs"



class SearchFailed(RuntimeError):
    """The search ran but produced no usable trial."""


@dataclass
class SearchOutcome:
    """What a finished search produced."""

    name: str
    parent_run_id: str
    leaderboard: pd.DataFrame
    n_trials: int
    n_errors: int


def storage_dir(storage: str | None) -> str:
    """Absolute storage folder for Ray's experiment state and checkpoints."""
    if storage and "://" in storage:
        return storage  # s3:// or other pyarrow filesystems are passed through to Ray
    return str(Path(storage or DEFAULT_STORAGE).expanduser().resolve())


def run_search(cfg: HpsConfig, address: str | None = None, storage: str | None = None, overwrite: bool = False) -> SearchOutcome:
    """Run the search ``cfg`` describes and return its leaderboard. Raises before starting Ray on bad input."""
    # --- everything that can fail on bad input happens before Ray starts or any run is created ---
    split = split_from_config(cfg)  # data options are passed on in search.dataset
    check_metric_for_task(cfg, split.task)
    client = connect(cfg.tracking.uri)
    storage_path = storage_dir(storage)
    _claim_storage(storage_path, cfg.name, overwrite)
    exp_id = experiment_id(client, cfg.experiment_name)
    config = cfg.model_dump(mode="json", by_alias=True)
    parent = start_search_run(client, exp_id, cfg.name, config, config_to_yaml(cfg), split.summary())

    status = RunStatus.to_string(RunStatus.FAILED)
    try:
        _init_ray(address)
        logger = TrialRunLogger(
            cfg.tracking.uri, exp_id, parent, cfg.name, cfg.scheduler.max_epochs, cfg.tracking.log_models
        )
        tuner = _build_tuner(cfg, split.trial_data(), storage_path, [logger, ProgressPrinter(cfg)])
        results = tuner.fit()
        board = leaderboard(client, client.get_run(parent))
        n_errors = sum(1 for r in results if r.error is not None)
        summary = _summarize(board, cfg, len(results), n_errors)
        if not board.empty and board.iloc[0]["outcome"] != "failed":
            best = board.iloc[0]
            if cfg.tracking.log_models == "best":
                log_model_artifacts(client, best["run_id"], _checkpoint_of(results, best["trial"]))
            client.set_tag(best["run_id"], "hps.best", "true")
            _write_report(client, parent, cfg)
            status = RunStatus.to_string(RunStatus.FINISHED)
        finish_search_run(client, parent, status, summary)
    except KeyboardInterrupt:
        finish_search_run(client, parent, RunStatus.to_string(RunStatus.KILLED), {"hps.status": "interrupted"})
        raise
    except BaseException as exc:
        finish_search_run(client, parent, status, {"hps.status": f"error: {exc}"[:500]})
        raise
    if status != RunStatus.to_string(RunStatus.FINISHED):
        raise SearchFailed(f"all {len(results)} trials failed; see the failed runs' hps.outcome_note in MLflow")
    return SearchOutcome(cfg.name, parent, board, len(results), n_errors)


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
            raise SearchExists(f"a search named {name!r} already exists in {folder}; pass --overwrite to start over")
        shutil.rmtree(folder)


def _init_ray(address: str | None) -> None:
    """Start (or join, with ``address``) Ray once per process; an already initialized Ray is reused."""
    # Tune warns on every forced experiment snapshot (one per kept-checkpoint rotation); on small trials that is
    # a warning per second which says nothing actionable to a user.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    # The legacy reporter honours verbose=0 fully; the new one still prints a config box and TensorBoard hints.
    # Progress comes from search.progress instead.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if ray.is_initialized():
        return
    # Workers print nothing to the terminal; results and errors come back through Tune and MLflow.
    ray.init(address=address, log_to_driver=False, include_dashboard=False, configure_logging=False)


def _build_tuner(cfg: HpsConfig, data, storage_path: str, callbacks: list) -> tune.Tuner:
    settings = TrainSettings(
        max_epochs=cfg.scheduler.max_epochs,
        metric=cfg.search.metric,
        seed=cfg.search.seed or 0,
        checkpoint_every=cfg.training.checkpoint_every,
        amp=cfg.training.amp,
        compile=cfg.training.compile,
        num_threads=max(1, int(cfg.resources.cpus_per_trial)),
    )
    trainable = tune.with_resources(
        tune.with_parameters(tune_trainable, data=data, settings=settings),
        {"cpu": cfg.resources.cpus_per_trial, "gpu": cfg.resources.gpus_per_trial},
    )
    searcher = ConcurrencyLimiter(
        # With a define-by-run space OptunaSearch ignores the metric/mode Tune passes on: give them here too.
        PruningAwareOptunaSearch(
            space=define_by_run(cfg.space),
            metric=cfg.search.metric,
            mode=cfg.search.mode,
            sampler=make_sampler(cfg.search.sampler, cfg.search.seed),
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
    else:
        scheduler = FIFOScheduler()
    return tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=cfg.search.metric,
            mode=cfg.search.mode,
            search_alg=searcher,
            scheduler=scheduler,
            num_samples=cfg.search.num_samples,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=cfg.name,
            storage_path=storage_path,
            callbacks=callbacks,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
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
